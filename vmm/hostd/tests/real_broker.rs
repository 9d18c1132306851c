//! hostd against a real broker (in this process, on SQLite, `--broker http://…`): admission
//! takes the real lease, a lease held elsewhere and an unregistered host are refused, and
//! reclaim redeems exactly what was paid and releases the lease, with the ledger balanced.

mod common;

use std::time::Duration;

use common::real_broker::RealBroker;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_payments_reclaim_and_redemption_on_the_real_broker() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    // Claims at most 4 links apart: reclaim has to redeem in steps.
    let broker = RealBroker::start(4).await;
    broker.register_tenant(1, 10_000).await;
    let mut bought = broker.buy(1, &kernel, IDLE, 200, 100).await;
    let token_id = bought.token().token_id;
    let hostd = Hostd::start_http(
        &broker.base,
        &["--grace-s", "1", "--redeem-interval-s", "3600"],
    );
    let me = hostd.identity.host_id;
    broker.register_host(me, hostd.identity.public_key()).await;

    let vm = hostd.admit(&bought, &kernel, IDLE).await.unwrap();
    assert_eq!(broker.token(&token_id).await.holder, Some(me));
    // The directory learns of the VM at once (capacity change), not at the next period.
    let fetch = || broker::directory::fetch(&broker.base);
    let mut advertised = None;
    for _ in 0..100 {
        let entries = fetch().await.unwrap();
        advertised = entries
            .into_iter()
            .find(|e| e.host.host_id == me)
            .and_then(|e| e.advert);
        if advertised
            .as_ref()
            .is_some_and(|a| a.free_memory_mib == 256 - 32)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let advert = advertised.expect("hostd advertised");
    assert_eq!(
        (advert.free_memory_mib, advert.url.as_str()),
        (224, hostd.url.as_str())
    );

    // 10 links (2 s), then nothing: reclaimed after the 1 s grace.
    let payment = bought.payer.pay(10).unwrap();
    assert_eq!(
        hostd.client.pay(&vm.vm_id, &payment).await.unwrap().index,
        10
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state = broker.token(&token_id).await;
        if state.holder.is_none() && state.highest_redeemed == 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled: {state:?}\n{}",
            hostd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hostd.client.list().await.unwrap().is_empty());
    assert_eq!(broker.host_balance(&me).await, 10 * PRICE);
    assert_eq!(broker.check().await, Vec::<String>::new());
    let metrics = hostd.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_redemptions_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_elsewhere_and_an_unregistered_host_are_refused() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let broker = RealBroker::start(64).await;
    broker.register_tenant(1, 10_000).await;
    let held = broker.buy(1, &kernel, IDLE, 1000, 10).await;
    let hostd = Hostd::start_http(&broker.base, &[]);

    // Not registered yet: the broker does not know the signer.
    let refused = hostd.admit(&held, &kernel, IDLE).await.unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(503), Some("host_not_registered")),
        "{refused}"
    );
    assert_eq!(hostd.vm_dirs(), 0);

    // Registered, but another host holds the token's lease.
    broker
        .register_host(hostd.identity.host_id, hostd.identity.public_key())
        .await;
    let other = hostd::identity::HostIdentity::from_key(
        token::SigningKey::from_bytes(&[0x77; 32]),
        std::path::PathBuf::new(),
    );
    broker
        .register_host(other.host_id, other.public_key())
        .await;
    let _: laundromat_api::types::TokenState = broker
        .client(other.key.clone())
        .post(
            &laundromat_api::paths::lease(&held.token().token_id, "acquire"),
            &laundromat_api::types::Empty {},
            &broker::client::new_idempotency_key(),
        )
        .await
        .unwrap();
    let refused = hostd.admit(&held, &kernel, IDLE).await.unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(409), Some("lease_held")),
        "{refused}"
    );
    assert!(
        refused.to_string().contains(&other.host_id.to_string()),
        "{refused}"
    );
    assert_eq!(hostd.vm_dirs(), 0);
    assert_eq!(
        broker.token(&held.token().token_id).await.holder,
        Some(other.host_id)
    );
}
