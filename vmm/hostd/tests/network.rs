//! `hostd --bridge`: each VM gets a tap on the host's bridge and a MAC fixed by its VM id. The
//! hostds run in namespace hosts of a test network and the test talks to them, and to the
//! guests' HTTP servers, from its client namespace. Every namespace (and with it every bridge
//! and tap) is the test's own and goes when the `TestNetwork` is dropped, even on failure.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hostd::client::ClientError;
use hostd::network::VmNet;
use laundromat_tests::http_client::Client;
use laundromat_tests::netns::{Host, TestNetwork, HOST_BRIDGE};

/// Generous: the machine is shared and loaded.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// Guest `n`'s address: each VM of a test has its own, as different tenants' VMs would (a
/// new VM at an old VM's address would wait out the client's stale ARP entry).
fn guest(n: u8) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 100 + n), 80))
}

/// The bench guest's HTTP server at guest `n`'s address: the tenant gives the guest its IP,
/// hostd its MAC (in the virtio-net config space).
fn http(n: u8) -> String {
    format!(
        "workload=http ip={}/24 gw=10.77.0.1 report-ms=1000",
        guest(n).ip()
    )
}

/// `ip -o link show NAME` in namespace `ns`, or `None` if there is no such interface.
fn link(ns: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", name])
        .output()
        .expect("run ip");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of the interfaces in `ns` that look like hostd's VM taps.
fn vm_taps(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_string())
        .filter(|name| name.starts_with("lm") && name.len() == 15)
        .collect()
}

fn ip_in(ns: &str, args: &[&str]) {
    let status = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .status()
        .expect("run ip");
    assert!(status.success(), "ip -n {ns} {args:?}");
}

/// One `GET /count` from `client`; `None` if the guest does not answer.
fn try_count(client: &Host, n: u8) -> Option<u64> {
    let mut c = Client::connect(client, guest(n), IO_TIMEOUT).ok()?;
    let r = c.get("/count").ok()?;
    assert_eq!(r.status, 200);
    r.text().trim().parse().ok()
}

/// The guest's counter, waiting for it to come up (or to come back after a switchover).
fn count(client: &Host, n: u8) -> u64 {
    let deadline = Instant::now() + BOOT_LIMIT;
    loop {
        if let Some(count) = try_count(client, n) {
            return count;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never answered at {}",
            guest(n)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http_token(kernel: &[u8], n: u8) -> Bought {
    TokenSpec {
        memory_mib: 64,
        ..TokenSpec::new(kernel, &http(n))
    }
    .buy()
}

/// Runs `f` on a runtime whose threads are in `host`'s namespace.
fn in_namespace<T: Send + 'static>(
    host: &Host,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    host.within(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    })
    .expect("a thread in the namespace")
}

#[test]
fn vms_get_a_tap_on_the_bridge_that_goes_when_they_end() {
    if !kvm_available() {
        return;
    }
    let net = TestNetwork::create(&["host-a", "client"]).expect("the test network");
    let (a, client) = (net.host("host-a").unwrap(), net.host("client").unwrap());
    a.add_bridge().expect("a bridge on host-a");
    let ns = a.namespace().to_string();
    let place = Place::netns(&ns, a.addr());
    let client = client.clone();
    in_namespace(&client.clone(), async move {
        let kernel = bench_elf();
        let tokens: Vec<Bought> = (0..3).map(|n| http_token(&kernel, n)).collect();
        // A token for an image `vmm` cannot load.
        let garbage = vec![0x5a; 4096];
        let broken = TokenSpec {
            memory_mib: 64,
            ..TokenSpec::new(&garbage, &http(3))
        }
        .buy();
        let mut refs: Vec<&Bought> = tokens.iter().collect();
        refs.push(&broken);
        let mut hostd = Hostd::start_at(place, &["--bridge", HOST_BRIDGE], &refs, &[]);

        // Admitted: its tap is on the bridge and up, its MAC follows its VM id, and the guest
        // answers the client namespace.
        let vm = hostd.admit(&tokens[0], &kernel, &http(0)).await.unwrap();
        let expected = VmNet::for_vm(&vm.vm_id).unwrap();
        assert_eq!(vm.mac.as_deref(), Some(expected.mac.to_string().as_str()));
        let shown = link(&ns, &expected.tap).expect("the VM's tap exists");
        assert!(shown.contains(&format!("master {HOST_BRIDGE}")), "{shown}");
        assert!(shown.contains("UP"), "{shown}");
        let first = count(&client, 0);
        assert_eq!(try_count(&client, 0), Some(first + 1));
        let metrics = hostd.client.metrics().await.unwrap();
        assert!(
            metrics.contains("hostd_taps_total{event=\"created\"} 1"),
            "{metrics}"
        );

        // Stopped by its tenant: the tap goes with it.
        hostd
            .client
            .stop(&vm.vm_id, &tokens[0].tenant)
            .await
            .unwrap();
        assert_eq!(link(&ns, &expected.tap), None, "the tap outlived its VM");

        // A vmm killed with SIGKILL: hostd notices and deletes the tap.
        let vm = hostd.admit(&tokens[1], &kernel, &http(1)).await.unwrap();
        let tap = VmNet::for_vm(&vm.vm_id).unwrap().tap;
        assert!(link(&ns, &tap).is_some());
        count(&client, 1);
        // SAFETY: kill takes plain integers; the pid is the VM's live vmm.
        unsafe { libc::kill(vm.pid.unwrap() as i32, libc::SIGKILL) };
        assert!(
            eventually(Duration::from_secs(20), || link(&ns, &tap).is_none()).await,
            "the killed VM's tap stayed\n{}",
            hostd.log()
        );
        assert!(eventually(Duration::from_secs(10), || hostd.vm_dirs() == 0).await);

        // A VM whose vmm cannot start leaves no tap.
        let refused = hostd.admit(&broken, &garbage, &http(3)).await.unwrap_err();
        assert_eq!(refused.code(), Some("vm_failed_to_start"), "{refused}");
        assert_eq!(vm_taps(&ns), Vec::<String>::new());

        // hostd restarts with a VM running and taps left by a crash: the VM keeps its tap
        // and keeps serving; the orphan on this bridge goes; a tap of hostd's naming on
        // another bridge, and any other interface, stay.
        let vm = hostd.admit(&tokens[2], &kernel, &http(2)).await.unwrap();
        let tap = VmNet::for_vm(&vm.vm_id).unwrap().tap;
        let before = count(&client, 2);
        let (orphan, foreign) = ("lm0000000000abc", "lm1111111111abc");
        ip_in(&ns, &["tuntap", "add", "dev", orphan, "mode", "tap"]);
        ip_in(&ns, &["link", "set", orphan, "master", HOST_BRIDGE]);
        ip_in(&ns, &["link", "add", "otherbr", "type", "bridge"]);
        ip_in(&ns, &["tuntap", "add", "dev", foreign, "mode", "tap"]);
        ip_in(&ns, &["link", "set", foreign, "master", "otherbr"]);
        hostd.kill9();
        hostd.spawn();
        assert_eq!(link(&ns, orphan), None, "the orphan tap stayed");
        assert!(
            link(&ns, foreign).is_some(),
            "another bridge's tap was deleted"
        );
        assert!(link(&ns, &tap).is_some(), "the re-adopted VM lost its tap");
        assert!(count(&client, 2) > before, "the counter restarted");
        hostd
            .client
            .stop(&vm.vm_id, &tokens[2].tenant)
            .await
            .unwrap();
        assert_eq!(vm_taps(&ns), vec![foreign.to_string()]);
    });
    net.delete().expect("the test network is removed");
}

#[test]
fn hostd_refuses_to_start_without_its_bridge() {
    let net = TestNetwork::create(&["host-a"]).expect("the test network");
    let a = net.host("host-a").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker_file = dir.path().join("broker.json");
    let empty = hostd::broker::fake::FakeState::default();
    std::fs::write(&broker_file, serde_json::to_vec(&empty).unwrap()).unwrap();
    let broker = format!("file:{}", broker_file.display());
    let out = a
        .command(env!("CARGO_BIN_EXE_hostd"))
        .args(["--broker", &broker, "--cluster", &CLUSTER.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .arg("--vmm")
        .arg(vmm_bin())
        .args(["--bridge", "nosuchbridge"])
        .output()
        .expect("run hostd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no interface \"nosuchbridge\"") && stderr.contains("must exist"),
        "{stderr}"
    );
    // An interface that is not a bridge is refused too.
    let out = a
        .command(env!("CARGO_BIN_EXE_hostd"))
        .args(["--broker", &broker, "--cluster", &CLUSTER.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .arg("--vmm")
        .arg(vmm_bin())
        .args(["--bridge", "lo"])
        .output()
        .expect("run hostd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("\"lo\" is not a bridge"), "{stderr}");
}

#[test]
fn a_migrated_vm_keeps_its_mac_and_ip_and_its_old_tap_goes() {
    if !kvm_available() {
        return;
    }
    let net =
        TestNetwork::create(&["host-a", "host-b", "host-c", "client"]).expect("the test network");
    let (a, b) = (net.host("host-a").unwrap(), net.host("host-b").unwrap());
    let c = net.host("host-c").unwrap();
    a.add_bridge().expect("a bridge on host-a");
    b.add_bridge().expect("a bridge on host-b");
    let (ns_a, ns_b) = (a.namespace().to_string(), b.namespace().to_string());
    let bridged = ["--bridge", HOST_BRIDGE];
    let places = [
        Place::netns(&ns_a, a.addr()).with_args(&bridged),
        Place::netns(&ns_b, b.addr()).with_args(&bridged),
        // host-c gives VMs no network (no --bridge).
        Place::netns(c.namespace(), c.addr()),
    ];
    let client = net.host("client").unwrap().clone();
    in_namespace(&client.clone(), async move {
        let kernel = bench_elf();
        let bought = http_token(&kernel, 0);
        let hosts = cluster_at(&places, &[], &[&bought]);
        let (from, to, bare) = (&hosts[0], &hosts[1], &hosts[2]);
        let vm = from.admit(&bought, &kernel, &http(0)).await.unwrap();
        let tap = VmNet::for_vm(&vm.vm_id).unwrap().tap;

        // A host without a bridge cannot take a VM with a network card: it refuses at prepare,
        // and the VM stays at its source, running and reachable.
        let refused = from
            .client
            .migrate(
                &vm.vm_id,
                bare.identity.host_id,
                &bought.tenant,
                &mut |_| {},
            )
            .await;
        match refused {
            Err(ClientError::Refused { status: 502, body }) => assert!(
                body.error == "destination_refused" && body.message.contains("no_network"),
                "{body:?}"
            ),
            other => panic!("a host without a bridge took the VM: {other:?}"),
        }
        assert!(bare.client.list().await.unwrap().is_empty());
        assert_eq!(from.client.vm(&vm.vm_id).await.unwrap().state, "running");
        let before = count(&client, 0);

        let lines = from
            .client
            .migrate(&vm.vm_id, to.identity.host_id, &bought.tenant, &mut |_| {})
            .await
            .unwrap();
        let result = lines
            .iter()
            .rev()
            .find(|l| l["event"] == "result")
            .unwrap_or_else(|| panic!("no result: {lines:?}"));
        assert_eq!(
            result["status"],
            "completed",
            "{lines:?}\nhost-a:\n{}\nhost-b:\n{}",
            from.log(),
            to.log()
        );

        // Same IP, same MAC, and the counter carried on: the guest moved, it did not restart.
        let after = count(&client, 0);
        assert!(after > before, "the counter went from {before} to {after}");
        let view = to.client.vm(&vm.vm_id).await.unwrap();
        assert_eq!(view.mac, vm.mac);
        let shown = link(&ns_b, &tap).expect("the destination's tap");
        assert!(shown.contains(&format!("master {HOST_BRIDGE}")), "{shown}");
        assert!(
            eventually(Duration::from_secs(10), || link(&ns_a, &tap).is_none()).await,
            "the source kept its tap"
        );
        to.client.stop(&vm.vm_id, &bought.tenant).await.unwrap();
        assert_eq!(link(&ns_b, &tap), None);
    });
    net.delete().expect("the test network is removed");
}
