//! Attacks on the migration transport: someone on the path reading, changing or replaying the
//! stream, the wrong host at either end, and whoever reaches a waiting destination's port
//! first. The stream is mutual TLS between pinned host keys, so each of these must fail
//! cleanly: the source keeps its VM running, and the destination never runs a guest it did
//! not get intact from its source.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::hosts::Hosts;
use common::pair::*;
use common::tls_proxy::{self, Action, Dir, Options, Record};
use common::*;
use migrator::identity::PublicKey;
use vmm::api::{client, protocol::Request};

/// The end of the guest's command line, which lives in guest memory.
const SECRET: &str = "exit-after-ms=86400123";

fn migrate_with(p: &Pair, params: migrator::MigrateParams) -> serde_json::Value {
    client::call_streaming(&p.src_sock, &Request::Migrate(params), LIMIT, &mut |_| {})
        .unwrap_or_else(|e| panic!("migrate call: {e:?}\nsource:\n{}", p.src.stderr()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The source VM still runs its guest, intact.
fn assert_source_runs(p: &mut Pair) {
    assert_eq!(status(&p.src_sock)["state"], "running");
    let _ = p.src.lines.try_iter().count();
    let after = p.src.lines_for(Duration::from_millis(800));
    let (g, errors) = gens(&after);
    assert!(g.is_some(), "source guest stopped printing");
    assert!(errors.iter().all(|&e| e == 0), "{after:?}");
}

/// The destination exits with an error and never ran the guest.
fn assert_destination_failed(p: &mut Pair) {
    assert_eq!(p.dst.wait_exit(LIMIT), Some(1), "{}", p.dst.stderr());
    assert!(!p.dst.stderr().contains("panicked"), "{}", p.dst.stderr());
    assert!(
        p.dst.lines.try_iter().next().is_none(),
        "the destination ran the guest"
    );
}

#[test]
fn a_recording_proxy_sees_no_guest_memory_and_its_recording_cannot_be_replayed() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let p = pair(16, 1, SECRET);
    // The secret is in guest memory: a snapshot of it contains the string.
    let snap = tempfile::tempdir().unwrap();
    let dir = snap.path().join("s");
    let v = client::call(
        &p.src_sock,
        &Request::Snapshot {
            dir: dir.clone(),
            stop: false,
        },
        LIMIT,
    )
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let in_memory = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .any(|f| contains(&std::fs::read(f.path()).unwrap(), SECRET.as_bytes()));
    assert!(in_memory, "the secret is not in the guest's memory");

    let proxy = tls_proxy::start(p.port, Options::default(), |_| Action::Forward);
    let stats = migrate_with(&p, p.hosts.params(url(proxy.port)));
    assert_eq!(stats["status"], "completed", "{stats}\n{}", p.dst.stderr());
    let recorded = proxy.recorded.lock().unwrap().clone();
    let total: usize = recorded.iter().map(Vec::len).sum();
    assert!(
        total > 16 << 20,
        "only {total} bytes went through the proxy"
    );
    for conn in &recorded {
        assert!(
            !contains(conn, SECRET.as_bytes()),
            "guest memory crossed the wire in the clear"
        );
    }
    // The guest runs on at the destination.
    p.dst.wait_line(LIMIT, |l| field(l, "gen").is_some());

    // Replaying the source's half to a fresh destination with the same keys gets nowhere: the
    // destination's new handshake keys make the recording meaningless.
    let port = free_port();
    let mut args = p.hosts.incoming_args(&url(port));
    args.extend(["--incoming-timeout".into(), "6".into()]);
    let mut dst = Vmm::spawn(&args);
    dst.wait_stderr("waiting for an incoming migration", LIMIT);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(&recorded[0]);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.read(&mut [0u8; 4096]);
    drop(s);
    dst.wait_stderr("refused a migration connection", LIMIT);
    assert_eq!(dst.wait_exit(LIMIT), Some(1), "{}", dst.stderr());
    assert!(
        dst.stderr()
            .contains("no source completed a migration handshake within 6 s"),
        "{}",
        dst.stderr()
    );
    assert!(
        dst.lines.try_iter().next().is_none(),
        "the replay ran a guest"
    );
}

/// Flips one byte in the first record `pick` chooses, once.
fn flip_once(
    pick: impl Fn(&Record<'_>) -> bool + Send + Sync + 'static,
) -> impl Fn(&mut Record<'_>) -> Action + Send + Sync + 'static {
    let done = AtomicBool::new(false);
    move |r| {
        // Past the 5-byte header, inside the encrypted payload.
        if r.bytes.len() > 6 && pick(r) && !done.swap(true, Ordering::SeqCst) {
            let at = 5 + (r.bytes.len() - 5) / 2;
            r.bytes[at] ^= 0x40;
        }
        Action::Forward
    }
}

#[test]
fn one_flipped_byte_anywhere_fails_the_migration_and_the_copy_never_runs() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    const PAGES: u64 = 2 << 20;
    const LATE: u64 = 8 << 20;
    // Once pages have flowed, the destination's records on the first connection are
    // `Synced` (pre-copy is over), `Ready` and `Running`.
    let late_reply = |n: usize| {
        let seen = AtomicUsize::new(0);
        move |r: &Record<'_>| {
            r.dir == Dir::Down
                && r.conn == 0
                && r.up_bytes >= LATE
                && seen.fetch_add(1, Ordering::SeqCst) == n
        }
    };
    // The VM state is the source's last record before it waits for `Ready`, after `Synced`.
    let state = {
        let synced = AtomicBool::new(false);
        move |r: &Record<'_>| {
            if r.dir == Dir::Down && r.conn == 0 && r.up_bytes >= LATE {
                synced.store(true, Ordering::SeqCst);
            }
            r.dir == Dir::Up && r.before_pause && synced.load(Ordering::SeqCst)
        }
    };
    let cases: Vec<(&str, Options, Box<tls_proxy::Rule>)> = vec![
        (
            "page data",
            Options::default(),
            Box::new(flip_once(|r| r.dir == Dir::Up && r.up_bytes >= PAGES)),
        ),
        (
            "the VM state (the last record before the source waits for Ready)",
            Options {
                hold_up: true,
                ..Default::default()
            },
            Box::new(flip_once(state)),
        ),
        (
            "the destination's Synced",
            Options::default(),
            Box::new(flip_once(late_reply(0))),
        ),
        (
            "the destination's Ready",
            Options::default(),
            Box::new(flip_once(late_reply(1))),
        ),
    ];
    for (what, opts, rule) in cases {
        let mut p = pair(32, 1, "");
        let proxy = tls_proxy::start(p.port, opts, rule);
        let stats = migrate_with(&p, p.hosts.params(url(proxy.port)));
        assert_eq!(
            stats["status"],
            "failed",
            "flipping a byte in {what}: {stats}\n{}",
            p.dst.stderr()
        );
        assert_source_runs(&mut p);
        assert_destination_failed(&mut p);
    }
}

#[test]
fn a_waiting_destination_outlasts_garbage_stalls_and_wrong_keys_then_takes_its_source() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let mut p = pair(16, 1, "");
    let addr = format!("127.0.0.1:{}", p.port);
    let dst_key = PublicKey::from_hex(&p.hosts.dst_pub).unwrap();
    let refusals = |p: &Pair| {
        p.dst
            .stderr()
            .matches("refused a migration connection")
            .count()
    };

    // A client that connects and says nothing does not hold up anyone else.
    let _stalled = TcpStream::connect(&addr).unwrap();
    // 64 bytes of garbage.
    let mut g = TcpStream::connect(&addr).unwrap();
    g.write_all(&[0x5a; 64]).unwrap();
    drop(g);
    // A stranger's key.
    let e = migrator::transport::open(&addr, &p.hosts.stranger(), dst_key, 1).unwrap_err();
    assert!(e.to_string().contains("refused this host"), "{e}");
    // The right key, then a hang-up before saying hello.
    let s = migrator::transport::connect(&addr, &p.hosts.src(), dst_key).unwrap();
    drop(s);
    let deadline = std::time::Instant::now() + LIMIT;
    while refusals(&p) < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", p.dst.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The source VMM with a stranger's identity is refused by the destination...
    let mut params = p.hosts.params(url(p.port));
    params.identity = p.hosts.stranger_id.clone();
    let stats = migrate_with(&p, params);
    assert_eq!(stats["status"], "failed", "{stats}");
    assert!(
        stats["error"]
            .as_str()
            .unwrap()
            .contains("refused this host"),
        "{stats}"
    );
    // ...and a source that expects another destination refuses this one.
    let mut params = p.hosts.params(url(p.port));
    params.peer = p.hosts.stranger_pub.clone();
    let stats = migrate_with(&p, params);
    assert_eq!(stats["status"], "failed", "{stats}");
    let error = stats["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "is not the expected host: it presented the key {}, but {} was expected",
            p.hosts.dst_pub, p.hosts.stranger_pub
        )),
        "{stats}"
    );
    assert_source_runs(&mut p);
    assert!(p.dst.is_running(), "{}", p.dst.stderr());

    // The right source still gets through.
    let stats = migrate(&p, p.port, 1);
    assert_eq!(stats["status"], "completed", "{stats}\n{}", p.dst.stderr());
    let after = p.dst.lines_for(Duration::from_millis(1000));
    let (g, errors) = gens(&after);
    assert!(g.is_some() && errors.iter().all(|&e| e == 0), "{after:?}");
    // The silent client got a plain timeout.
    p.dst.wait_stderr("timed out after 10 s", LIMIT);
}

#[test]
fn a_stalled_destination_times_out_the_source_plainly() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let mut p = pair(64, 1, "");
    // Past the first megabytes, the path stops moving bytes (and never drops them).
    let proxy = tls_proxy::start(p.port, Options::default(), |r| {
        if r.dir == Dir::Up && r.up_bytes >= 4 << 20 {
            std::thread::sleep(Duration::from_secs(90));
            return Action::Cut;
        }
        Action::Forward
    });
    let stats = migrate_with(&p, p.hosts.params(url(proxy.port)));
    assert_eq!(stats["status"], "failed", "{stats}");
    let error = stats["error"].as_str().unwrap();
    assert!(error.contains("timed out after 15 s"), "{stats}");
    assert!(!error.contains("os error"), "{stats}");
    // One write timeout, not two: a send that moved some bytes before it waited out the
    // timeout must not start another full wait (the bound leaves 10 s for a loaded machine).
    let total = stats["total-time-ms"].as_f64().unwrap_or(f64::MAX);
    assert!(total < 25_000.0, "{stats}");
    assert_source_runs(&mut p);
}

#[test]
fn a_destination_nobody_reaches_gives_up_at_its_deadline() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let hosts = Hosts::new();
    let port = free_port();
    let mut args = hosts.incoming_args(&url(port));
    args.extend(["--incoming-timeout".into(), "2".into()]);
    let out = run_vmm(&args, LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("no source completed a migration handshake within 2 s"),
        "{}",
        out.stderr
    );
}
