//! The tenant's `laundromat` binary against a real hostd: inject a bench guest, pay for it
//! (by hand and with `--follow`), survive a payer that crashed before recording a link, read
//! its status and console (read once, and followed until the VM stops), and stop it; another tenant can neither stop nor read it; and
//! `pay --follow` follows a VM that migrates to another host; `vm inject --disk` uploads a disk
//! image the guest reads, within the host's disk limit.
//!
//! `laundromat` is the broker package's binary: it must be built in the same profile
//! (`cargo build --release -p broker --bin laundromat`; `cargo test --workspace` does).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use token::Payer;

fn laundromat_bin() -> PathBuf {
    sibling_bin("laundromat", "broker")
}

/// A tenant's config dir: its key and its token file, as `keygen` and `token buy` leave them.
struct Tenant {
    dir: PathBuf,
    token_file: PathBuf,
}

impl Tenant {
    fn new(root: &Path, name: &str, bought: &Bought) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("tokens")).unwrap();
        std::fs::write(
            dir.join("tenant.key"),
            token::hex::encode(bought.tenant.as_bytes()),
        )
        .unwrap();
        let token_file = dir
            .join("tokens")
            .join(format!("{}.json", bought.token().token_id));
        let file = serde_json::json!({ "token": bought.signed, "payer": bought.payer });
        std::fs::write(&token_file, serde_json::to_vec(&file).unwrap()).unwrap();
        Self { dir, token_file }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(laundromat_bin());
        command
            .arg("--config-dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a command that must succeed and prints JSON; returns it.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let output = self.run(&[&["--json"], args].concat());
        assert!(
            output.status.success(),
            "laundromat {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn payer(&self) -> Payer {
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.token_file).unwrap()).unwrap();
        serde_json::from_value(file["payer"].clone()).unwrap()
    }
}

/// Asserts that a command was refused, naming hostd's status and code.
fn assert_refused(output: &Output, status: &str, code: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(status) && stderr.contains(code),
        "expected a {status} {code} refusal, got {:?}: {stderr}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_runs_pays_reads_and_stops_a_vm_and_no_one_else_can() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let spec = TokenSpec {
        link_period_ms: 2_000,
        ..TokenSpec::new(&kernel, IDLE)
    };
    let bought = spec.clone().buy();
    let other = TokenSpec { tenant: 2, ..spec }.buy();
    let hostd = Hostd::start(&["--grace-s", "600"], &[&bought, &other], &[]);
    let alice = Tenant::new(hostd.dir.path(), "alice", &bought);
    let mallory = Tenant::new(hostd.dir.path(), "mallory", &other);
    let kernel_file = hostd.dir.path().join("bench.elf");
    std::fs::write(&kernel_file, &kernel).unwrap();

    // Inject: the kernel is uploaded because the host lacks it, then the VM admitted.
    let injected = alice.json(&[
        "vm",
        "inject",
        "--host",
        &hostd.url,
        "--token",
        alice.token_file.to_str().unwrap(),
        "--kernel",
        kernel_file.to_str().unwrap(),
        "--cmdline",
        IDLE,
    ]);
    let vm = injected["vm_id"].as_str().unwrap().to_owned();
    assert_eq!(injected["state"], "running");
    let pid = injected["pid"].as_u64().unwrap() as u32;

    // Pay twice; keep the payer's state from before the second payment.
    assert_eq!(alice.json(&["pay", "--vm", &vm])["index"], 1);
    let before = std::fs::read(&alice.token_file).unwrap();
    let mut stale = alice.payer();
    assert_eq!(alice.json(&["pay", "--vm", &vm])["index"], 2);
    assert_eq!(alice.payer().next_index(), 3);

    // The link revealed by the second payment, sent again, is refused and changes nothing.
    let replay = stale.pay(1).unwrap();
    let refused = hostd.client.pay(&vm, &replay).await.unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(409), Some("replayed"))
    );
    assert_eq!(hostd.client.vm(&vm).await.unwrap().paid_index, 2);

    // A payer that crashed after the host accepted link 2 but before recording it: the next
    // `pay` takes the host's count and pays link 3, without sending link 2 again.
    std::fs::write(&alice.token_file, &before).unwrap();
    assert_eq!(alice.json(&["pay", "--vm", &vm])["index"], 3);
    let metrics = hostd.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_payments_total{outcome=\"replayed\"} 1\n"),
        "{metrics}"
    );

    // --follow keeps the VM a period ahead, printing each link, until Ctrl-C.
    let follow = alice
        .command(&["--json", "pay", "--vm", &vm, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while hostd.client.vm(&vm).await.unwrap().paid_index < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill takes plain integers; the child is ours and not yet reaped.
    unsafe { libc::kill(follow.id() as i32, libc::SIGINT) };
    let output = follow.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "pay --follow: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let links: Vec<u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let held = hostd.client.vm(&vm).await.unwrap().paid_index;
    assert!(
        held >= 5,
        "--follow paid up to {held} in {:?}",
        started.elapsed()
    );
    assert_eq!(links, (4..=held).collect::<Vec<_>>());
    assert_eq!(alice.payer().next_index(), held + 1);

    // Status and console.
    let status = alice.json(&["vm", "status", &vm]);
    assert_eq!(
        (status["paid_index"].as_u64(), status["state"].as_str()),
        (Some(held), Some("running"))
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let console = loop {
        let console = alice.json(&["vm", "console", &vm]);
        let text = console["output"].as_str().unwrap().to_owned();
        if text.contains("t=") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(console.contains("t="), "console: {console}");

    // Another tenant can neither stop nor read the VM, nor pay it from its own chain.
    for args in [
        &["vm", "stop", &vm, "--host", &hostd.url][..],
        &["vm", "console", &vm, "--host", &hostd.url],
    ] {
        assert_refused(&mallory.run(args), "403", "not_the_tenant");
    }
    let output = mallory.run(&[
        "pay",
        "--vm",
        &vm,
        "--host",
        &hostd.url,
        "--token",
        mallory.token_file.to_str().unwrap(),
    ]);
    assert!(
        !output.status.success()
            && String::from_utf8_lossy(&output.stderr).contains("but the token file is for"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(process_alive(pid));
    assert_eq!(hostd.client.vm(&vm).await.unwrap().paid_index, held);

    // A follower of the console gets the guest's output until the tenant stops the VM.
    let follower = alice
        .command(&["vm", "console", &vm, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = hostd.client.vm(&vm).await.unwrap().console_bytes;
    while hostd.client.vm(&vm).await.unwrap().console_bytes < before + 200
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The tenant stops it: the host keeps what it was paid.
    let stopped = alice.json(&["vm", "stop", &vm]);
    assert_eq!(stopped["paid_index"].as_u64(), Some(held));
    assert!(!process_alive(pid));
    let followed = follower.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&followed.stdout),
        String::from_utf8_lossy(&followed.stderr),
    );
    assert!(followed.status.success(), "vm console --follow: {err}");
    assert!(err.contains(&format!("VM {vm} has ended")), "{err}");
    assert!(out.matches("t=").count() >= 2, "followed console: {out}");
    assert_refused(
        &alice.run(&["vm", "status", &vm, "--host", &hostd.url]),
        "404",
        "vm_not_found",
    );
    assert_eq!(
        hostd.broker().credits.get(&hostd.identity.host_id),
        Some(&(held * PRICE))
    );
}

/// `pay --follow` keeps paying a VM that `vm migrate` moves to another host: the source
/// refuses with "moved, retry at host B", the payer carries on at B from the same token file,
/// and every link is accepted once, by exactly one host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_follow_follows_the_vm_across_a_migration() {
    if !kvm_available() {
        return;
    }
    const DIRTY: &str = "workload=dirty wss=4 report-ms=100";
    let kernel = bench_elf();
    let bought = TokenSpec {
        link_period_ms: 500,
        ..TokenSpec::new(&kernel, DIRTY)
    }
    .buy();
    let hosts = cluster(2, &["--grace-s", "600"], &[&bought]);
    let (a, b) = (&hosts[0], &hosts[1]);
    let alice = Tenant::new(a.dir.path(), "alice", &bought);
    let kernel_file = a.dir.path().join("bench.elf");
    std::fs::write(&kernel_file, &kernel).unwrap();
    let injected = alice.json(&[
        "vm",
        "inject",
        "--host",
        &a.url,
        "--token",
        alice.token_file.to_str().unwrap(),
        "--kernel",
        kernel_file.to_str().unwrap(),
        "--cmdline",
        DIRTY,
    ]);
    let vm = injected["vm_id"].as_str().unwrap().to_owned();

    let follow = alice
        .command(&["--json", "pay", "--vm", &vm, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.client.vm(&vm).await.unwrap().paid_index < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The tenant moves the VM while the payer runs.
    let moved = alice.json(&[
        "vm",
        "migrate",
        &vm,
        "--to",
        &b.identity.host_id.to_string(),
    ]);
    assert_eq!(moved["status"], "completed", "{moved}\n{}", a.log());
    let handed_over = b.client.vm(&vm).await.unwrap().redeemed_index;
    assert!(handed_over >= 2);
    // The payer goes on paying at b.
    let deadline = Instant::now() + Duration::from_secs(60);
    let paid_at_b = || async { b.client.vm(&vm).await.map_or(0, |v| v.paid_index) };
    while paid_at_b().await < handed_over + 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill takes plain integers; the child is ours and not yet reaped.
    unsafe { libc::kill(follow.id() as i32, libc::SIGINT) };
    let output = follow.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "pay --follow: {stderr}");
    assert!(stderr.contains("moved to host"), "{stderr}");
    let held = b.client.vm(&vm).await.unwrap().paid_index;
    assert!(held >= handed_over + 3, "b holds {held}: {stderr}");

    // Every link once, in order, each by one host: a's up to the handover, then b's.
    let receipts: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let indices: Vec<u64> = receipts
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (1..=held).collect::<Vec<_>>());
    let at = |url: &str| receipts.iter().filter(|r| r["host"] == url).count() as u64;
    assert_eq!((at(&a.url), at(&b.url)), (handed_over, held - handed_over));
    assert!(receipts[..handed_over as usize]
        .iter()
        .all(|r| r["host"] == a.url.as_str()));
    for (host, links) in [(a, handed_over), (b, held - handed_over)] {
        let metrics = host.client.metrics().await.unwrap();
        let accepted = format!("hostd_payments_total{{outcome=\"accepted\"}} {links}\n");
        assert!(metrics.contains(&accepted), "{}: {metrics}", host.url);
    }
    // Nothing re-spent, nothing skipped: the token file reveals the next link next.
    assert_eq!(alice.payer().next_index(), held + 1);
    // a was credited for its links at the handover; the client now finds the VM at b.
    assert_eq!(
        a.broker().credits.get(&a.identity.host_id),
        Some(&(handed_over * PRICE))
    );
    let status = alice.json(&["vm", "status", &vm]);
    assert_eq!(status["host_id"], b.identity.host_id.to_string());
    assert_eq!(status["paid_index"].as_u64(), Some(held));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_uploads_the_disk_and_a_disk_over_the_hosts_limit_is_refused_clearly() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    // 2 MiB; the guest reads it all and prints its FNV-1a checksum.
    let disk = laundromat_tests::disk_image::pseudo_random(2 << 20, 0xc11);
    let want = laundromat_tests::disk_image::fnv1a(&disk);
    let cmdline = "workload=blk-read wss=2";
    let image = laundromat_api::hostd::DiskImage {
        sha256: laundromat_api::hostd::BlobDigest::of(&disk),
        readonly: true,
    };
    let bought = TokenSpec {
        disk: Some(image),
        ..TokenSpec::new(&kernel, cmdline)
    }
    .buy();
    let small = Hostd::start(&["--max-disk-mib", "1"], &[&bought], &[]);
    let tenant = Tenant::new(small.dir.path(), "tenant", &bought);
    let (kernel_file, disk_file) = (
        small.dir.path().join("bench.elf"),
        small.dir.path().join("disk.img"),
    );
    std::fs::write(&kernel_file, &kernel).unwrap();
    std::fs::write(&disk_file, &disk).unwrap();
    let inject = |url: &str, readonly: bool| {
        let mut args = vec![
            "vm",
            "inject",
            "--host",
            url,
            "--token",
            tenant.token_file.to_str().unwrap(),
            "--kernel",
            kernel_file.to_str().unwrap(),
            "--cmdline",
            cmdline,
            "--disk",
            disk_file.to_str().unwrap(),
        ];
        if readonly {
            args.push("--disk-readonly");
        }
        tenant.run(&args)
    };

    // The token binds the disk read-only: writable does not match, checked before uploading.
    let mismatch = inject(&small.url, false);
    let stderr = String::from_utf8_lossy(&mismatch.stderr);
    assert!(
        !mismatch.status.success() && stderr.contains("do not match the token's image digest"),
        "{stderr}"
    );
    // A disk over the host's limit: refused with the flag that sets it.
    let refused = inject(&small.url, true);
    assert_refused(&refused, "413", "image_too_large");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--max-disk-mib"));

    // A host that takes it: the disk is uploaded and the guest reads exactly its bytes.
    let hostd = Hostd::start(&[], &[&bought], &[]);
    let injected = inject(&hostd.url, true);
    assert!(
        injected.status.success(),
        "{}",
        String::from_utf8_lossy(&injected.stderr)
    );
    let vm = String::from_utf8_lossy(&injected.stdout).trim().to_owned();
    let (mut console, mut from) = (String::new(), 0);
    let read = eventually(Duration::from_secs(30), || {
        let (bytes, next) = futures_block(hostd.client.console(&vm, from, &bought.tenant)).unwrap();
        console.push_str(&String::from_utf8_lossy(&bytes));
        from = next;
        // Whole lines only: a read may end mid-line.
        console[..console.rfind('\n').unwrap_or(0)].contains(" fnv=")
    })
    .await;
    assert!(read, "{console}");
    let line = console.lines().find(|l| l.contains(" fnv=")).unwrap();
    assert!(line.ends_with(&format!("fnv={want:016x}")), "{line}");
    hostd.client.stop(&vm, &bought.tenant).await.unwrap();
}
