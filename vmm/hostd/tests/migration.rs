//! Migration between two hostds (loopback, one shared file broker, small bench guests):
//! payments across the switchover, a cancel before commit, who may migrate, drain.

mod common;

use std::time::Duration;

use common::*;
use hostd::client::{ClientError, HostdClient};
use token::{Payment, SigningKey};

const DIRTY: &str = "workload=dirty wss=4 report-ms=100";

/// Pays `payment` where the VM is, following "moved, retry at host B" and waiting out the
/// switchover; returns the index of the host (in `hosts`) that accepted it.
async fn pay_following(
    hosts: &[&HostdClient],
    at: &mut usize,
    vm: &str,
    payment: &Payment,
) -> usize {
    for _ in 0..600 {
        match hosts[*at].pay(vm, payment).await {
            Ok(receipt) => {
                assert_eq!(receipt.index, payment.index);
                return *at;
            }
            Err(e) if e.code() == Some("vm_moved") => *at = (*at + 1) % hosts.len(),
            // The destination before it runs the VM, or the source during the switchover.
            Err(e) if matches!(e.code(), Some("vm_not_running" | "vm_not_found")) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("payment {} refused: {e}", payment.index),
        }
    }
    panic!("payment {} was never accepted", payment.index);
}

fn result(lines: &[serde_json::Value]) -> &serde_json::Value {
    lines
        .iter()
        .rev()
        .find(|l| l["event"] == "result")
        .unwrap_or_else(|| panic!("no result line: {lines:?}"))
}

fn migrate_lines(
    client: HostdClient,
    vm: String,
    to: token::HostId,
    key: SigningKey,
) -> tokio::task::JoinHandle<Result<Vec<serde_json::Value>, ClientError>> {
    tokio::spawn(async move { client.migrate(&vm, to, &key, &mut |_| {}).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_migrates_while_paying_and_each_host_is_credited_for_its_own_links() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let mut bought = TokenSpec::new(&kernel, DIRTY).buy();
    let hosts = cluster(2, &[], &[&bought]);
    let (a, b) = (&hosts[0], &hosts[1]);
    let vm = a.admit(&bought, &kernel, DIRTY).await.unwrap().vm_id;
    let clients = [&a.client, &b.client];
    let mut at = 0;
    let mut accepted = [0u64; 2];
    let mut last_at = [0u64; 2];
    for _ in 0..3 {
        let payment = bought.payer.pay(1).unwrap();
        let host = pay_following(&clients, &mut at, &vm, &payment).await;
        accepted[host] += 1;
        last_at[host] = payment.index;
    }

    // The tenant moves it to b while it keeps paying, one link at a time.
    let migration = migrate_lines(
        a.client.clone(),
        vm.clone(),
        b.identity.host_id,
        bought.tenant.clone(),
    );
    while !migration.is_finished() {
        let payment = bought.payer.pay(1).unwrap();
        let host = pay_following(&clients, &mut at, &vm, &payment).await;
        accepted[host] += 1;
        last_at[host] = payment.index;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let lines = migration.await.unwrap().unwrap();
    let outcome = result(&lines);
    assert_eq!(
        outcome["status"],
        "completed",
        "{lines:?}\na:\n{}\nb:\n{}",
        a.log(),
        b.log()
    );
    assert!(lines.iter().any(|l| l["event"] == "progress"), "{lines:?}");
    assert!(outcome["stats"]["downtime-ms"].as_f64().unwrap() > 0.0);
    let metrics = a.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_migration_downtime_seconds_count 1\n"),
        "{metrics}"
    );
    for _ in 0..3 {
        let payment = bought.payer.pay(1).unwrap();
        let host = pay_following(&clients, &mut at, &vm, &payment).await;
        accepted[host] += 1;
        last_at[host] = payment.index;
    }
    assert_eq!(at, 1, "later payments go to b");
    let total = accepted[0] + accepted[1];
    // a accepted links 1..=last_at[0], b the ones after: none lost, none twice.
    assert_eq!(last_at[0], accepted[0]);
    assert_eq!(last_at[1], total);

    // b runs it, paid up to the last link; a kept nothing and answers "moved".
    let view = b.client.vm(&vm).await.unwrap();
    assert_eq!((view.state.as_str(), view.paid_index), ("running", total));
    assert_eq!(view.redeemed_index, last_at[0]);
    let late = a
        .client
        .pay(&vm, &bought.payer.pay(1).unwrap())
        .await
        .unwrap_err();
    assert_eq!(late.code(), Some("vm_moved"), "{late}");
    assert!(a.client.list().await.unwrap().is_empty());
    assert!(eventually(Duration::from_secs(10), || a.vm_dirs() == 0).await);
    assert!(a.vmm_processes().is_empty());

    // The guest carries on at b without errors.
    let mut console = Vec::new();
    let mut from = 0;
    for _ in 0..100 {
        let (bytes, next) = b.client.console(&vm, from, &bought.tenant).await.unwrap();
        console.extend(bytes);
        from = next;
        if String::from_utf8_lossy(&console).matches("errors=").count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = String::from_utf8_lossy(&console);
    assert!(
        text.contains("errors=0") && !text.contains("errors=1"),
        "{text}"
    );

    // The lease moved with the final claim; a was paid for exactly its links, b for its own
    // when the tenant stops the VM there.
    let broker = b.broker();
    assert_eq!(
        broker.leases.get(&bought.token().token_id),
        Some(&b.identity.host_id)
    );
    assert!(broker.handovers.is_empty());
    assert_eq!(
        broker.credits.get(&a.identity.host_id),
        Some(&(PRICE * accepted[0]))
    );
    b.client.stop(&vm, &bought.tenant).await.unwrap();
    let broker = b.broker();
    assert_eq!(
        broker.credits.get(&b.identity.host_id),
        Some(&(PRICE * accepted[1]))
    );
    assert_eq!(broker.redeemed.get(&bought.token().token_id), Some(&total));
    let metrics = a.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_migrations_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cancelled_before_commit_leaves_the_source_running_and_paid() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let mut bought = TokenSpec::new(&kernel, DIRTY).buy();
    let hosts = cluster(2, &[], &[&bought]);
    let (a, b) = (&hosts[0], &hosts[1]);
    let vm = a.admit(&bought, &kernel, DIRTY).await.unwrap().vm_id;
    a.client
        .pay(&vm, &bought.payer.pay(2).unwrap())
        .await
        .unwrap();
    // The broker refuses the handover (it says a third host holds the lease): the source
    // cancels at the hold, before Commit.
    let token_id = bought.token().token_id;
    a.update_broker(|state| {
        state.leases.insert(token_id, token::HostId([0x55; 16]));
    });
    let lines = a
        .client
        .migrate(&vm, b.identity.host_id, &bought.tenant, &mut |_| {})
        .await
        .unwrap();
    let outcome = result(&lines);
    assert_eq!(outcome["status"], "cancelled", "{lines:?}\n{}", a.log());
    let switchover = lines.iter().find(|l| l["event"] == "switchover").unwrap();
    assert!(
        switchover["error"]
            .as_str()
            .unwrap()
            .contains("lease handover"),
        "{switchover}"
    );
    // Give the lease back; a goes on running, paid, and accepting links.
    a.update_broker(|state| {
        state.leases.insert(token_id, a.identity.host_id);
    });
    let view = a.client.vm(&vm).await.unwrap();
    assert_eq!((view.state.as_str(), view.paid_index), ("running", 2));
    let receipt = a
        .client
        .pay(&vm, &bought.payer.pay(1).unwrap())
        .await
        .unwrap();
    assert_eq!(receipt.index, 3);
    let (_, before) = a.client.console(&vm, 0, &bought.tenant).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, next) = futures_block(a.client.console(&vm, 0, &bought.tenant)).unwrap();
            next > before
        })
        .await,
        "the source guest stopped"
    );
    // b ran nothing and kept nothing.
    assert!(
        eventually(Duration::from_secs(20), || b.vm_dirs() == 0).await,
        "{}",
        b.log()
    );
    assert!(b.client.list().await.unwrap().is_empty());
    assert!(b.vmm_processes().is_empty());
    assert!(a.broker().handovers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_tenant_or_operator_migrates_and_only_registered_hosts_push_migrations() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let bought = TokenSpec::new(&kernel, IDLE).buy();
    let hosts = cluster(2, &[], &[&bought]);
    let (a, b) = (&hosts[0], &hosts[1]);
    let vm = a.admit(&bought, &kernel, IDLE).await.unwrap().vm_id;

    // Tenant B cannot migrate tenant A's VM; an unsigned request neither.
    let refused = a
        .client
        .migrate(&vm, b.identity.host_id, &tenant(2), &mut |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.status()),
        (Some("not_the_tenant"), Some(403))
    );
    let unsigned = reqwest::Client::new()
        .post(format!("{}/v1/vms/{vm}/migrate", a.url))
        .body(format!("{{\"to\":\"{}\"}}", b.identity.host_id))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(a.client.vm(&vm).await.unwrap().state, "running");

    // A host the broker does not know cannot push a VM into b, nor can a registered host's id
    // with another key.
    let prepare = |key: &SigningKey, host: token::HostId| {
        let body = serde_json::to_vec(&serde_json::json!({
            "migration_id": "00".repeat(16),
            "vm": {"vm_id": "11".repeat(16)},
        }))
        .unwrap();
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/migrations", b.url))
            .header(hostd::peer::HOST_HEADER, host.to_string());
        for (name, value) in hostd::auth::sign(key, "POST", "/v1/migrations", &body, now_s()) {
            request = request.header(name, value);
        }
        request.body(body).send()
    };
    let intruder = SigningKey::from_bytes(&[0x66; 32]);
    let intruder_id = hostd::identity::host_id_for(&intruder.verifying_key());
    let answer = prepare(&intruder, intruder_id).await.unwrap();
    assert_eq!(answer.status(), 403);
    assert!(answer.text().await.unwrap().contains("host_not_registered"));
    let answer = prepare(&intruder, a.identity.host_id).await.unwrap();
    assert_eq!(answer.status(), 403);
    assert!(answer.text().await.unwrap().contains("not_the_host"));
    assert!(b.client.list().await.unwrap().is_empty());
    assert!(b.vmm_processes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_vm_to_the_hosts_with_room() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let mut tokens: Vec<_> = (1..=3)
        .map(|n| {
            let mut spec = TokenSpec::new(&kernel, IDLE);
            spec.tenant = n;
            spec.buy()
        })
        .collect();
    let refs: Vec<&Bought> = tokens.iter().collect();
    let hosts = cluster(3, &[], &refs);
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
    let mut vms = Vec::new();
    for bought in &mut tokens {
        let vm = a.admit(bought, &kernel, IDLE).await.unwrap().vm_id;
        a.client
            .pay(&vm, &bought.payer.pay(1).unwrap())
            .await
            .unwrap();
        vms.push(vm);
    }
    // b and c are in the directory once they advertised.
    assert!(
        eventually(Duration::from_secs(10), || a.broker().adverts.len() == 3).await,
        "hosts did not advertise"
    );
    let refused = a.client.drain(&tenant(1), &mut |_| {}).await.unwrap_err();
    assert_eq!(refused.code(), Some("not_the_operator"));
    let lines = a.client.drain(&operator(), &mut |_| {}).await.unwrap();
    let summary = lines.last().unwrap();
    assert_eq!(summary["event"], "drained", "{lines:?}\n{}", a.log());
    assert_eq!(
        (summary["moved"].as_u64(), summary["left"].as_u64()),
        (Some(3), Some(0)),
        "{lines:?}"
    );
    // Each destination runs its VMs once its `vmm` reports the switchover (polled).
    let all_running = |client: &HostdClient| {
        futures_block(client.list())
            .unwrap()
            .iter()
            .all(|v| v.state == "running")
    };
    assert!(
        eventually(Duration::from_secs(10), || all_running(&b.client)
            && all_running(&c.client))
        .await
    );
    let on_b = b.client.list().await.unwrap();
    let on_c = c.client.list().await.unwrap();
    // Spread by free capacity: both got some.
    assert!(
        !on_b.is_empty() && !on_c.is_empty(),
        "b {on_b:?} c {on_c:?}"
    );
    let mut moved: Vec<_> = on_b.iter().chain(&on_c).map(|v| v.vm_id.clone()).collect();
    moved.sort();
    vms.sort();
    assert_eq!(moved, vms);
    assert!(on_b
        .iter()
        .chain(&on_c)
        .all(|v| v.state == "running" && v.paid_index == 1));
    assert!(eventually(Duration::from_secs(10), || a.vm_dirs() == 0).await);
    assert!(a.vmm_processes().is_empty());
}
