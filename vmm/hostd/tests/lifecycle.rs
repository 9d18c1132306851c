//! Who may stop a VM, and what stopping frees: reclaim after paid time and grace, and stop
//! by the tenant, each leave no process, file or lease behind, and redeem what was paid.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_tenant_can_stop_or_read_its_vm() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let mut bought = TokenSpec::new(&kernel, IDLE).buy();
    let hostd = Hostd::start(&[], &[&bought], &[]);
    let vm = hostd.admit(&bought, &kernel, IDLE).await.unwrap();
    let pid = vm.pid.unwrap();
    hostd
        .client
        .pay(&vm.vm_id, &bought.payer.pay(2).unwrap())
        .await
        .unwrap();

    let intruder = tenant(2);
    let refused = hostd.client.stop(&vm.vm_id, &intruder).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.status()),
        (Some("not_the_tenant"), Some(403))
    );
    let refused = hostd
        .client
        .console(&vm.vm_id, 0, &intruder)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("not_the_tenant"));
    let unsigned = reqwest::Client::new()
        .delete(format!("{}/v1/vms/{}", hostd.url, vm.vm_id))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert!(process_alive(pid));

    // The tenant reads its console (the guest prints a report every 100 ms) and stops it.
    let mut console = Vec::new();
    let mut from = 0;
    assert!(
        eventually(Duration::from_secs(30), || {
            let (bytes, next) =
                futures_block(hostd.client.console(&vm.vm_id, from, &bought.tenant)).unwrap();
            console.extend(bytes);
            from = next;
            String::from_utf8_lossy(&console).contains("t=")
        })
        .await,
        "console: {}",
        String::from_utf8_lossy(&console)
    );
    let stopped = hostd.client.stop(&vm.vm_id, &bought.tenant).await.unwrap();
    assert_eq!(stopped.paid_index, 2);
    assert!(!process_alive(pid));
    assert_eq!(hostd.vm_dirs(), 0);
    let broker = hostd.broker();
    assert!(broker.leases.is_empty());
    assert_eq!(
        broker.credits.get(&hostd.identity.host_id),
        Some(&(2 * PRICE))
    );
    assert_eq!(
        hostd.client.vm(&vm.vm_id).await.unwrap_err().code(),
        Some("vm_not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_vms_are_reclaimed_and_freed() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let spec = TokenSpec {
        link_period_ms: 1000,
        ..TokenSpec::new(&kernel, IDLE)
    };
    let mut paying = spec.buy();
    let unpaid = spec.buy();
    let hostd = Hostd::start(&["--grace-s", "1"], &[&paying, &unpaid], &[]);
    let paid_vm = hostd.admit(&paying, &kernel, IDLE).await.unwrap();
    let unpaid_vm = hostd.admit(&unpaid, &kernel, IDLE).await.unwrap();
    // Two links buy two seconds; then payment stops.
    hostd
        .client
        .pay(&paid_vm.vm_id, &paying.payer.pay(2).unwrap())
        .await
        .unwrap();

    // The unpaid VM lives on grace only: gone after about a second.
    // Gone means: directory removed and lease released (settlement comes last).
    let gone = |id: &str, bought: &Bought| {
        !hostd.data_dir().join("vms").join(id).exists()
            && !hostd.broker().leases.contains_key(&bought.token().token_id)
    };
    assert!(
        eventually(Duration::from_secs(20), || gone(&unpaid_vm.vm_id, &unpaid)).await,
        "{}",
        hostd.log()
    );
    assert!(!process_alive(unpaid_vm.pid.unwrap()));
    assert!(
        process_alive(paid_vm.pid.unwrap()),
        "the paid VM must still run"
    );
    assert!(hostd.broker().leases.contains_key(&paying.token().token_id));

    // The paid one goes after its two seconds and the grace, and its links are redeemed.
    assert!(
        eventually(Duration::from_secs(30), || gone(&paid_vm.vm_id, &paying)).await,
        "{}",
        hostd.log()
    );
    assert!(!process_alive(paid_vm.pid.unwrap()));
    assert_eq!(hostd.vm_dirs(), 0);
    assert!(processes_under(&hostd.data_dir().join("vms")).is_empty());
    // Settlement follows the freeing: the pending claim goes once the broker has it.
    let pending = hostd.data_dir().join("pending");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_dir(&pending)
            .unwrap()
            .count()
            == 0
            && hostd.broker().leases.is_empty())
        .await
    );
    let broker = hostd.broker();
    assert_eq!(
        broker.credits.get(&hostd.identity.host_id),
        Some(&(2 * PRICE))
    );
    assert_eq!(broker.redeemed.get(&paying.token().token_id), Some(&2));
    let metrics = hostd.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_vms_reclaimed_total{reason=\"unpaid\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hostd_redemptions_total{outcome=\"ok\"} 1\n"),
        "{metrics}"
    );
    assert!(hostd.log().contains("vm_ended"));
    assert!(hostd.client.list().await.unwrap().is_empty());
}
