//! Costs that must follow the data, never the guest's RAM size: migration downtime and the
//! destination's resident memory for idle guests, and the size and restore time of a snapshot
//! of a guest that touched little. Each test compares a small guest with a large one on the
//! same machine in the same run, so a loaded machine slows both alike; the figures themselves
//! belong to the benchmarks (`migrate-bench`, `boot-bench`).
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use vmm::api::{client, protocol::Request};

const LIMIT: Duration = Duration::from_secs(60);
const SMALL_MIB: u64 = 256;
const LARGE_MIB: u64 = 2048;
/// Below this, a duration is scheduler noise on a busy 2-core machine, not a cost: ratios are
/// taken between durations raised to at least this much.
const NOISE_FLOOR_MS: f64 = 5.0;

/// `vmm run --incoming` arguments for a destination on loopback `port`.
fn incoming_args(hosts: &hosts::Hosts, port: u16, sock: &Path) -> Vec<String> {
    let mut args = hosts.incoming_args(&format!("tcp://127.0.0.1:{port}"));
    args.extend(["--api-sock".into(), sock.display().to_string()]);
    args
}

/// Resident memory of process `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib << 10
}

/// The `ms=` figure of the "the VM is running" log line.
fn running_ms(vmm: &Vmm) -> f64 {
    vmm.wait_stderr("the VM is running", LIMIT);
    let log = vmm.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("the VM is running"))
        .unwrap_or_default();
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ms= in {line:?}"))
}

struct Migrated {
    downtime_ms: f64,
    src_rss: u64,
    dst_rss: u64,
    stats: serde_json::Value,
}

/// Migrates an idle bench guest of `mem` MiB over loopback.
fn migrate_idle(mem: u64) -> Migrated {
    let dir = tempfile::tempdir().unwrap();
    let (src_sock, dst_sock) = (dir.path().join("src.sock"), dir.path().join("dst.sock"));
    let port = free_port();
    let hosts = hosts::Hosts::new();
    let mut dst = Vmm::spawn(&incoming_args(&hosts, port, &dst_sock));
    dst.wait_stderr("waiting for an incoming migration", LIMIT);
    let mut src = Vmm::spawn(&bench_args(
        mem,
        2,
        "workload=idle report-ms=100",
        Some(&src_sock),
    ));
    src.wait_line(LIMIT, |l| field(l, "gen").is_some());
    let src_rss = rss(src.child.id());
    let params = hosts.params(format!("tcp://127.0.0.1:{port}"));
    let stats = pair::migrate_completed(&src_sock, params, &src, &dst, LIMIT);
    assert_eq!(src.wait_exit(LIMIT), Some(0), "{}", src.stderr());
    // The guest runs on the destination: it keeps reporting.
    dst.wait_line(LIMIT, |l| field(l, "gen").is_some());
    let dst_rss = rss(dst.child.id());
    client::call(&dst_sock, &Request::Shutdown {}, Duration::from_secs(10)).unwrap();
    assert_eq!(dst.wait_exit(LIMIT), Some(0), "{}", dst.stderr());
    Migrated {
        downtime_ms: stats["downtime-ms"].as_f64().unwrap(),
        src_rss,
        dst_rss,
        stats,
    }
}

/// `a / b` with both raised to the noise floor first.
fn ratio(a: f64, b: f64) -> f64 {
    a.max(NOISE_FLOOR_MS) / b.max(NOISE_FLOOR_MS)
}

#[test]
fn idle_migration_downtime_does_not_grow_with_ram() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    // Scheduler noise on a loaded machine only ever adds time, so each size is judged by its
    // best of a few runs: what the migration itself costs.
    let best = |mib| {
        (0..3)
            .map(|_| migrate_idle(mib))
            .min_by(|a, b| a.downtime_ms.total_cmp(&b.downtime_ms))
            .unwrap()
    };
    let small = best(SMALL_MIB);
    let large = best(LARGE_MIB);
    let (s, l) = (small.downtime_ms, large.downtime_ms);
    for (m, mib) in [(&small, SMALL_MIB), (&large, LARGE_MIB)] {
        assert!(
            m.downtime_ms < 50.0,
            "{mib} MiB idle guest: downtime {} ms\n{}",
            m.downtime_ms,
            m.stats
        );
    }
    assert!(
        ratio(l, s) <= 2.0 && ratio(s, l) <= 2.0,
        "downtime {s} ms at {SMALL_MIB} MiB but {l} ms at {LARGE_MIB} MiB\n{}",
        large.stats
    );
}

#[test]
fn the_destination_populates_only_what_the_source_had() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let m = migrate_idle(LARGE_MIB);
    // Within 10% and 8 MiB of the source: never-touched guest RAM stays untouched.
    let bound = m.src_rss + m.src_rss / 10 + (8 << 20);
    assert!(
        m.dst_rss <= bound,
        "destination resident {} MiB, source {} MiB ({LARGE_MIB} MiB idle guest)",
        m.dst_rss >> 20,
        m.src_rss >> 20
    );
}

/// Snapshots an idle bench guest of `mem` MiB and restores it; returns the bytes the memory
/// image takes on disk and the restored VM's time to running.
fn snapshot_and_restore(mem: u64) -> (u64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vm.sock");
    let mut src = Vmm::spawn(&bench_args(
        mem,
        2,
        "workload=idle report-ms=100",
        Some(&sock),
    ));
    src.wait_line(LIMIT, |l| field(l, "gen").is_some());
    let snap = dir.path().join("snap");
    let v = client::call(
        &sock,
        &Request::Snapshot {
            dir: snap.clone(),
            stop: true,
        },
        LIMIT,
    )
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(src.wait_exit(LIMIT), Some(0), "{}", src.stderr());
    let image = std::fs::metadata(snap.join("memory.bin")).unwrap();
    assert_eq!(image.len(), mem << 20, "the image spans all RAM");
    let on_disk = image.blocks() * 512;

    let restored = Vmm::spawn(&["run", "--restore", snap.to_str().unwrap()]);
    let ms = running_ms(&restored);
    // It really runs: the guest reports again.
    restored.wait_line(LIMIT, |l| field(l, "gen").is_some());
    (on_disk, ms)
}

#[test]
fn a_mostly_untouched_snapshot_is_small_and_restores_like_a_small_guest() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let (small_disk, small_ms) = snapshot_and_restore(SMALL_MIB);
    let (large_disk, large_ms) = snapshot_and_restore(LARGE_MIB);
    // The idle guest touched a few pages of page tables and stacks; 2 GiB of RAM must not
    // show on disk.
    assert!(
        large_disk <= small_disk + (4 << 20) && large_disk < 16 << 20,
        "{LARGE_MIB} MiB guest's image takes {large_disk} bytes ({SMALL_MIB} MiB: {small_disk})"
    );
    // A lazily mapped image restores in the same time whatever its size; reading it would
    // take hundreds of ms here.
    let floor = 4.0 * NOISE_FLOOR_MS;
    assert!(
        large_ms.max(floor) <= 2.0 * small_ms.max(floor),
        "restore to running: {small_ms} ms at {SMALL_MIB} MiB, {large_ms} ms at {LARGE_MIB} MiB"
    );
}
