//! boot-bench's snapshot figures (ours): a PVH guest that wrote 3 MiB is snapshotted at
//! several RAM sizes, then restored again and again. What a snapshot costs (pause, bytes on
//! disk) and how long a restore takes to reach a running guest must follow the data, not the
//! RAM size. Firecracker's figure, restore to running at 128 MiB in 12–14 ms, comes from
//! `../shared/PEERS.md`; this harness does not build Firecracker.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use crate::{process::BoundedChild, stats::Summary};

/// Guest sizes, MiB.
pub const SIZES_MIB: [u64; 3] = [128, 1024, 2048];
/// Firecracker v1.16's restore to running at 128 MiB, as measured on these machines (PEERS.md).
pub const FIRECRACKER_128_MIB_MS: (f64, f64) = (12.0, 14.0);
/// The PVH guest writes this many MiB.
const WSS_MIB: u64 = 3;
const RUNNING: &str = "the VM is running";

#[derive(Clone, Debug, Serialize)]
pub struct RestoreRun {
    pub mem_mib: u64,
    /// How long `snapshot` kept the guest paused, and the memory image's bytes on disk.
    pub snapshot_paused_ms: f64,
    pub image_disk_bytes: u64,
    /// The restored `vmm`'s own time from its start to running guest vCPUs.
    pub restore_ms: Option<Summary>,
    /// From spawning `vmm run --restore` to reading its "running" log line.
    pub restore_wall_ms: Option<Summary>,
}

/// Snapshots and restores the PVH guest at every size, `runs` restores each.
pub fn run_all(
    vmm: &Path,
    pvh: &Path,
    scratch: &Path,
    runs: u32,
    timeout: Duration,
) -> Result<Vec<RestoreRun>> {
    SIZES_MIB
        .iter()
        .map(|&mem| {
            eprintln!("boot-bench: snapshot and restore, {mem} MiB");
            run_one(
                vmm,
                pvh,
                &scratch.join(format!("restore-{mem}")),
                mem,
                runs,
                timeout,
            )
        })
        .collect()
}

fn run_one(
    vmm: &Path,
    pvh: &Path,
    dir: &Path,
    mem: u64,
    runs: u32,
    timeout: Duration,
) -> Result<RestoreRun> {
    std::fs::create_dir_all(dir)?;
    let sock = dir.join("vm.sock");
    let snap = dir.join("snap");
    let mut guest = Command::new(vmm);
    guest
        .env("VMM_LOG", "warn")
        .args(["run", "--boot", "pvh", "--kernel"])
        .arg(pvh)
        .args([
            "--mem",
            &mem.to_string(),
            "--cmdline",
            &format!("wss={WSS_MIB}"),
        ])
        .arg("--api-sock")
        .arg(&sock);
    let mut guest = BoundedChild::spawn("our PVH guest", &mut guest)?;
    guest.wait_for("pvh-dirty: up", timeout)?;
    // Let it write its working set (it runs emulated, slowly).
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new(vmm)
        .arg("ctl")
        .arg(&sock)
        .args(["snapshot"])
        .arg(&snap)
        .arg("--stop")
        .output()
        .context("cannot run vmm ctl snapshot")?;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "vmm ctl snapshot answered {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    ensure!(answer["ok"] == true, "snapshot failed: {answer}");
    let _ = guest.kill();
    let image = std::fs::metadata(snap.join("memory.bin"))?;

    let (mut inside, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (ms, wall_ms) = restore_once(vmm, &snap, timeout)?;
        inside.push(ms);
        wall.push(wall_ms);
    }
    std::fs::remove_dir_all(dir)?;
    Ok(RestoreRun {
        mem_mib: mem,
        snapshot_paused_ms: answer["paused_ms"].as_f64().unwrap_or(f64::NAN),
        image_disk_bytes: image.blocks() * 512,
        restore_ms: Summary::of(&inside),
        restore_wall_ms: Summary::of(&wall),
    })
}

/// One `vmm run --restore`: its own time to running and the wall time to the log line.
fn restore_once(vmm: &Path, snap: &Path, timeout: Duration) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut child = Command::new(vmm)
        .env("VMM_LOG", "info")
        .args(["run", "--restore"])
        .arg(snap)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start vmm run --restore")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(RUNNING) {
                let _ = tx.send((line, started.elapsed()));
                return;
            }
        }
    });
    let received = rx.recv_timeout(timeout);
    let _ = child.kill();
    let _ = child.wait();
    let Ok((line, wall)) = received else {
        bail!("the restored VM did not reach running within {timeout:?}");
    };
    let ms = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no ms= in {line:?}"))?;
    Ok((ms, wall.as_secs_f64() * 1e3))
}

fn median(s: &Option<Summary>) -> f64 {
    s.as_ref().map_or(f64::NAN, |s| s.median)
}

/// The table and the verdicts: restore at or below Firecracker's at every size.
pub fn print(runs: &[RestoreRun]) {
    println!();
    println!("Snapshot and restore, PVH guest that wrote {WSS_MIB} MiB (ours; medians)");
    println!(
        "{:>9} {:>16} {:>14} {:>18} {:>22}",
        "RAM", "snapshot pause", "image on disk", "restore -> running", "spawn -> running (wall)"
    );
    for r in runs {
        println!(
            "{:>5} MiB {:>13.1} ms {:>10} KiB {:>15.1} ms {:>19.1} ms",
            r.mem_mib,
            r.snapshot_paused_ms,
            r.image_disk_bytes >> 10,
            median(&r.restore_ms),
            median(&r.restore_wall_ms),
        );
    }
    let (lo, hi) = FIRECRACKER_128_MIB_MS;
    println!(
        "Firecracker v1.16 restores 128 MiB to running in {lo}-{hi} ms (PEERS.md; not run here)"
    );
    for r in runs {
        let ms = median(&r.restore_ms);
        println!(
            "target: restore {} MiB to running <= Firecracker's {hi} ms: {ms:.1} ms -> {}",
            r.mem_mib,
            if ms <= hi { "MET" } else { "MISSED" }
        );
    }
}
