//! hostd's HTTP broker client against a real broker (in this process, on SQLite): leases,
//! the two-phase handover, redemption in steps, refusals, the host directory. No KVM.

mod common;

use common::real_broker::RealBroker;
use common::*;
use hostd::broker::http::{HttpBroker, Policy};
use hostd::broker::{BrokerClient, BrokerError, CapacityAdvert, Handover};
use hostd::identity::HostIdentity;
use laundromat_api::paths;
use laundromat_api::types::Advert;
use token::{Claim, SignedClaim, SigningKey, Verifier};

fn host(seed: u8, broker: &RealBroker) -> (HostIdentity, HttpBroker) {
    let identity = HostIdentity::from_key(
        SigningKey::from_bytes(&[seed; 32]),
        std::path::PathBuf::new(),
    );
    let client = HttpBroker::new(
        &broker.base,
        identity.key.clone(),
        identity.host_id,
        Policy::default(),
    )
    .unwrap();
    (identity, client)
}

/// The host's claim for everything `verifier` accepted.
fn claim(identity: &HostIdentity, verifier: &Verifier) -> SignedClaim {
    Claim::from_verifier(identity.host_id, verifier).sign(&identity.key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_handover_and_stepped_redemption_on_the_real_broker() {
    let broker = RealBroker::start(4).await;
    let (a, a_client) = host(0x61, &broker);
    let (b, b_client) = host(0x62, &broker);
    let (unregistered, stranger) = host(0x63, &broker);
    broker.register_host(a.host_id, a.public_key()).await;
    broker.register_host(b.host_id, b.public_key()).await;
    broker.register_tenant(1, 10_000).await;
    let mut bought = broker.buy(1, b"kernel", "", 1000, 100).await;
    let token_id = bought.token().token_id;

    // The broker's key is the one that signed the token.
    let keys = a_client.broker_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key_id, bought.token().broker_key_id);
    assert!(a_client.host(b.host_id).await.unwrap().is_some());
    assert_eq!(a_client.host(unregistered.host_id).await.unwrap(), None);

    // One holder at a time; an unregistered host is refused.
    a_client.acquire_lease(token_id, a.host_id).await.unwrap();
    a_client.acquire_lease(token_id, a.host_id).await.unwrap();
    assert_eq!(
        b_client.acquire_lease(token_id, b.host_id).await,
        Err(BrokerError::LeaseHeld {
            token_id,
            holder: a.host_id
        })
    );
    assert_eq!(
        stranger.acquire_lease(token_id, unregistered.host_id).await,
        Err(BrokerError::UnknownHost(unregistered.host_id))
    );
    assert_eq!(
        b_client.release_lease(token_id, b.host_id).await,
        Err(BrokerError::NotLeaseHolder { token_id })
    );

    // 10 links paid to A, redeemed in steps of at most 4, credited exactly once.
    let mut verifier = Verifier::new(bought.token(), 1000).unwrap();
    verifier
        .accept_payment(&bought.payer.pay(10).unwrap())
        .unwrap();
    let first = a_client.redeem(claim(&a, &verifier)).await.unwrap();
    assert_eq!((first.credit, first.highest_redeemed), (10 * PRICE, 10));
    let again = a_client.redeem(claim(&a, &verifier)).await.unwrap();
    assert_eq!(again.credit, 0);
    assert_eq!(broker.host_balance(&a.host_id).await, 10 * PRICE);

    // 9 more links, then a handover whose final claim is too far: A is paid in steps.
    verifier
        .accept_payment(&bought.payer.pay(9).unwrap())
        .unwrap();
    let handover = Handover {
        token_id,
        from: a.host_id,
        to: b.host_id,
        final_claim: claim(&a, &verifier),
    };
    let prepared = a_client.hand_over_lease(handover.clone()).await.unwrap();
    assert_eq!(prepared.holder, a.host_id);
    assert_eq!(broker.token(&token_id).await.handover_to, Some(b.host_id));
    // Frozen while pending; only the destination confirms.
    assert_eq!(
        a_client.release_lease(token_id, a.host_id).await,
        Err(BrokerError::HandoverPending { token_id })
    );
    assert_eq!(
        a_client.confirm_handover(token_id, a.host_id).await,
        Err(BrokerError::NoHandover { token_id })
    );
    // Cancelled, the lease stays with A; prepared again and confirmed, it is B's.
    let cancelled = b_client.cancel_handover(token_id, b.host_id).await.unwrap();
    assert_eq!(cancelled.holder, a.host_id);
    a_client.hand_over_lease(handover).await.unwrap();
    let moved = b_client
        .confirm_handover(token_id, b.host_id)
        .await
        .unwrap();
    assert_eq!(moved.holder, b.host_id);
    assert_eq!(broker.host_balance(&a.host_id).await, 19 * PRICE);

    // B is paid from where A's range ended; A's claims earn nothing more.
    let mut b_verifier = Verifier::restore(bought.token(), verifier.state().clone(), 1024).unwrap();
    b_verifier
        .accept_payment(&bought.payer.pay(3).unwrap())
        .unwrap();
    assert_eq!(
        b_client
            .redeem(claim(&b, &b_verifier))
            .await
            .unwrap()
            .credit,
        3 * PRICE
    );
    b_client.release_lease(token_id, b.host_id).await.unwrap();
    assert_eq!(broker.token(&token_id).await.holder, None);
    assert_eq!(broker.host_balance(&b.host_id).await, 3 * PRICE);
    assert_eq!(broker.check().await, Vec::<String>::new());
}

/// A settlement tick's claims in one batch: each answered on its own; one too far for the
/// broker's claim distance is redeemed in steps; one on a lease this host never held is
/// refused alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_claims_are_redeemed_in_one_batch_on_the_real_broker() {
    let broker = RealBroker::start(4).await;
    let (a, a_client) = host(0x81, &broker);
    let (b, b_client) = host(0x82, &broker);
    broker.register_host(a.host_id, a.public_key()).await;
    broker.register_host(b.host_id, b.public_key()).await;
    broker.register_tenant(1, 10_000).await;
    let mut near = broker.buy(1, b"kernel", "", 1000, 100).await;
    let mut far = broker.buy(1, b"kernel", "", 1000, 100).await;
    let mut elsewhere = broker.buy(1, b"kernel", "", 1000, 100).await;
    for (bought, client, id) in [
        (&near, &a_client, a.host_id),
        (&far, &a_client, a.host_id),
        (&elsewhere, &b_client, b.host_id),
    ] {
        client
            .acquire_lease(bought.token().token_id, id)
            .await
            .unwrap();
    }
    let paid = |bought: &mut Bought, links: u64| {
        let mut verifier = Verifier::new(bought.token(), 1000).unwrap();
        verifier
            .accept_payment(&bought.payer.pay(links).unwrap())
            .unwrap();
        claim(&a, &verifier)
    };
    let claims = vec![
        paid(&mut near, 3),
        paid(&mut far, 9),
        paid(&mut elsewhere, 2),
    ];
    let results = a_client.redeem_many(claims).await.unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(
        results[0],
        Ok(hostd::broker::Redeemed {
            credit: 3 * PRICE,
            highest_redeemed: 3
        })
    );
    assert_eq!(
        results[1],
        Ok(hostd::broker::Redeemed {
            credit: 9 * PRICE,
            highest_redeemed: 9
        })
    );
    assert!(
        matches!(&results[2], Err(BrokerError::ClaimRefused(m)) if m.contains("never held")),
        "{:?}",
        results[2]
    );
    assert_eq!(broker.host_balance(&a.host_id).await, 12 * PRICE);
    assert_eq!(
        broker.token(&near.token().token_id).await.highest_redeemed,
        3
    );
    assert_eq!(
        broker
            .token(&elsewhere.token().token_id)
            .await
            .highest_redeemed,
        0
    );
    assert_eq!(broker.check().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adverts_fill_the_host_directory() {
    let broker = RealBroker::start(64).await;
    let (a, a_client) = host(0x71, &broker);
    let (b, _) = host(0x72, &broker);
    broker.register_host(a.host_id, a.public_key()).await;
    broker.register_host(b.host_id, b.public_key()).await;
    let advert = |free_memory_mib| CapacityAdvert {
        host_id: a.host_id,
        cluster_id: CLUSTER,
        url: "http://127.0.0.1:8480".into(),
        free_memory_mib,
        free_vcpus: 3,
        min_price_per_link: 7,
    };
    a_client.advertise(advert(1024)).await.unwrap();
    // A host advertises only for itself, and an older advert never replaces a newer one.
    let signed_by_a = broker.client(a.key.clone());
    let body = |timestamp_ms| {
        serde_json::to_vec(&Advert {
            free_memory_mib: 1,
            free_vcpus: 1,
            price_per_link: 1,
            url: "http://127.0.0.1:1".into(),
            timestamp_ms,
        })
        .unwrap()
    };
    let now_ms = now_s() * 1000;
    for (path, timestamp_ms, status) in [
        (paths::advert(&b.host_id), now_ms, 403),
        (paths::advert(&a.host_id), now_ms - 10_000, 409),
    ] {
        let answer = signed_by_a
            .send_raw("POST", &path, &body(timestamp_ms), None, true)
            .await
            .unwrap();
        assert_eq!(answer.status, status);
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    a_client.advertise(advert(512)).await.unwrap();

    let entries = broker::directory::fetch(&broker.base).await.unwrap();
    let entry = |id| entries.iter().find(|e| e.host.host_id == id).unwrap();
    let listed = entry(a.host_id).advert.clone().unwrap();
    assert_eq!(
        (
            listed.free_memory_mib,
            listed.free_vcpus,
            listed.price_per_link
        ),
        (512, 3, 7)
    );
    assert!(!entry(a.host_id).stale);
    assert_eq!(entry(b.host_id).advert, None);
    let record = a_client.host(a.host_id).await.unwrap().unwrap();
    assert_eq!(record.url.as_deref(), Some("http://127.0.0.1:8480"));
}
