//! Disk images in image references: a bench guest (`workload=blk-read`) reads the disk hostd
//! gives it and prints each pass's checksum, which must be the one the test computed over the
//! image it uploaded; a token bought for another disk (or for this disk writable rather than
//! read-only) is refused; a missing disk blob gets the same refusal as a missing kernel; a
//! writable disk is the VM's own copy, so the guest's writes never reach the stored blob, and
//! the copy goes when the VM ends, also after a hostd restart re-adopted the VM. Migration: a
//! writable disk on a `--disk-dir` both hosts share moves with its VM, and a host that cannot
//! reach it refuses, leaving the VM running.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use hostd::client::ClientError;
use laundromat_api::hostd::{AdmitRequest, BlobDigest, DiskImage, VmView};
use laundromat_tests::disk_image::{fnv1a, pseudo_random};

const DISK_MIB: usize = 4;
const READER: &str = "workload=blk-read wss=4";

/// A disk image of pseudo-random words from `seed` at `path`: its reference and its checksum.
fn make_disk(path: &Path, seed: u64, readonly: bool) -> (DiskImage, u64) {
    let data = pseudo_random(DISK_MIB << 20, seed);
    std::fs::write(path, &data).unwrap();
    let image = DiskImage {
        sha256: BlobDigest::of(&data),
        readonly,
    };
    (image, fnv1a(&data))
}

/// A token for the bench kernel with `cmdline` and `disk`.
fn buy(kernel: &[u8], cmdline: &str, disk: &DiskImage) -> Bought {
    let mut spec = TokenSpec::new(kernel, cmdline);
    spec.disk = Some(disk.clone());
    spec.buy()
}

/// The admission request for `bought` with the (uploaded) bench kernel and `disk`.
fn with_disk(
    bought: &Bought,
    kernel: &BlobDigest,
    cmdline: &str,
    disk: &DiskImage,
) -> AdmitRequest {
    AdmitRequest {
        disk: Some(disk.clone()),
        ..request(bought, kernel, cmdline)
    }
}

/// The checksum of the first `blk-read` pass the VM's console shows at `hostd`.
async fn first_pass(hostd: &Hostd, vm: &str, bought: &Bought) -> u64 {
    let (mut console, mut from) = (Vec::new(), 0);
    let mut sum = None;
    let seen = eventually(Duration::from_secs(30), || {
        let (bytes, next) = futures_block(hostd.client.console(vm, from, &bought.tenant)).unwrap();
        console.extend(bytes);
        from = next;
        let text = String::from_utf8_lossy(&console);
        assert!(!text.contains("failed"), "{text}");
        // Whole lines only: a read may end mid-line.
        sum = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n') && l.contains("bench: blk-read pass="))
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("fnv=")))
            .map(|hex| u64::from_str_radix(hex, 16).unwrap());
        sum.is_some()
    })
    .await;
    assert!(seen, "console: {}", String::from_utf8_lossy(&console));
    sum.unwrap_or_default()
}

fn copy_of(disk_dir: &Path, vm: &VmView) -> PathBuf {
    disk_dir.join(format!("{}.img", vm.vm_id))
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reads_its_read_only_disk_and_only_a_token_for_that_disk_admits_it() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let (image, want) = make_disk(&path, 0x5eed, true);
    let bought = buy(&kernel, READER, &image);
    let other_disk = buy(
        &kernel,
        READER,
        &DiskImage {
            sha256: BlobDigest::of(b"another disk"),
            readonly: true,
        },
    );
    let writable = buy(
        &kernel,
        READER,
        &DiskImage {
            readonly: false,
            ..image.clone()
        },
    );
    let no_disk = TokenSpec::new(&kernel, READER).buy();
    let hostd = Hostd::start(&[], &[&bought, &other_disk, &writable, &no_disk], &[]);
    let kernel_digest = hostd.client.put_image(kernel.clone()).await.unwrap();

    // Not uploaded yet: the refusal a missing kernel gets.
    let admit = with_disk(&bought, &kernel_digest, READER, &image);
    let refused = hostd.client.admit(&admit).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.status()),
        (Some("image_not_found"), Some(404))
    );
    hostd.client.put_disk(&image.sha256, &path).await.unwrap();

    // Tokens bought for another disk, for this disk writable, or for no disk, do not admit
    // this image.
    for token in [&other_disk, &writable, &no_disk] {
        let refused = hostd
            .client
            .admit(&AdmitRequest {
                token: token.hex(),
                ..admit.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), refused.status()),
            (Some("wrong_image"), Some(403))
        );
    }
    // Nor does this token admit the image without its disk.
    let refused = hostd
        .client
        .admit(&request(&bought, &kernel_digest, READER))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("wrong_image"));

    let vm = hostd.client.admit(&admit).await.unwrap();
    assert_eq!(first_pass(&hostd, &vm.vm_id, &bought).await, want);
    // Read-only: the stored blob itself, no copy.
    assert_eq!(entries(&hostd.data_dir().join("disks")), 0);
    hostd.client.stop(&vm.vm_id, &bought.tenant).await.unwrap();
    assert_eq!(hostd.vm_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_disk_is_the_vms_own_copy_and_goes_when_the_vm_ends() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let (image, want) = make_disk(&path, 0xd15c, false);
    // The `blk` workload writes a new generation over the disk, flushes, reads it back and
    // exits 0 only if every sector holds what it wrote.
    let writer_cmdline = "workload=blk wss=4";
    let reader = buy(&kernel, READER, &image);
    let writer = buy(&kernel, writer_cmdline, &image);
    let mut hostd = Hostd::start(&[], &[&reader, &writer], &[]);
    let disk_dir = hostd.data_dir().join("disks");
    let kernel_digest = hostd.client.put_image(kernel.clone()).await.unwrap();
    hostd.client.put_disk(&image.sha256, &path).await.unwrap();
    let blob = hostd.data_dir().join("images").join(image.sha256.as_str());

    // A reader sees the image's bytes through its own copy. A restarted hostd re-adopts it
    // with its disk, and stopping it then removes the copy.
    let vm = hostd
        .client
        .admit(&with_disk(&reader, &kernel_digest, READER, &image))
        .await
        .unwrap();
    let copy = copy_of(&disk_dir, &vm);
    assert!(copy.is_file(), "no copy at {}", copy.display());
    assert_eq!(first_pass(&hostd, &vm.vm_id, &reader).await, want);
    hostd.kill9();
    hostd.spawn();
    assert_eq!(
        hostd.client.vm(&vm.vm_id).await.unwrap().pid,
        vm.pid,
        "{}",
        hostd.log()
    );
    assert!(copy.is_file());
    hostd.client.stop(&vm.vm_id, &reader.tenant).await.unwrap();
    assert!(!copy.exists());

    // A writer writes and verifies its disk, then exits: its writes went to its copy, which
    // is removed when it ends; the stored blob is unchanged.
    let vm = hostd
        .client
        .admit(&with_disk(&writer, &kernel_digest, writer_cmdline, &image))
        .await
        .unwrap();
    let ended = eventually(Duration::from_secs(60), || {
        futures_block(hostd.client.vm(&vm.vm_id)).is_err_and(|e| e.code() == Some("vm_not_found"))
    })
    .await;
    assert!(ended, "{}", hostd.log());
    let metrics = hostd.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_vms_reclaimed_total{reason=\"exited\"} 1\n"),
        "the writer did not exit cleanly:\n{metrics}\n{}",
        hostd.log()
    );
    assert_eq!(BlobDigest::of(&std::fs::read(&blob).unwrap()), image.sha256);
    assert_eq!(entries(&disk_dir), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_disk_on_a_shared_disk_dir_migrates_and_other_hosts_refuse_it() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let shared = tempfile::tempdir().unwrap();
    let disk_dir = shared.path().join("disks");
    let path = shared.path().join("disk.img");
    let (image, want) = make_disk(&path, 0x6d16, false);
    let bought = buy(&kernel, READER, &image);
    let on_shared = Place::LOOPBACK.with_args(&["--disk-dir", disk_dir.to_str().unwrap()]);
    // The third host keeps its disks in its own data directory.
    let places = [on_shared.clone(), on_shared, Place::LOOPBACK];
    let hosts = cluster_at(&places, &[], &[&bought]);
    let (a, b, apart) = (&hosts[0], &hosts[1], &hosts[2]);
    let kernel_digest = a.client.put_image(kernel.clone()).await.unwrap();
    a.client.put_disk(&image.sha256, &path).await.unwrap();
    let vm = a
        .client
        .admit(&with_disk(&bought, &kernel_digest, READER, &image))
        .await
        .unwrap();
    assert_eq!(first_pass(a, &vm.vm_id, &bought).await, want);

    // A host that cannot reach the disk refuses at prepare; the VM runs on at its source.
    let refused = a
        .client
        .migrate(
            &vm.vm_id,
            apart.identity.host_id,
            &bought.tenant,
            &mut |_| {},
        )
        .await;
    match refused {
        Err(ClientError::Refused { status: 502, body }) => assert!(
            body.error == "destination_refused" && body.message.contains("disk_unreachable"),
            "{body:?}"
        ),
        other => panic!("a host without the disk took the VM: {other:?}"),
    }
    assert!(apart.client.list().await.unwrap().is_empty());
    assert_eq!(a.client.vm(&vm.vm_id).await.unwrap().state, "running");

    // A host on the shared disk dir takes it: the guest reads on, from the same file.
    let lines = a
        .client
        .migrate(&vm.vm_id, b.identity.host_id, &bought.tenant, &mut |_| {})
        .await
        .unwrap();
    let result = lines.iter().rev().find(|l| l["event"] == "result");
    assert_eq!(
        result.map(|r| r["status"].clone()),
        Some("completed".into()),
        "{lines:?}\n{}\n{}",
        a.log(),
        b.log()
    );
    // The destination's watcher marks it running once its `vmm` reports so.
    let running = eventually(Duration::from_secs(10), || {
        futures_block(b.client.vm(&vm.vm_id)).is_ok_and(|v| v.state == "running")
    })
    .await;
    assert!(running, "{}", b.log());
    assert_eq!(first_pass(b, &vm.vm_id, &bought).await, want);
    // The source left the copy to its new host, which removes it when the VM ends there.
    let copy = copy_of(&disk_dir, &vm);
    assert!(copy.is_file());
    b.client.stop(&vm.vm_id, &bought.tenant).await.unwrap();
    assert!(!copy.exists());
}
