//! migrate-bench's idle scenarios (ours only): idle bench guests of several sizes whose memory
//! was never touched. Downtime must not grow with RAM, and neither may the destination's
//! resident memory; the figures say whether it does.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::{
    bench_migration::{free_port, parse_ctl_output, DowntimeParts},
    netns,
    process::BoundedChild,
};

/// Guest sizes, MiB.
pub const SIZES_MIB: [u64; 3] = [256, 1024, 4096];
/// The target: downtime at most this in every idle scenario, at every size.
pub const TARGET_DOWNTIME_MS: f64 = 20.0;

/// What an idle run needs from the harness.
pub struct IdleSetup<'a> {
    pub vmm: &'a Path,
    pub bench_image: &'a Path,
    pub scratch: &'a Path,
    pub timeout: Duration,
    /// Extra `vmm run --incoming` and `vmm ctl ... migrate` arguments (authentication).
    pub dest_args: &'a [String],
    pub source_args: &'a [String],
}

/// One idle migration.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IdleRun {
    pub mem_mib: u64,
    pub status: String,
    pub total_ms: f64,
    pub downtime_ms: f64,
    pub downtime_parts: DowntimeParts,
    pub transferred_bytes: u64,
    /// Resident memory of the source before and the destination after, bytes.
    pub source_rss: u64,
    pub dest_rss: u64,
    pub stop_reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs every size once; a run the harness cannot finish is recorded, not fatal.
pub fn run_all(setup: &IdleSetup) -> Vec<IdleRun> {
    SIZES_MIB
        .iter()
        .map(|&mem_mib| {
            eprintln!("migrate-bench: idle {mem_mib} MiB untouched, ours");
            run_one(setup, mem_mib).unwrap_or_else(|e| IdleRun {
                mem_mib,
                status: "error".into(),
                error: Some(format!("{e:#}")),
                ..IdleRun::default()
            })
        })
        .collect()
}

fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib << 10)
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        ensure!(Instant::now() < deadline, "timed out after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn run_one(setup: &IdleSetup, mem_mib: u64) -> Result<IdleRun> {
    let port = free_port().context("no free TCP port")?;
    let url = format!("tcp://127.0.0.1:{port}");
    let sock =
        |side: &str| -> PathBuf { setup.scratch.join(format!("idle-{mem_mib}-{side}.sock")) };
    let (source_sock, dest_sock) = (sock("source"), sock("dest"));
    let command = || {
        let mut c = Command::new(setup.vmm);
        c.env("VMM_LOG", "warn");
        c
    };
    let mut dest = command();
    dest.args(["run", "--incoming", &url])
        .args(setup.dest_args)
        .arg("--api-sock")
        .arg(&dest_sock);
    let mut source = command();
    source
        .args(["run", "--boot", "bench", "--kernel"])
        .arg(setup.bench_image)
        .args(["--cmdline", "workload=idle report-ms=250"])
        .args(["--mem", &mem_mib.to_string(), "--vcpus", "2"])
        .arg("--api-sock")
        .arg(&source_sock);
    let dest = BoundedChild::spawn("our destination", &mut dest)?;
    let mut source = BoundedChild::spawn("our source", &mut source)?;
    let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    wait_until(setup.timeout, || {
        Ok(netns::is_listening(dest.pid(), address)?)
    })
    .context("our destination never listened")?;
    source.wait_for("gen=", setup.timeout)?;
    wait_until(setup.timeout, || Ok(source_sock.exists()))?;
    let source_rss = rss(source.pid())?;

    let mut ctl = command();
    ctl.arg("ctl")
        .arg(&source_sock)
        .args(["migrate", &url])
        .args(setup.source_args);
    let mut ctl = BoundedChild::spawn("vmm ctl migrate", &mut ctl)?;
    ctl.wait_for("\"ok\":", setup.timeout)?;
    // The statistics line may still be arriving: it is complete once `vmm ctl` exits.
    wait_until(setup.timeout, || Ok(!ctl.is_running()?))?;
    let (_, stats) = parse_ctl_output(&ctl.console())?;
    let mut run = IdleRun {
        mem_mib,
        status: stats.status.clone(),
        total_ms: stats.total_time_ms,
        downtime_ms: stats.downtime_ms,
        downtime_parts: stats.downtime_parts.clone(),
        transferred_bytes: stats.ram.transferred,
        source_rss,
        stop_reason: stats.stop_reason.clone().unwrap_or_else(|| "-".into()),
        error: stats.error.clone(),
        ..IdleRun::default()
    };
    if stats.status == "completed" {
        // Once the guest reports on the destination, it has run there.
        let before = dest.console().matches("gen=").count();
        wait_until(setup.timeout, || {
            Ok(dest.console().matches("gen=").count() > before)
        })
        .context("the guest never reported on the destination")?;
        run.dest_rss = rss(dest.pid())?;
    }
    let _ = source.kill();
    let _ = dest.kill();
    Ok(run)
}

/// The table and the verdict lines.
pub fn print(runs: &[IdleRun]) {
    println!();
    println!("Idle bench guests, untouched memory, 2 vCPUs (ours only)");
    println!(
        "{:>8} {:>10} {:>9} {:>24} {:>9} {:>9} {:>9} {:>12}",
        "RAM",
        "status",
        "down ms",
        "final/state/resume ms",
        "total ms",
        "src RSS",
        "dst RSS",
        "stop"
    );
    for r in runs {
        let parts = &r.downtime_parts;
        println!(
            "{:>5} MiB {:>10} {:>9.1} {:>24} {:>9.1} {:>5} MiB {:>5} MiB {:>12}",
            r.mem_mib,
            r.status,
            r.downtime_ms,
            format!(
                "{:.1}/{:.1}/{:.1}",
                parts.final_pages_ms, parts.state_ms, parts.resume_ms
            ),
            r.total_ms,
            r.source_rss >> 20,
            r.dest_rss >> 20,
            r.stop_reason
        );
        if let Some(e) = &r.error {
            println!("          error: {e}");
        }
    }
    for r in runs {
        let met = r.status == "completed" && r.downtime_ms <= TARGET_DOWNTIME_MS;
        println!(
            "target: idle {} MiB downtime <= {TARGET_DOWNTIME_MS} ms: {:.1} ms -> {}",
            r.mem_mib,
            r.downtime_ms,
            if met { "MET" } else { "MISSED" }
        );
        let bound = r.source_rss + r.source_rss / 10 + (8 << 20);
        let met = r.status == "completed" && r.dest_rss <= bound;
        println!(
            "target: idle {} MiB destination RSS <= source + 10% + 8 MiB: {} vs {} MiB -> {}",
            r.mem_mib,
            r.dest_rss >> 20,
            r.source_rss >> 20,
            if met { "MET" } else { "MISSED" }
        );
    }
}
