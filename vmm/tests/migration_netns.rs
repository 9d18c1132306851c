//! Live migration between two hosts: network namespaces joined by veth pairs and a bridge,
//! created by the test and removed when it ends, even on failure.
mod common;

use std::time::Duration;

use common::hosts::Hosts;
use common::*;
use laundromat_tests::netns::TestNetwork;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn migrates_between_two_namespace_hosts() {
    if !kvm_available() {
        return;
    }
    let _serial = serial();
    let net = TestNetwork::create(&["host-a", "host-b"]).expect("create the test hosts");
    let (a, b) = (net.host("host-a").unwrap(), net.host("host-b").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("src.sock");
    let url = format!("tcp://{}:4444", b.addr());

    let mut dst_cmd = b.command(vmm_bin());
    let hosts = Hosts::new();
    dst_cmd.args(hosts.incoming_args(&url));
    let mut dst = Vmm::spawn_command(dst_cmd);
    dst.wait_stderr("waiting for an incoming migration", LIMIT);

    let mut src_cmd = a.command(vmm_bin());
    // Long enough to finish migrating on a loaded machine before the guest ends its run.
    let cmdline = "workload=dirty wss=64 report-ms=100 exit-after-ms=15000";
    src_cmd.args(bench_args(192, 2, cmdline, Some(&sock)));
    let mut src = Vmm::spawn_command(src_cmd);
    let seen = src.wait_line(LIMIT, |l| field(l, "gen").is_some_and(|g| g >= 2));

    let params = hosts.params(url);
    let stats = pair::migrate_completed(&sock, params, &src, &dst, Duration::from_secs(120));
    assert!(stats["downtime-ms"].as_f64().unwrap() > 0.0);
    assert!(stats["ram"]["transferred"].as_u64().unwrap() >= 64 << 20);
    assert_eq!(src.wait_exit(LIMIT), Some(0), "{}", src.stderr());

    let before = src
        .lines
        .try_iter()
        .filter_map(|l| field(&l, "gen"))
        .max()
        .unwrap_or(0)
        .max(field(&seen, "gen").unwrap_or(0));
    // The guest finishes on host-b: gen rose past the source's, and it verified every page.
    let done = dst.wait_line(LIMIT, |l| l.contains("done"));
    assert!(
        field(&done, "gen").is_some_and(|g| g > before),
        "gen {before} -> {done}"
    );
    assert_eq!(field(&done, "errors"), Some(0), "{done}");
    assert_eq!(dst.wait_exit(LIMIT), Some(0), "{}", dst.stderr());

    let names: Vec<String> = net.namespaces().iter().map(|s| s.to_string()).collect();
    net.delete().expect("delete the test hosts");
    let left = laundromat_tests::netns::list_namespaces().unwrap();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "namespaces left behind: {left:?}"
    );
}
