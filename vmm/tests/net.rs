//! virtio-net end to end: the bench guest's HTTP server on a tap, reached from a client
//! namespace, and live-migrated under load between two namespace hosts. Every namespace, bridge
//! and tap is the test's own and goes when the `TestNetwork` is dropped, even on failure.
mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use laundromat_tests::http_client::{fnv1a, Client};
use laundromat_tests::netns::{Host, TestNetwork};

const LIMIT: Duration = Duration::from_secs(60);
const TAP: &str = "vmtap0";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const MAC: &str = "52:54:00:77:00:64";
/// Generous: the machine is shared and loaded.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn guest() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(GUEST_IP, 80))
}

fn http_cmdline(extra: &str) -> String {
    format!("workload=http ip={GUEST_IP}/24 gw=10.77.0.1 report-ms=1000 {extra}")
}

/// `vmm run` of the http guest on `host`'s tap.
fn boot_on(host: &Host, cmdline: &str, sock: Option<&std::path::Path>) -> Vmm {
    let mut cmd = host.command(vmm_bin());
    cmd.args(bench_args(64, 1, cmdline, sock));
    cmd.args(["--net", &format!("tap={TAP},mac={MAC}")]);
    let vm = Vmm::spawn_command(cmd);
    vm.wait_line(LIMIT, |l| l.contains("http listening"));
    vm
}

/// The guest's request counter, read from `from`.
fn count(from: &Host) -> u64 {
    let mut c = Client::connect(from, guest(), IO_TIMEOUT).expect("connect to the guest");
    let r = c.get("/count").expect("GET /count");
    assert_eq!(r.status, 200);
    r.text().trim().parse().expect("a number")
}

/// Whether `host`'s tap has a carrier, i.e. a process has it open.
fn tap_has_carrier(host: &Host) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", host.namespace(), "link", "show", TAP])
        .output()
        .expect("run ip link show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    !String::from_utf8_lossy(&out.stdout).contains("NO-CARRIER")
}

#[test]
fn guest_serves_http_to_a_client_namespace_and_1000_requests_over_50_connections() {
    if !kvm_available() {
        return;
    }
    let _serial = serial();
    let net = TestNetwork::create(&["host-a", "client"]).expect("create the test hosts");
    let (a, client) = (net.host("host-a").unwrap(), net.host("client").unwrap());
    a.attach_tap(TAP).expect("a tap on host-a");
    let vm = boot_on(a, &http_cmdline("size=5000 exit-after-ms=60000"), None);

    let mut c = Client::connect(client, guest(), IO_TIMEOUT).expect("connect");
    let r = c.get("/").expect("GET /");
    assert_eq!((r.status, r.body.len()), (200, 5000));
    assert!(r.body.iter().all(|&b| b == b'x'));
    let first = count(client);
    assert_eq!(first, 2, "GET / then /count");

    // 50 keep-alive connections, 20 requests each, all at once.
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&client, guest(), IO_TIMEOUT)?;
                let mut seen = Vec::new();
                for _ in 0..20 {
                    let r = c.get("/count")?;
                    assert_eq!(r.status, 200);
                    seen.push(r.text().trim().parse::<u64>().expect("a number"));
                }
                std::io::Result::Ok(seen)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .expect("a client thread")
                .expect("1000 requests succeed"),
        );
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 1000, "every request got its own count");
    assert_eq!(count(client), first + 1001);

    // An upload is checksummed by the guest as it arrives.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
    let r = c
        .post(&format!("/upload?fnv={:016x}", fnv1a(&body)), &body)
        .expect("upload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("ok "), "{}", r.text());
    let r = c
        .post("/upload?fnv=0000000000000001", b"hello")
        .expect("upload");
    assert_eq!(r.status, 422, "a wrong checksum is caught: {}", r.text());

    drop(c);
    drop(vm);
    drop(net);
}

#[test]
fn migrates_under_load_between_hosts_keeping_its_ip_its_count_and_its_uploads() {
    if !kvm_available() {
        return;
    }
    let _serial = serial();
    let net = TestNetwork::create(&["host-a", "host-b", "client"]).expect("create the test hosts");
    let (a, b, client) = (
        net.host("host-a").unwrap(),
        net.host("host-b").unwrap(),
        net.host("client").unwrap(),
    );
    a.attach_tap(TAP).expect("a tap on host-a");
    b.attach_tap(TAP).expect("a tap on host-b");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("src.sock");
    let url = format!("tcp://{}:4444", b.addr());

    let mut dst_cmd = b.command(vmm_bin());
    let hosts = common::hosts::Hosts::new();
    dst_cmd.args(hosts.incoming_args(&url));
    dst_cmd.args(["--net", &format!("tap={TAP}")]);
    assert!(!tap_has_carrier(b), "nobody has host-b's tap open yet");
    let mut dst = Vmm::spawn_command(dst_cmd);
    dst.wait_stderr("waiting for an incoming migration", LIMIT);
    // Attached from the start, its bridge port forwards by the switchover: the announce and
    // the guest's first frames on host-b are not dropped.
    assert!(
        tap_has_carrier(b),
        "the destination attached its tap only late"
    );
    let mut src = boot_on(a, &http_cmdline("exit-after-ms=120000"), Some(&sock));
    let before = count(client);

    // Load: 8 keep-alive connections asking for /count until told to stop (bounded in time).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut c = Client::connect(&client, guest(), IO_TIMEOUT)?;
                let end = Instant::now() + Duration::from_secs(90);
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let r = c.get("/count")?;
                    assert_eq!(r.status, 200);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    // An upload in flight across the switchover: the guest checks it on host-b.
    let body: Arc<Vec<u8>> = Arc::new((0..8_000_000u32).map(|i| (i ^ (i >> 9)) as u8).collect());
    let upload = {
        let (client, body) = (client.clone(), body.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(&client, guest(), IO_TIMEOUT)?;
            c.post(&format!("/upload?fnv={:016x}", fnv1a(&body)), &body)
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let params = hosts.params(url);
    pair::migrate_completed(&sock, params, &src, &dst, Duration::from_secs(120));
    assert_eq!(src.wait_exit(LIMIT), Some(0), "{}", src.stderr());
    dst.wait_stderr("announced the guest's MAC", LIMIT);

    let r = upload
        .join()
        .expect("the upload thread")
        .expect("the upload completes");
    assert_eq!(
        r.status,
        200,
        "the guest on host-b saw a damaged upload: {}",
        r.text()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join()
            .expect("a load thread")
            .expect("every request under load succeeds");
    }
    let served = done.load(Ordering::Relaxed);
    assert!(served > 0);
    // Same IP, now on host-b, and the counter carried on.
    let after = count(client);
    assert!(
        after > before + served,
        "count {before} -> {after} with {served} served"
    );
    assert!(dst.is_running(), "{}", dst.stderr());
    drop(dst);
    net.delete().expect("delete the test hosts");
}

/// A hostile guest driver offers malformed descriptor chains: each one stops the VM cleanly
/// with a device error (exit code 70 and a report), never a VMM panic.
#[test]
fn malformed_chains_from_a_real_guest_stop_the_vm_with_a_device_error() {
    if !kvm_available() {
        return;
    }
    let _serial = serial();
    let net = TestNetwork::create(&["host-a"]).expect("create the test host");
    let a = net.host("host-a").unwrap();
    a.attach_tap(TAP).expect("a tap on host-a");
    let cases = [
        (1, "outside guest RAM"),
        (2, "does not end"),
        (3, "holds more than"),
    ];
    for (evil, why) in cases {
        let mut cmd = a.command(vmm_bin());
        cmd.args(bench_args(
            64,
            1,
            &format!("workload=evil-net evil={evil}"),
            None,
        ));
        cmd.args(["--net", &format!("tap={TAP}")]);
        let mut vm = Vmm::spawn_command(cmd);
        let code = vm.wait_exit(LIMIT);
        let stderr = vm.stderr();
        assert_eq!(code, Some(vmm::EXIT_GUEST_CRASH), "evil={evil}: {stderr}");
        assert!(
            stderr.contains("virtio-net device error") && stderr.contains(why),
            "evil={evil}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    net.delete().expect("delete the test host");
}
