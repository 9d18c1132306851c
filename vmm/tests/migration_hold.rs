//! A migration held before `Commit` (`hold_before_commit_s`): the orchestrator's `commit`
//! switches the VM over; its `cancel`, or no answer within the hold, leaves the source running
//! as it was and the destination never runs the guest.
mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::pair::*;
use common::*;
use vmm::api::{client, protocol::Request};

/// Starts a held migration of `p`'s VM on its own thread; returns the final statistics'
/// receiver once the `ready_to_commit` event has arrived.
fn held(p: &Pair, hold_s: u64) -> std::thread::JoinHandle<serde_json::Value> {
    let mut params = p.hosts.params(url(p.port));
    params.hold_before_commit_s = Some(hold_s);
    let sock = p.src_sock.clone();
    let (tx, ready) = mpsc::channel();
    let migration = std::thread::spawn(move || {
        client::call_streaming(&sock, &Request::Migrate(params), LIMIT, &mut |event| {
            if event["event"] == "ready_to_commit" {
                let _ = tx.send(event.clone());
            }
        })
        .expect("migrate call")
    });
    let event = ready
        .recv_timeout(LIMIT)
        .unwrap_or_else(|e| panic!("no ready_to_commit ({e}); src:\n{}", p.src.stderr()));
    assert!(event["downtime_ms"].as_f64().unwrap() >= 0.0, "{event}");
    // Held: the guest is paused here, and the destination has it all but does not run it.
    assert_eq!(status(&p.src_sock)["state"], "paused");
    let dst = status(&p.dst_sock);
    assert_eq!(
        (&dst["state"], &dst["phase"]),
        (&"incoming".into(), &"ready".into())
    );
    migration
}

fn call(sock: &std::path::Path, request: Request) -> serde_json::Value {
    client::call(sock, &request, Duration::from_secs(10)).unwrap()
}

/// The source keeps its VM running and its guest making progress without errors; the
/// destination gave up without running it.
fn source_carries_on(p: &mut Pair, stats: &serde_json::Value) {
    assert_eq!(stats["status"], "cancelled", "{stats}");
    assert_eq!(stats["ok"], false);
    assert_eq!(status(&p.src_sock)["state"], "running");
    let _ = p.src.lines.try_iter().count();
    let (g, errors) = gens(&p.src.lines_for(Duration::from_millis(800)));
    assert!(g.is_some(), "the source guest stopped printing");
    assert!(errors.iter().all(|&e| e == 0));
    assert_ne!(p.dst.wait_exit(LIMIT), Some(0), "{}", p.dst.stderr());
    assert!(
        p.dst.lines.try_iter().all(|l| field(&l, "gen").is_none()),
        "the destination ran the guest"
    );
}

#[test]
fn a_held_migration_switches_over_on_commit() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let mut p = pair(8, 1, "");
    let migration = held(&p, 20);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(call(&p.src_sock, Request::Commit {})["ok"], true);
    let stats = migration.join().unwrap();
    assert_eq!(stats["status"], "completed", "{stats}\n{}", p.dst.stderr());
    let hold_ms = stats["downtime-parts"]["hold-ms"].as_f64().unwrap();
    assert!(hold_ms >= 200.0, "{stats}");
    assert!(stats["downtime-ms"].as_f64().unwrap() >= hold_ms, "{stats}");
    assert_eq!(p.src.wait_exit(LIMIT), Some(0));
    assert_eq!(status(&p.dst_sock)["state"], "running");
    let (g, errors) = gens(&p.dst.lines_for(Duration::from_millis(800)));
    assert!(g.is_some(), "the destination guest prints nothing");
    assert!(errors.iter().all(|&e| e == 0));
    call(&p.dst_sock, Request::Shutdown {});
    assert_eq!(p.dst.wait_exit(LIMIT), Some(0));
}

#[test]
fn a_held_migration_cancelled_leaves_the_source_running_and_late_commits_are_refused() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let mut p = pair(8, 1, "");
    let migration = held(&p, 20);
    let cancel = Request::Cancel {
        reason: Some("lease handover refused".into()),
    };
    assert_eq!(call(&p.src_sock, cancel)["ok"], true);
    let stats = migration.join().unwrap();
    assert!(
        stats["error"]
            .as_str()
            .is_some_and(|e| e.contains("lease handover refused")),
        "{stats}"
    );
    let late = call(&p.src_sock, Request::Commit {});
    assert_eq!(late["ok"], false);
    assert!(late["error"]
        .as_str()
        .unwrap()
        .contains("no migration is waiting"));
    source_carries_on(&mut p, &stats);
}

#[test]
fn a_held_migration_without_an_answer_is_cancelled_at_the_end_of_its_hold() {
    let _serial = serial();
    if !kvm_available() {
        return;
    }
    let mut p = pair(8, 1, "");
    let migration = held(&p, 3);
    let stats = migration.join().unwrap();
    assert!(
        stats["error"]
            .as_str()
            .is_some_and(|e| e.contains("no commit within")),
        "{stats}"
    );
    source_carries_on(&mut p, &stats);
}
