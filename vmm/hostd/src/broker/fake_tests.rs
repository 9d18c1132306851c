use token::{Claim, ClusterId, Link, SigningKey};

use super::*;

fn host(seed: u8) -> (HostRecord, SigningKey) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let record = HostRecord {
        host_id: HostId([seed; 16]),
        key: key.verifying_key(),
        cluster_id: ClusterId([1; 16]),
        url: None,
    };
    (record, key)
}

#[tokio::test]
async fn a_lease_has_at_most_one_holder() {
    let (a, a_key) = host(1);
    let (b, _) = host(2);
    let broker = FakeBroker::new(FakeState {
        hosts: vec![a.clone(), b.clone()],
        ..FakeState::default()
    });
    let token = TokenId([9; 16]);
    broker.acquire_lease(token, a.host_id).await.unwrap();
    broker.acquire_lease(token, a.host_id).await.unwrap();
    assert_eq!(
        broker.acquire_lease(token, b.host_id).await,
        Err(BrokerError::LeaseHeld {
            token_id: token,
            holder: a.host_id
        })
    );
    assert_eq!(
        broker.release_lease(token, b.host_id).await,
        Err(BrokerError::NotLeaseHolder { token_id: token })
    );
    // A handover needs the source's own claim; the fake cannot settle an unsold token.
    let claim = Claim {
        token_id: token,
        host_id: a.host_id,
        index: 0,
        link: Link([0; 32]),
    }
    .sign(&a_key);
    assert!(matches!(
        broker
            .hand_over_lease(Handover {
                token_id: token,
                from: a.host_id,
                to: b.host_id,
                final_claim: claim,
            })
            .await,
        Err(BrokerError::ClaimRefused(_))
    ));
    assert_eq!(broker.snapshot().leases.get(&token), Some(&a.host_id));
    broker.release_lease(token, a.host_id).await.unwrap();
    broker.acquire_lease(token, b.host_id).await.unwrap();
}

/// A token sold by the fake, and the links that pay it.
fn sold(length: u64) -> (SignedToken, Vec<Link>) {
    let token_id = TokenId([9; 16]);
    let mut payer = token::Payer::new(token_id, &Link([4; 32]), length).unwrap();
    let links = (1..=length).map(|_| payer.next_link().unwrap().1).collect();
    let token = BootToken {
        version: token::TOKEN_VERSION,
        broker_key_id: token::KeyId(1),
        token_id,
        tenant_key: SigningKey::from_bytes(&[7; 32]).verifying_key(),
        cluster_id: ClusterId([1; 16]),
        image_digest: token::image_digest(b"k", None, ""),
        vcpus: 1,
        memory_mib: 32,
        price_per_link: 5,
        link_period_ms: 1000,
        chain_root: payer.root(),
        chain_length: length,
        not_before: 0,
        expiry: u64::MAX / 2,
    };
    let signed = SignedToken::sign(token, &SigningKey::from_bytes(&[8; 32])).unwrap();
    (signed, links)
}

#[tokio::test]
async fn many_claims_settle_in_order_each_on_its_own() {
    let (a, a_key) = host(1);
    let (signed, links) = sold(10);
    let token_id = signed.token().token_id;
    let broker = FakeBroker::new(FakeState {
        hosts: vec![a.clone()],
        tokens: vec![signed],
        ..FakeState::default()
    });
    broker.acquire_lease(token_id, a.host_id).await.unwrap();
    let claim = |index: u64, key: &SigningKey| {
        let link = links[index as usize - 1];
        Claim {
            token_id,
            host_id: a.host_id,
            index,
            link,
        }
        .sign(key)
    };
    let forged = claim(4, &SigningKey::from_bytes(&[99; 32]));
    let claims = vec![claim(3, &a_key), forged, claim(5, &a_key)];
    let results = broker.redeem_many(claims).await.unwrap();
    assert_eq!(
        results[0],
        Ok(Redeemed {
            credit: 15,
            highest_redeemed: 3
        })
    );
    assert!(matches!(results[1], Err(BrokerError::ClaimRefused(_))));
    assert_eq!(
        results[2],
        Ok(Redeemed {
            credit: 10,
            highest_redeemed: 5
        })
    );
    assert_eq!(broker.snapshot().credits.get(&a.host_id), Some(&25));
}

#[tokio::test]
async fn a_handover_moves_the_lease_only_when_confirmed() {
    let (a, a_key) = host(1);
    let (b, _) = host(2);
    let (signed, links) = sold(10);
    let token_id = signed.token().token_id;
    let broker = FakeBroker::new(FakeState {
        hosts: vec![a.clone(), b.clone()],
        tokens: vec![signed],
        ..FakeState::default()
    });
    broker.acquire_lease(token_id, a.host_id).await.unwrap();
    let claim = |index: u64| {
        Claim {
            token_id,
            host_id: a.host_id,
            index,
            link: links[index as usize - 1],
        }
        .sign(&a_key)
    };
    let handover = |index| Handover {
        token_id,
        from: a.host_id,
        to: b.host_id,
        final_claim: claim(index),
    };
    let prepared = broker.hand_over_lease(handover(3)).await.unwrap();
    assert_eq!(prepared.holder, a.host_id);
    assert_eq!(broker.snapshot().credits.get(&a.host_id), None);
    // Frozen while pending: the source cannot release it.
    assert_eq!(
        broker.release_lease(token_id, a.host_id).await,
        Err(BrokerError::HandoverPending { token_id })
    );
    // Only the destination confirms; a cancelled handover leaves the lease with the source.
    assert_eq!(
        broker.confirm_handover(token_id, a.host_id).await,
        Err(BrokerError::NoHandover { token_id })
    );
    let cancelled = broker.cancel_handover(token_id, b.host_id).await.unwrap();
    assert_eq!(cancelled.holder, a.host_id);
    assert_eq!(
        broker.confirm_handover(token_id, b.host_id).await,
        Err(BrokerError::NoHandover { token_id })
    );
    broker.hand_over_lease(handover(4)).await.unwrap();
    let moved = broker.confirm_handover(token_id, b.host_id).await.unwrap();
    assert_eq!(moved.holder, b.host_id);
    let state = broker.snapshot();
    assert_eq!(state.leases.get(&token_id), Some(&b.host_id));
    assert_eq!(state.credits.get(&a.host_id), Some(&20));
    assert!(state.handovers.is_empty());
}

#[tokio::test]
async fn a_handover_moves_the_lease_only_when_the_destination_confirms() {
    use token::{BootToken, Payer, TOKEN_VERSION};
    let (a, a_key) = host(1);
    let (b, _) = host(2);
    let broker_key = SigningKey::from_bytes(&[5; 32]);
    let token_id = TokenId([9; 16]);
    let mut payer = Payer::new(token_id, &Link([4; 32]), 10).unwrap();
    let token = BootToken {
        version: TOKEN_VERSION,
        broker_key_id: token::KeyId(1),
        token_id,
        tenant_key: broker_key.verifying_key(),
        cluster_id: ClusterId([1; 16]),
        image_digest: token::ImageDigest([0; 32]),
        vcpus: 1,
        memory_mib: 32,
        price_per_link: 7,
        link_period_ms: 1000,
        chain_root: payer.root(),
        chain_length: 10,
        not_before: 0,
        expiry: u64::MAX / 2000,
    };
    let broker = FakeBroker::new(FakeState {
        hosts: vec![a.clone(), b.clone()],
        tokens: vec![SignedToken::sign(token, &broker_key).unwrap()],
        ..FakeState::default()
    });
    broker.acquire_lease(token_id, a.host_id).await.unwrap();
    let paid = payer.pay(3).unwrap();
    let claim = Claim {
        token_id,
        host_id: a.host_id,
        index: paid.index,
        link: paid.link,
    }
    .sign(&a_key);
    let handover = Handover {
        token_id,
        from: a.host_id,
        to: b.host_id,
        final_claim: claim,
    };
    // Prepared, then cancelled: nothing moved, nothing paid, the source may go on.
    broker.hand_over_lease(handover.clone()).await.unwrap();
    assert!(broker.release_lease(token_id, a.host_id).await.is_err());
    broker.cancel_handover(token_id, a.host_id).await.unwrap();
    let state = broker.snapshot();
    assert_eq!(state.leases.get(&token_id), Some(&a.host_id));
    assert_eq!(state.credits.get(&a.host_id), None);
    // Prepared and confirmed by the destination (twice: a retry is harmless).
    broker.hand_over_lease(handover).await.unwrap();
    assert!(broker.confirm_handover(token_id, a.host_id).await.is_err());
    for _ in 0..2 {
        broker.confirm_handover(token_id, b.host_id).await.unwrap();
    }
    let state = broker.snapshot();
    assert_eq!(state.leases.get(&token_id), Some(&b.host_id));
    assert_eq!(state.credits.get(&a.host_id), Some(&21));
    assert!(state.handovers.is_empty());
}

#[tokio::test]
async fn the_file_broker_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.json");
    let (a, _) = host(1);
    let state = FakeState {
        hosts: vec![a.clone()],
        ..FakeState::default()
    };
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let broker = FakeBroker::open(path.clone()).unwrap();
    broker
        .acquire_lease(TokenId([3; 16]), a.host_id)
        .await
        .unwrap();
    let reopened = FakeBroker::open(path).unwrap();
    assert_eq!(
        reopened.snapshot().leases.get(&TokenId([3; 16])),
        Some(&a.host_id)
    );
}
