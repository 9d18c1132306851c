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

/// `laundromat vm inject --host auto`: of three registered hosts advertising in the broker's
/// directory, one asks more than the token pays and one lacks the memory; the VM lands on the
/// one that fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_auto_picks_the_cheapest_host_that_fits_the_token() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let broker = RealBroker::start(64).await;
    broker.register_tenant(1, 10_000).await;
    let bought = broker.buy(1, &kernel, IDLE, 60_000, 10).await;
    let every_second = ["--advertise-interval-s", "1"];
    let dear = Hostd::start_http(
        &broker.base,
        &[&every_second[..], &["--min-price", "5"]].concat(),
    );
    let fits = Hostd::start_http(
        &broker.base,
        &[&every_second[..], &["--min-price", "2"]].concat(),
    );
    let small = Hostd::start_http(
        &broker.base,
        &[&every_second[..], &["--min-price", "1", "--mem-mib", "16"]].concat(),
    );
    for host in [&dear, &fits, &small] {
        broker
            .register_host(host.identity.host_id, host.identity.public_key())
            .await;
    }
    let mut advertised = false;
    for _ in 0..300 {
        let entries = broker::directory::fetch(&broker.base).await.unwrap();
        if entries
            .iter()
            .filter(|e| e.advert.is_some() && !e.stale)
            .count()
            == 3
        {
            advertised = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        advertised,
        "the three hosts did not advertise:\n{}",
        fits.log()
    );

    // The tenant's config dir, as `keygen` and `token buy` leave it.
    let config = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(config.path().join("tokens")).unwrap();
    std::fs::write(
        config.path().join("tenant.key"),
        token::hex::encode(bought.tenant.as_bytes()),
    )
    .unwrap();
    let token_file = config
        .path()
        .join("tokens")
        .join(format!("{}.json", bought.token().token_id));
    let file = serde_json::json!({ "token": bought.signed, "payer": bought.payer });
    std::fs::write(&token_file, serde_json::to_vec(&file).unwrap()).unwrap();
    let kernel_file = config.path().join("bench.elf");
    std::fs::write(&kernel_file, &kernel).unwrap();

    let output = std::process::Command::new(sibling_bin("laundromat", "broker"))
        .arg("--config-dir")
        .arg(config.path())
        .args([
            "--broker",
            &broker.base,
            "--json",
            "vm",
            "inject",
            "--host",
            "auto",
        ])
        .arg("--token")
        .arg(&token_file)
        .arg("--kernel")
        .arg(&kernel_file)
        .args(["--cmdline", IDLE])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "inject --host auto: {stderr}");
    let injected: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        injected["host_id"],
        fits.identity.host_id.to_string(),
        "{injected}\n{stderr}"
    );
    assert_eq!(injected["host"], fits.url.as_str());
    // Only the host that fits was tried: the small one was not asked and turned away.
    assert_eq!(stderr.matches("trying host").count(), 1, "{stderr}");
    assert_eq!(fits.client.list().await.unwrap().len(), 1);
    for other in [&dear, &small] {
        assert!(other.client.list().await.unwrap().is_empty());
    }
    assert_eq!(
        broker.token(&bought.token().token_id).await.holder,
        Some(fits.identity.host_id)
    );
}

/// The periodic settlement redeems the claims of every running VM together, through the
/// broker's batch endpoint, while the VMs run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_vms_are_settled_together_in_batches() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let broker = RealBroker::start(1 << 16).await;
    broker.register_tenant(1, 10_000).await;
    // A minute per link: nothing is reclaimed during the test.
    let mut first = broker.buy(1, &kernel, IDLE, 60_000, 100).await;
    let mut second = broker.buy(1, &kernel, IDLE, 60_000, 100).await;
    let hostd = Hostd::start_http(&broker.base, &["--redeem-interval-s", "1"]);
    let me = hostd.identity.host_id;
    broker.register_host(me, hostd.identity.public_key()).await;
    let vm_first = hostd.admit(&first, &kernel, IDLE).await.unwrap();
    let vm_second = hostd.admit(&second, &kernel, IDLE).await.unwrap();
    let payment = first.payer.pay(3).unwrap();
    hostd.client.pay(&vm_first.vm_id, &payment).await.unwrap();
    let payment = second.payer.pay(5).unwrap();
    hostd.client.pay(&vm_second.vm_id, &payment).await.unwrap();
    let ids = [first.token().token_id, second.token().token_id];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (broker.token(&ids[0]).await, broker.token(&ids[1]).await);
        if (a.highest_redeemed, b.highest_redeemed) == (3, 5) {
            assert_eq!((a.holder, b.holder), (Some(me), Some(me)), "still running");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not redeemed: {a:?} {b:?}\n{}",
            hostd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.host_balance(&me).await, 8 * PRICE);
    let metrics = reqwest::get(format!("{}/metrics", broker.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("broker_requests_total{op=\"redeem_batch\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("op=\"redeem\","),
        "single redemptions: {metrics}"
    );
    assert_eq!(broker.check().await, Vec::<String>::new());
}
