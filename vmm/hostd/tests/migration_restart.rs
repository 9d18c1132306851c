//! A source hostd killed (-9) while an outgoing migration runs, then restarted: the VM ends
//! up running exactly once, on the host that holds its lease, which takes its next payment.
//!
//! hostd dies during pre-copy, before it handed the lease over. Its `vmm` carries the
//! pre-copy on to the hold before `Commit`, where no decision comes: at the end of the hold
//! (20 s) it cancels, tells the destination, and resumes the VM, which the restarted hostd
//! has re-adopted meanwhile. The destination's incoming `vmm` ends and is cleaned up.

mod common;

use std::time::{Duration, Instant};

use common::*;

const DIRTY: &str = "workload=dirty wss=4 report-ms=100";

/// Where the VM runs now: each host's view, if it lists the VM.
async fn views(hosts: &[Hostd], vm: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for host in hosts {
        out.push(host.client.vm(vm).await.ok().map(|v| v.state));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_hostd_killed_mid_migration_leaves_the_vm_running_once() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let mut bought = TokenSpec::new(&kernel, DIRTY).buy();
    let mut hosts = cluster(2, &["--grace-s", "600"], &[&bought]);
    let vm = hosts[0].admit(&bought, &kernel, DIRTY).await.unwrap().vm_id;
    for _ in 0..3 {
        let payment = bought.payer.pay(1).unwrap();
        hosts[0].client.pay(&vm, &payment).await.unwrap();
    }

    // The migration starts; hostd dies as soon as the destination prepared.
    let (seen, mut started) = tokio::sync::mpsc::unbounded_channel();
    let migration = {
        let (client, vm, to, key) = (
            hosts[0].client.clone(),
            vm.clone(),
            hosts[1].identity.host_id,
            bought.tenant.clone(),
        );
        tokio::spawn(async move {
            let mut on_line = |line: &serde_json::Value| {
                let _ = seen.send(line["event"].as_str().unwrap_or("").to_owned());
            };
            client.migrate(&vm, to, &key, &mut on_line).await
        })
    };
    let first = tokio::time::timeout(Duration::from_secs(30), started.recv())
        .await
        .expect("the migration did not start");
    assert_eq!(first.as_deref(), Some("started"));
    hosts[0].kill9();
    let _ = migration.await;
    hosts[0].spawn();

    // However far the migration got, it settles: one vmm in all, one host running the VM.
    let deadline = Instant::now() + Duration::from_secs(60);
    let runs_at = loop {
        let states = views(&hosts, &vm).await;
        let processes = hosts[0].vmm_processes().len() + hosts[1].vmm_processes().len();
        let running: Vec<usize> = (0..2)
            .filter(|&i| states[i].as_deref() == Some("running"))
            .collect();
        if processes == 1 && running.len() == 1 && states.iter().flatten().count() == 1 {
            break running[0];
        }
        assert!(
            Instant::now() < deadline,
            "not settled: states {states:?}, {processes} vmm processes\na:\n{}\nb:\n{}",
            hosts[0].log(),
            hosts[1].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        runs_at, 0,
        "hostd died before the handover: the VM stays at its source"
    );
    assert!(
        eventually(Duration::from_secs(30), || hosts[1].vm_dirs() == 0).await,
        "the destination kept the incoming VM's files"
    );
    let host = &hosts[runs_at];
    let broker = host.broker();
    let token = bought.token().token_id;
    assert_eq!(
        broker.leases.get(&token),
        Some(&host.identity.host_id),
        "the VM runs on host {runs_at}, the lease is elsewhere"
    );
    let view = host.client.vm(&vm).await.unwrap();
    assert_eq!(view.paid_index, 3, "the payment state moved with the VM");
    let payment = bought.payer.pay(1).unwrap();
    let receipt = host.client.pay(&vm, &payment).await.unwrap();
    assert_eq!(receipt.index, 4);
}
