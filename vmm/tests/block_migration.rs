//! virtio-blk and live migration on shared storage: a bench guest (`workload=blk-read`) reads
//! a disk image the test made, pass after pass, while its VM migrates to a destination `vmm`
//! that opens the same file; every pass's checksum, the one that spans the switchover
//! included, must match the one the test computed over the file. Also the image locks: a
//! second VM is kept off an image in use, and a migration hands the lock over (and back, when
//! it is cancelled).
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::hosts::Hosts;
use common::pair::{migrate_completed, status, url, LIMIT};
use common::*;
use laundromat_tests::disk_image::{fnv1a, pseudo_random};
use vmm::api::{client, protocol::Request};

/// The image the guest reads: 128 MiB, a pass takes the guest a fraction of a second.
const DISK_MIB: usize = 128;
const GUEST_MIB: u64 = 64;

/// Writes an image of pseudo-random words and returns its checksum.
fn make_image(path: &Path) -> u64 {
    let data = pseudo_random(DISK_MIB << 20, 0x5eed);
    std::fs::write(path, &data).unwrap();
    fnv1a(&data)
}

fn disk_arg(path: &Path, readonly: bool) -> String {
    match readonly {
        true => format!("path={},readonly=on", path.display()),
        false => format!("path={}", path.display()),
    }
}

/// A bench guest reading `image` pass after pass, with its control socket at `sock`.
fn reader(image: &Path, sock: &Path) -> Vmm {
    let cmdline = format!("workload=blk-read wss={DISK_MIB}");
    let mut args = bench_args(GUEST_MIB, 1, &cmdline, Some(sock));
    args.extend(["--disk".into(), disk_arg(image, false)]);
    Vmm::spawn(&args)
}

/// An `--incoming` destination on `port` whose disk is `image`.
fn destination(hosts: &Hosts, port: u16, image: &Path, sock: &Path) -> Vmm {
    let mut args = hosts.incoming_args(&url(port));
    args.extend(["--api-sock".into(), sock.display().to_string()]);
    args.extend(["--disk".into(), disk_arg(image, false)]);
    let dst = Vmm::spawn(&args);
    dst.wait_stderr("waiting for an incoming migration", LIMIT);
    dst
}

/// `(pass, fnv)` of a `bench: blk-read pass=<p> bytes=<n> fnv=<hex>` line.
fn pass(line: &str) -> Option<(u64, u64)> {
    let p = field(line, "pass")?;
    let hex = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fnv="))?;
    Some((p, u64::from_str_radix(hex, 16).ok()?))
}

/// Every pass among `lines`, checked against `want`; panics on a read failure.
fn passes(lines: &[String], want: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    for l in lines {
        assert!(
            !l.contains("failed"),
            "the guest saw a failed read: {lines:?}"
        );
        if let Some((p, sum)) = pass(l) {
            assert_eq!(
                sum, want,
                "pass {p} read other data than the image holds: {l}"
            );
            seen.push(p);
        }
    }
    seen
}

/// Runs a second VM on `image` and expects it to be refused because the image is in use.
fn refused(image: &Path, readonly: bool) {
    let mut args = bench_args(GUEST_MIB, 1, "workload=idle exit-after-ms=200", None);
    args.extend(["--disk".into(), disk_arg(image, readonly)]);
    let out = run_vmm(&args, LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let want = format!("disk image {} is in use by another VM", image.display());
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}

/// Runs a second VM on `image` that must start and finish normally.
fn admitted(image: &Path, readonly: bool) {
    let mut args = bench_args(GUEST_MIB, 1, "workload=idle exit-after-ms=200", None);
    args.extend(["--disk".into(), disk_arg(image, readonly)]);
    let out = run_vmm(&args, LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
}

fn image_locked(sock: &Path) -> bool {
    let s = status(sock);
    s["disks"][0]["image_locked"]
        .as_bool()
        .unwrap_or_else(|| panic!("no image_locked in {s}"))
}

struct Setup {
    dir: tempfile::TempDir,
    image: PathBuf,
    want: u64,
    hosts: Hosts,
    port: u16,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let want = make_image(&image);
        Self {
            image,
            want,
            hosts: Hosts::new(),
            port: free_port(),
            dir,
        }
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn a_guest_reading_its_disk_migrates_mid_read_and_every_pass_matches_the_image() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let s = Setup::new();
    let (src_sock, dst_sock) = (s.sock("src.sock"), s.sock("dst.sock"));
    let mut dst = destination(&s.hosts, s.port, &s.image, &dst_sock);
    let mut src = reader(&s.image, &src_sock);
    // Migrate while the guest is well into its reading.
    let first = src.wait_line(LIMIT, |l| pass(l).is_some());
    assert_eq!(passes(&[first], s.want), vec![1]);
    assert!(image_locked(&src_sock));
    let stats = migrate_completed(&src_sock, s.hosts.params(url(s.port)), &src, &dst, LIMIT);
    assert_eq!(src.wait_exit(LIMIT), Some(0), "{}", src.stderr());
    let before: Vec<String> = src.lines.try_iter().collect();
    let last_src = passes(&before, s.want).last().copied().unwrap_or(1);

    // The pass after the source's last one was under way at the switchover: it finishes on
    // the destination, and so does at least one pass read there from start to end.
    let deadline = Instant::now() + LIMIT;
    let mut after = Vec::new();
    while passes(&after, s.want).last() < Some(&(last_src + 2)) {
        assert!(Instant::now() < deadline, "{after:?}\n{}", dst.stderr());
        after.push(dst.wait_line(LIMIT, |_| true));
    }
    let seen = passes(&after, s.want);
    assert_eq!(seen.first(), Some(&(last_src + 1)), "{after:?}\n{stats}");
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");

    // The destination took the image's lock at the switchover: nobody else gets it.
    assert!(image_locked(&dst_sock));
    assert!(status(&dst_sock)["disks"][0]["requests"].as_u64() > Some(0));
    refused(&s.image, false);
    client::call(&dst_sock, &Request::Shutdown {}, Duration::from_secs(10)).unwrap();
    assert_eq!(dst.wait_exit(LIMIT), Some(0), "{}", dst.stderr());
}

#[test]
fn an_image_in_use_keeps_other_vms_off_and_readers_share_one() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let sock = dir.path().join("a.sock");
    let start = |readonly| {
        let mut args = bench_args(GUEST_MIB, 1, "workload=idle report-ms=100", Some(&sock));
        args.extend(["--disk".into(), disk_arg(&image, readonly)]);
        let vm = Vmm::spawn(&args);
        vm.wait_line(LIMIT, |l| l.contains("gen="));
        vm
    };
    let stop = |mut vm: Vmm| {
        client::call(&sock, &Request::Shutdown {}, Duration::from_secs(10)).unwrap();
        assert_eq!(vm.wait_exit(LIMIT), Some(0), "{}", vm.stderr());
    };

    // A VM writes the image: no other VM may write or even read it.
    let writer = start(false);
    refused(&image, false);
    refused(&image, true);
    stop(writer);
    // Readers share it, and keep writers off.
    let reader = start(true);
    admitted(&image, true);
    refused(&image, false);
    stop(reader);
    // Free again once they are gone.
    admitted(&image, false);
}

#[test]
fn a_cancelled_migration_hands_the_image_lock_back_to_the_source() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let s = Setup::new();
    let (src_sock, dst_sock) = (s.sock("src.sock"), s.sock("dst.sock"));
    let mut dst = destination(&s.hosts, s.port, &s.image, &dst_sock);
    let mut src = reader(&s.image, &src_sock);
    src.wait_line(LIMIT, |l| pass(l).is_some());

    let mut params = s.hosts.params(url(s.port));
    params.hold_before_commit_s = Some(30);
    let (sock, (tx, ready)) = (src_sock.clone(), std::sync::mpsc::channel());
    let migration = std::thread::spawn(move || {
        client::call_streaming(&sock, &Request::Migrate(params), LIMIT, &mut |event| {
            if event["event"] == "ready_to_commit" {
                let _ = tx.send(());
            }
        })
        .expect("migrate call")
    });
    ready
        .recv_timeout(LIMIT)
        .unwrap_or_else(|e| panic!("no ready_to_commit ({e}); src:\n{}", src.stderr()));
    // Held before `Commit`: the source let go of the image and the destination holds it.
    assert!(!image_locked(&src_sock));
    refused(&s.image, false);

    let cancel = Request::Cancel {
        reason: Some("the test cancels".into()),
    };
    client::call(&src_sock, &cancel, Duration::from_secs(10)).unwrap();
    let stats = migration.join().unwrap();
    assert_eq!(stats["status"], "cancelled", "{stats}");
    assert_ne!(dst.wait_exit(LIMIT), Some(0), "{}", dst.stderr());
    // Once the destination is gone the source has its lock back, and its guest reads on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !image_locked(&src_sock) {
        assert!(Instant::now() < deadline, "{}", src.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    refused(&s.image, false);
    let _ = src.lines.try_iter().count();
    let next = src.wait_line(LIMIT, |l| pass(l).is_some());
    passes(&[next], s.want);
    client::call(&src_sock, &Request::Shutdown {}, Duration::from_secs(10)).unwrap();
    assert_eq!(src.wait_exit(LIMIT), Some(0), "{}", src.stderr());
}
