//! virtio-blk from a bench guest (`workload=blk`, a polling `virtio-drivers` driver): it
//! writes a generation of self-describing sectors, flushes, reads them back; a second VM on
//! the same image first verifies what the first one wrote.
mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(120);
const DISK_MIB: u64 = 4;

fn run_blk(disk: &std::path::Path, vcpus: &str) -> Output {
    let kernel = image("bench.elf");
    let disk_arg = format!("path={}", disk.display());
    run_vmm(
        &[
            "run",
            "--boot",
            "bench",
            "--kernel",
            kernel.to_str().unwrap(),
            "--mem",
            "64",
            "--vcpus",
            vcpus,
            "--disk",
            &disk_arg,
            "--cmdline",
            &format!("workload=blk wss={DISK_MIB}"),
        ],
        LIMIT,
    )
}

#[test]
fn a_bench_guest_writes_flushes_and_reads_back_and_a_restarted_vm_finds_the_data() {
    if !kvm_available() {
        return;
    }
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(DISK_MIB << 20).unwrap();
    let first = run_blk(disk.path(), "1");
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}\n{}",
        first.stdout,
        first.stderr
    );
    assert!(
        first.stdout.contains("bench: done gen=1 errors=0"),
        "{}",
        first.stdout
    );
    assert!(
        !first.stdout.contains("previous"),
        "a fresh disk has no generation"
    );
    // The data is in the file: sector 5 carries magic, generation 1 and its number.
    let bytes = std::fs::read(disk.path()).unwrap();
    let s5 = &bytes[5 * 512..6 * 512];
    assert_eq!(&s5[..8], b"LNDRBLK1");
    assert_eq!(u64::from_le_bytes(s5[8..16].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(s5[16..24].try_into().unwrap()), 5);

    // A new VM (two vCPUs this time) on the same image verifies generation 1, writes 2.
    let second = run_blk(disk.path(), "2");
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}\n{}",
        second.stdout,
        second.stderr
    );
    let sectors = DISK_MIB * 2048;
    assert!(
        second.stdout.contains(&format!(
            "bench: blk previous gen=1 sectors={sectors} errors=0"
        )),
        "{}",
        second.stdout
    );
    assert!(
        second.stdout.contains("bench: done gen=2 errors=0"),
        "{}",
        second.stdout
    );

    // Damage one sector behind the guest's back: the next run reports it and exits 3.
    let mut bytes = std::fs::read(disk.path()).unwrap();
    bytes[100 * 512 + 300] ^= 0xff;
    std::fs::write(disk.path(), &bytes).unwrap();
    let third = run_blk(disk.path(), "1");
    assert_eq!(
        third.status.code(),
        Some(3),
        "{}\n{}",
        third.stdout,
        third.stderr
    );
    assert!(
        third
            .stdout
            .contains("bench: blk: sector 100 does not hold generation 2"),
        "{}",
        third.stdout
    );
}

#[test]
fn a_snapshot_carries_the_disk_and_restores_only_onto_the_same_shape_of_disk() {
    if !kvm_available() {
        return;
    }
    use vmm::api::{client, protocol::Request};
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("path={}", disk.display());
    let sock = dir.path().join("a.sock");
    let mut args = bench_args(64, 1, "workload=idle report-ms=100", Some(&sock));
    args.extend(["--disk".to_string(), disk_arg.clone()]);
    let mut vm = Vmm::spawn(&args);
    vm.wait_line(LIMIT, |l| l.contains("gen="));
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
    assert_eq!(vm.wait_exit(LIMIT), Some(0));
    let snap = snap.to_str().unwrap();

    let out = run_vmm(&["run", "--restore", snap], LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the saved VM has 1 disks, but 0 --disk options were given"),
        "{}",
        out.stderr
    );
    let small = dir.path().join("small.img");
    std::fs::write(&small, vec![0u8; 4096]).unwrap();
    let small_arg = format!("path={}", small.display());
    let out = run_vmm(&["run", "--restore", snap, "--disk", &small_arg], LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the disk had 2048 sectors, this image has 8"),
        "{}",
        out.stderr
    );

    let sock2 = dir.path().join("b.sock");
    let mut restored = Vmm::spawn(&[
        "run",
        "--restore",
        snap,
        "--disk",
        &disk_arg,
        "--api-sock",
        sock2.to_str().unwrap(),
    ]);
    restored.wait_line(LIMIT, |l| l.contains("gen="));
    let status = client::call(&sock2, &Request::Status {}, LIMIT).unwrap();
    assert_eq!(
        status["disks"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    let v = client::call(&sock2, &Request::Shutdown {}, LIMIT).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(restored.wait_exit(LIMIT), Some(0));
}
