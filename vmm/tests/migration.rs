//! Live migration between two `vmm` processes, and what happens when things go wrong: a peer
//! dying mid-stream, the connection cut on either side of the commit (over one connection and
//! over two), a wrong protocol version and malformed streams from an authenticated source.
//! Also snapshot round trips. Attacks on the transport are in `migration_security.rs`.
mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::hosts::Hosts;
use common::pair::*;
use common::tls_proxy::{self, Action, Dir};
use common::*;
use migrator::transport::SecureStream;
use migrator::wire::{self, Message};
use vmm::api::{client, protocol::Request};

fn loopback(wss: u32, vcpus: u8, lanes: u32) {
    loopback_with(wss, vcpus, lanes, false)
}

fn loopback_with(wss: u32, vcpus: u8, lanes: u32, on_files: bool) {
    let mut p = pair_with(wss, vcpus, "", on_files);
    let stats = migrate(&p, p.port, lanes);
    assert_eq!(
        stats["status"],
        "completed",
        "{stats}\nsrc:\n{}\ndst:\n{}",
        p.src.stderr(),
        p.dst.stderr()
    );
    assert_eq!(stats["ok"], true);
    // Statistics are consistent.
    assert!(stats["downtime-ms"].as_f64().unwrap() > 0.0, "{stats}");
    assert!(stats["total-time-ms"].as_f64().unwrap() >= stats["downtime-ms"].as_f64().unwrap());
    let transferred = stats["ram"]["transferred"].as_u64().unwrap();
    assert!(
        transferred >= u64::from(wss) << 20,
        "sent {transferred} bytes for a {wss} MiB working set"
    );
    assert!(stats["ram"]["dirty-sync-count"].as_u64().unwrap() >= 1);
    assert!(!stats["rounds"].as_array().unwrap().is_empty());

    // The source hands over and exits; everything it printed before is the "before" half.
    assert_eq!(p.src.wait_exit(LIMIT), Some(0), "{}", p.src.stderr());
    let before: Vec<String> = p.src.lines.try_iter().collect();
    let (last_gen_src, _) = gens(&before);
    // On the destination the counter carries on from where it was, with no integrity error.
    let after = p.dst.lines_for(Duration::from_millis(1500));
    let (gen_dst, errors) = gens(&after);
    let (last_gen_src, gen_dst) = (
        last_gen_src.unwrap_or(0),
        gen_dst.expect("destination printed no progress"),
    );
    assert!(
        gen_dst > last_gen_src,
        "gen did not rise: {last_gen_src} -> {gen_dst}"
    );
    assert!(
        !errors.is_empty() && errors.iter().all(|&e| e == 0),
        "errors on the destination: {after:?}"
    );
    assert_eq!(status(&p.dst_sock)["state"], "running");
    client::call(&p.dst_sock, &Request::Shutdown {}, Duration::from_secs(10)).unwrap();
    assert_eq!(p.dst.wait_exit(LIMIT), Some(0));
}

#[test]
fn loopback_16mib_one_vcpu() {
    let _serial = serial();
    if kvm_available() {
        loopback(16, 1, 1);
    }
}

#[test]
fn loopback_16mib_two_vcpus_two_connections() {
    let _serial = serial();
    if kvm_available() {
        loopback(16, 2, 2);
    }
}

#[test]
fn loopback_256mib_one_vcpu() {
    let _serial = serial();
    if kvm_available() {
        loopback(256, 1, 1);
    }
}

#[test]
fn loopback_256mib_two_vcpus_two_connections() {
    let _serial = serial();
    if kvm_available() {
        loopback(256, 2, 2);
    }
}

/// RAM in shared files on both sides: the destination writes pages to its file (`pwrite`)
/// instead of copying them into its mapping; the guest checks every page it wrote.
#[test]
fn loopback_64mib_on_memory_files_two_connections() {
    let _serial = serial();
    if kvm_available() {
        loopback_with(64, 2, 2, true);
    }
}

/// A proxy that moves source-to-destination bytes at 20 MB/s, so pre-copy lasts long enough
/// for a test to break it in the middle.
fn slow_proxy(dst_port: u16) -> u16 {
    let opts = tls_proxy::Options {
        up_rate: Some(20 << 20),
        ..Default::default()
    };
    tls_proxy::start(dst_port, opts, |_| Action::Forward).port
}

fn destination_killed_mid_precopy(lanes: u32) {
    let mut p = pair(128, 2, "");
    // At 20 MB/s the first pass alone takes seconds.
    let proxy = slow_proxy(p.port);
    let (sock, mut params) = (p.src_sock.clone(), p.hosts.params(url(proxy)));
    params.connections = lanes;
    let t = std::thread::spawn(move || {
        client::call_streaming(&sock, &Request::Migrate(params), LIMIT, &mut |_| {}).unwrap()
    });
    p.dst.wait_stderr("incoming migration peer", LIMIT);
    std::thread::sleep(Duration::from_millis(1000));
    p.dst.child.kill().unwrap();
    let stats = t.join().unwrap();
    assert_eq!(stats["status"], "failed", "{stats}");
    assert!(
        stats["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{stats}"
    );
    assert_eq!(status(&p.src_sock)["state"], "running");
    let _ = p.src.lines.try_iter().count();
    let after = p.src.lines_for(Duration::from_millis(800));
    let (g, errors) = gens(&after);
    assert!(g.is_some(), "source guest stopped printing");
    assert!(errors.iter().all(|&e| e == 0), "{after:?}");
}

#[test]
fn destination_killed_mid_precopy_leaves_the_source_running() {
    let _serial = serial();
    if kvm_available() {
        destination_killed_mid_precopy(1);
    }
}

#[test]
fn destination_killed_mid_precopy_over_two_connections_leaves_the_source_running() {
    let _serial = serial();
    if kvm_available() {
        destination_killed_mid_precopy(2);
    }
}

fn source_killed_mid_precopy(lanes: u32) {
    let mut p = pair(128, 2, "");
    let proxy = slow_proxy(p.port);
    let (sock, mut params) = (p.src_sock.clone(), p.hosts.params(url(proxy)));
    params.connections = lanes;
    let _t = std::thread::spawn(move || {
        let _ = client::call_streaming(&sock, &Request::Migrate(params), LIMIT, &mut |_| {});
    });
    p.dst.wait_stderr("incoming migration peer", LIMIT);
    std::thread::sleep(Duration::from_millis(1000));
    p.src.child.kill().unwrap();
    let code = p.dst.wait_exit(LIMIT);
    assert_eq!(code, Some(1), "{}", p.dst.stderr());
    assert!(
        p.dst.stderr().contains("incoming migration failed"),
        "{}",
        p.dst.stderr()
    );
    let printed: Vec<String> = p.dst.lines.try_iter().collect();
    assert!(
        printed.is_empty(),
        "the destination ran the guest: {printed:?}"
    );
}

#[test]
fn source_killed_mid_precopy_never_runs_the_guest_on_the_destination() {
    let _serial = serial();
    if kvm_available() {
        source_killed_mid_precopy(1);
    }
}

#[test]
fn source_killed_mid_precopy_over_two_connections_never_runs_the_guest_on_the_destination() {
    let _serial = serial();
    if kvm_available() {
        source_killed_mid_precopy(2);
    }
}

/// Where a cutting proxy breaks the connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// After the state reaches the destination, before its `Ready` reaches the source.
    BeforeCommit,
    /// After `Commit` reaches the destination, before its `Running` reaches the source.
    AfterCommit,
}

/// A proxy that cuts every connection at a chosen point of the switchover. It cannot read
/// the encrypted stream, but the shape of the exchange gives the point away: once pages have
/// flowed, the destination's records on the first connection are `Synced` (pre-copy is
/// over), `Ready` and `Running` (its `Welcome` came before any page).
fn cutting_proxy(dst_port: u16, cut: Cut) -> tls_proxy::Proxy {
    let replies = std::sync::atomic::AtomicUsize::new(0);
    tls_proxy::start(dst_port, tls_proxy::Options::default(), move |r| {
        if r.dir != Dir::Down || r.conn != 0 || r.up_bytes < 4 << 20 {
            return Action::Forward;
        }
        let n = replies.fetch_add(1, Ordering::SeqCst);
        match (cut, n) {
            (Cut::BeforeCommit, 1) | (Cut::AfterCommit, 2) => Action::Cut,
            _ => Action::Forward,
        }
    })
}

fn cut_before_commit(lanes: u32) {
    let mut p = pair(32, 1, "");
    let proxy = cutting_proxy(p.port, Cut::BeforeCommit);
    let stats = migrate(&p, proxy.port, lanes);
    assert!(
        proxy.cut.load(Ordering::SeqCst),
        "the proxy never reached its cut point: {stats}"
    );
    assert_eq!(stats["status"], "failed", "{stats}");
    // The source was paused for the switchover and is running again, intact.
    assert_eq!(status(&p.src_sock)["state"], "running");
    let after = p.src.lines_for(Duration::from_millis(800));
    let (g, errors) = gens(&after);
    assert!(g.is_some() && errors.iter().all(|&e| e == 0), "{after:?}");
    // The destination never got a commit: it gives up without running the guest.
    assert_eq!(p.dst.wait_exit(LIMIT), Some(1), "{}", p.dst.stderr());
    assert!(
        p.dst.lines.try_iter().next().is_none(),
        "the destination ran the guest"
    );
}

#[test]
fn connection_cut_before_commit_keeps_the_source_and_never_runs_the_destination() {
    let _serial = serial();
    if kvm_available() {
        cut_before_commit(1);
    }
}

#[test]
fn two_connections_cut_before_commit_keep_the_source_and_never_run_the_destination() {
    let _serial = serial();
    if kvm_available() {
        cut_before_commit(2);
    }
}

fn cut_after_commit(lanes: u32) {
    let mut p = pair(32, 1, "");
    let proxy = cutting_proxy(p.port, Cut::AfterCommit);
    let stats = migrate(&p, proxy.port, lanes);
    assert!(
        proxy.cut.load(Ordering::SeqCst),
        "the proxy never reached its cut point: {stats}"
    );
    // The source cannot know whether the destination took over: it stays paused.
    assert_eq!(stats["status"], "unknown", "{stats}");
    assert_eq!(status(&p.src_sock)["state"], "paused");
    let _ = p.src.lines.try_iter().count();
    // The destination got the commit and runs the guest, intact.
    let after = p.dst.lines_for(Duration::from_millis(1000));
    let (g, errors) = gens(&after);
    assert!(
        g.is_some() && errors.iter().all(|&e| e == 0),
        "{after:?}\n{}",
        p.dst.stderr()
    );
    // Meanwhile the paused source printed nothing: only one copy ran.
    assert!(
        p.src.lines.try_iter().next().is_none(),
        "the source resumed on a guess"
    );
    assert!(p.src.is_running());
}

#[test]
fn connection_cut_after_commit_runs_exactly_one_copy() {
    let _serial = serial();
    if kvm_available() {
        cut_after_commit(1);
    }
}

#[test]
fn two_connections_cut_after_commit_run_exactly_one_copy() {
    let _serial = serial();
    if kvm_available() {
        cut_after_commit(2);
    }
}

/// A destination alone, for feeding it hand-made streams from an authenticated source.
fn destination() -> (Vmm, u16, Hosts) {
    let port = free_port();
    let hosts = Hosts::new();
    let dst = Vmm::spawn(&hosts.incoming_args(&url(port)));
    dst.wait_stderr("waiting for an incoming migration", LIMIT);
    (dst, port, hosts)
}

/// The source's authenticated first connection, welcomed by the destination.
fn authenticated(port: u16, hosts: &Hosts) -> SecureStream {
    let peer = migrator::identity::PublicKey::from_hex(&hosts.dst_pub).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut lanes = migrator::transport::open(&addr, &hosts.src(), peer, 1).unwrap();
    lanes.remove(0)
}

/// An authenticated stream that has described a `mem_mib` bench machine.
fn with_machine(port: u16, hosts: &Hosts, mem_mib: u64) -> SecureStream {
    let mut s = authenticated(port, hosts);
    let machine =
        format!(r#"{{"boot":"bench","mem_mib":{mem_mib},"vcpus":1,"cmdline":"","irqchip":false}}"#);
    let msg = Message::Machine {
        ram_bytes: mem_mib << 20,
        blob: machine.into_bytes(),
    };
    wire::send(&mut s, &msg).unwrap();
    s
}

fn expect_rejection(mut dst: Vmm, needle: &str) {
    assert_eq!(dst.wait_exit(LIMIT), Some(1), "{}", dst.stderr());
    let err = dst.stderr();
    assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        dst.lines.try_iter().next().is_none(),
        "the destination ran something"
    );
}

#[test]
fn an_unknown_protocol_version_is_refused_and_the_destination_keeps_waiting() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let (mut dst, port, hosts) = destination();
    let peer = migrator::identity::PublicKey::from_hex(&hosts.dst_pub).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut s = migrator::transport::connect(&addr, &hosts.src(), peer).unwrap();
    let hello = Message::Hello {
        version: 7,
        session: [0; wire::SESSION_LEN],
        lane: 0,
        lanes: 1,
    };
    wire::send(&mut s, &hello).unwrap();
    let reply = wire::recv(&mut s).unwrap();
    assert!(
        matches!(reply, Message::Abort(ref why) if why.contains("version 7")),
        "{reply:?}"
    );
    dst.wait_stderr("version 7", LIMIT);
    assert!(dst.is_running(), "{}", dst.stderr());
    // The right source still gets in.
    let _s = with_machine(port, &hosts, 99_999_999);
    expect_rejection(dst, "more than this host");
}

#[test]
fn a_truncated_stream_is_rejected() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let (dst, port, hosts) = destination();
    let mut s = with_machine(port, &hosts, 16);
    s.write_all(&wire::pages_header(0x10_0000, 4)).unwrap();
    s.write_all(&[0xaa; 5000]).unwrap();
    s.flush().unwrap();
    s.close();
    drop(s);
    expect_rejection(dst, "closed");
}

#[test]
fn pages_outside_guest_ram_are_rejected() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let (dst, port, hosts) = destination();
    let mut s = with_machine(port, &hosts, 16);
    s.write_all(&wire::pages_header(16 << 20, 1)).unwrap();
    s.write_all(&[0xaa; 4096]).unwrap();
    s.flush().unwrap();
    expect_rejection(dst, "outside guest RAM");
}

#[test]
fn a_corrupt_state_is_rejected() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let (dst, port, hosts) = destination();
    let mut s = with_machine(port, &hosts, 16);
    wire::send(
        &mut s,
        &Message::State(b"LNDRVMST not really a state".to_vec()),
    )
    .unwrap();
    expect_rejection(dst, "state");
}

#[test]
fn an_absurd_machine_is_rejected_before_allocating() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let (dst, port, hosts) = destination();
    let _s = with_machine(port, &hosts, 99_999_999);
    expect_rejection(dst, "more than this host");
}

#[test]
fn snapshot_round_trip_is_byte_identical_and_restore_continues() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let mut src = Vmm::spawn(&bench_args(
        96,
        2,
        "workload=dirty wss=32 report-ms=100",
        Some(&sock),
    ));
    let seen = src.wait_line(LIMIT, |l| field(l, "gen").is_some_and(|g| g >= 2));
    let snap1 = dir.path().join("snap1");
    let v = client::call(
        &sock,
        &Request::Snapshot {
            dir: snap1.clone(),
            stop: true,
        },
        LIMIT,
    )
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(src.wait_exit(LIMIT), Some(0));
    let later = gens(&src.lines.try_iter().collect::<Vec<_>>()).0;
    let before = later.unwrap_or(0).max(field(&seen, "gen").unwrap_or(0));

    // Restore paused and save again at once: identical bytes.
    let sock2 = dir.path().join("b.sock");
    let mut again = Vmm::spawn(&[
        "run",
        "--restore",
        snap1.to_str().unwrap(),
        "--paused",
        "--api-sock",
        sock2.to_str().unwrap(),
    ]);
    let deadline = std::time::Instant::now() + LIMIT;
    while !sock2.exists() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let snap2 = dir.path().join("snap2");
    let v = client::call(
        &sock2,
        &Request::Snapshot {
            dir: snap2.clone(),
            stop: true,
        },
        LIMIT,
    )
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(again.wait_exit(LIMIT), Some(0));
    let s1 = std::fs::read(snap1.join("state.bin")).unwrap();
    let s2 = std::fs::read(snap2.join("state.bin")).unwrap();
    assert!(s1 == s2, "state differs after save-restore-save");
    assert!(
        std::fs::read(snap1.join("memory.bin")).unwrap()
            == std::fs::read(snap2.join("memory.bin")).unwrap()
    );

    // Restore and run: the workload continues where it was, intact.
    let restored = Vmm::spawn(&["run", "--restore", snap1.to_str().unwrap()]);
    let lines = restored.lines_for(Duration::from_millis(1500));
    let (g, errors) = gens(&lines);
    assert!(
        g.is_some_and(|g| g > before),
        "gen {before} -> {g:?}: {lines:?}\n{}",
        restored.stderr()
    );
    assert!(
        !errors.is_empty() && errors.iter().all(|&e| e == 0),
        "{lines:?}"
    );
}

#[test]
fn a_newer_state_version_is_rejected_clearly() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    let newer = vmm::persist::format::VERSION + 1;
    let mut state = b"LNDRVMST".to_vec();
    state.extend_from_slice(&newer.to_le_bytes());
    state.extend_from_slice(&0u64.to_le_bytes());
    state.extend_from_slice(&[0; 4]); // the version is checked before the CRC
    std::fs::write(snap.join("state.bin"), state).unwrap();
    let out = run_vmm(&["run", "--restore", snap.to_str().unwrap()], LIMIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains(&format!("version {newer} is not supported")),
        "{}",
        out.stderr
    );
}
