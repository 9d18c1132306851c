//! Batched redemptions over HTTP, on SQLite and PostgreSQL: each claim of a batch is settled
//! by the same rules as a single redemption and answered on its own; the request is signed
//! once and idempotent; its hashing is bounded as a whole.

mod common;

use broker::client::new_idempotency_key;
use common::{assert_invariants, buy, refused, Backend, Chain, Options, TestBroker, TestHost};
use laundromat_api::paths;
use laundromat_api::signing;
use laundromat_api::types::{
    BatchRedeemed, ClaimOutcome, RedeemBatch, TokenState, MAX_BATCH_CLAIMS,
};
use token::{Claim, Link, SigningKey};

async fn acquire(host: &TestHost, chain: &Chain) {
    assert_eq!(host.acquire(chain).await.holder, Some(host.id));
}

async fn state(broker: &TestBroker, chain: &Chain) -> TokenState {
    broker
        .broker
        .token_state(&chain.token_id)
        .await
        .expect("token state")
}

async fn host_earnings(broker: &TestBroker, host: &TestHost) -> u64 {
    let mut conn = broker.broker.db.pool().acquire().await.unwrap();
    broker::ledger::balance(&mut conn, &broker::ledger::host_account(&host.id))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// `(credit, highest_redeemed)` of a credited claim, or `(status, code)` of a refused one.
fn outcomes(answer: &BatchRedeemed) -> Vec<Result<(u64, u64), (u16, String)>> {
    answer
        .results
        .iter()
        .map(|result| match &result.outcome {
            ClaimOutcome::Credited {
                credit,
                highest_redeemed,
            } => Ok((*credit, *highest_redeemed)),
            ClaimOutcome::Refused { status, code, .. } => Err((*status, code.clone())),
        })
        .collect()
}

async fn a_bad_claim_refuses_only_itself(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 100_000).await;
    let (a, b) = (broker.host(1).await, broker.host(2).await);
    let (one, _) = buy(&broker, &tenant, 50, 3).await;
    let (two, _) = buy(&broker, &tenant, 50, 5).await;
    let (others, _) = buy(&broker, &tenant, 50, 7).await;
    acquire(&a, &one).await;
    acquire(&a, &two).await;
    acquire(&b, &others).await;
    let unknown = Chain::new(50);
    let mut forged = a.claim(&two, 12);
    forged.signature = Claim {
        link: Link([0xee; 32]),
        ..forged.claim
    }
    .sign(&a.key)
    .signature;
    let by_b = b.claim(&one, 30);
    let claims = vec![
        a.claim(&one, 10),
        a.claim(&others, 4), // a never held this lease
        a.claim(&two, 51),   // beyond n
        a.claim(&two, 8),
        a.claim(&one, 10), // the same claim again: nothing more to pay
        forged,
        a.claim(&unknown, 3),
        by_b, // signed by b, in a's request
        a.claim(&one, 14),
    ];
    let answer = a.redeem_batch(claims).await;
    assert_eq!(
        outcomes(&answer),
        vec![
            Ok((30, 10)),
            Err((403, "never_held_lease".into())),
            Err((422, "beyond_chain_end".into())),
            Ok((40, 8)),
            Ok((0, 10)),
            Err((422, "unprocessable".into())),
            Err((404, "not_found".into())),
            Err((422, "unprocessable".into())),
            Ok((12, 14)),
        ]
    );
    assert_eq!(answer.results[1].token_id, others.token_id);
    assert_eq!(answer.results[2].index, 51);
    // Exactly the credited claims are in the ledger.
    assert_eq!(answer.host_balance, 82);
    assert_eq!(host_earnings(&broker, &a).await, 82);
    assert_eq!(host_earnings(&broker, &b).await, 0);
    assert_eq!(state(&broker, &one).await.highest_redeemed, 14);
    assert_eq!(state(&broker, &one).await.escrow, 150 - 42);
    assert_eq!(state(&broker, &two).await.highest_redeemed, 8);
    assert_eq!(state(&broker, &others).await.highest_redeemed, 0);
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

async fn a_forged_or_oversized_batch_moves_nothing(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 100_000).await;
    let a = broker.host(1).await;
    let (chain, _) = buy(&broker, &tenant, 300, 1).await;
    acquire(&a, &chain).await;
    let body = serde_json::to_vec(&RedeemBatch {
        claims: vec![a.claim(&chain, 5)],
    })
    .unwrap();
    // Signed by another key under a's name.
    let mut headers = signing::sign(
        &SigningKey::from_bytes(&[66; 32]),
        "POST",
        paths::BATCH_REDEMPTIONS,
        &body,
        broker.clock.now(),
        Some("forged"),
    )
    .unwrap()
    .0;
    headers[0].1 = token::hex::encode(a.key.verifying_key().as_bytes());
    let mut request = reqwest::Client::new()
        .post(format!("{}{}", broker.base, paths::BATCH_REDEMPTIONS))
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 401);
    assert_eq!(state(&broker, &chain).await.highest_redeemed, 0);
    // More claims than a batch may carry, and none.
    let too_many: Vec<_> = (1..=MAX_BATCH_CLAIMS as u64 + 1)
        .map(|i| a.claim(&chain, i))
        .collect();
    for claims in [too_many, Vec::new()] {
        let result = a
            .client
            .post::<_, BatchRedeemed>(
                paths::BATCH_REDEMPTIONS,
                &RedeemBatch { claims },
                &new_idempotency_key(),
            )
            .await;
        assert_eq!(refused(result), (400, "bad_request".into()));
    }
    // The largest batch fits the body limit.
    let full: Vec<_> = (1..=MAX_BATCH_CLAIMS as u64)
        .map(|i| a.claim(&chain, i))
        .collect();
    let answer = a.redeem_batch(full).await;
    assert!(answer
        .results
        .iter()
        .all(|r| matches!(r.outcome, ClaimOutcome::Credited { credit: 1, .. })));
    assert_eq!(answer.host_balance, MAX_BATCH_CLAIMS as u64);
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

async fn a_batch_is_idempotent_on_its_key(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 100_000).await;
    let a = broker.host(1).await;
    let (one, _) = buy(&broker, &tenant, 50, 2).await;
    let (two, _) = buy(&broker, &tenant, 50, 3).await;
    acquire(&a, &one).await;
    acquire(&a, &two).await;
    let batch = RedeemBatch {
        claims: vec![a.claim(&one, 5), a.claim(&two, 60), a.claim(&two, 7)],
    };
    let body = serde_json::to_vec(&batch).unwrap();
    let key = new_idempotency_key();
    let send = |body: Vec<u8>, key: String| {
        let client = a.client.clone();
        async move {
            client
                .send_raw("POST", paths::BATCH_REDEMPTIONS, &body, Some(&key), true)
                .await
                .unwrap()
        }
    };
    let first = send(body.clone(), key.clone()).await;
    assert_eq!(first.status, 200);
    let again = send(body.clone(), key.clone()).await;
    assert_eq!((again.status, &again.body), (200, &first.body));
    let answer: BatchRedeemed = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        outcomes(&answer),
        vec![
            Ok((10, 5)),
            Err((422, "beyond_chain_end".into())),
            Ok((21, 7))
        ]
    );
    assert_eq!(host_earnings(&broker, &a).await, 31);
    // The same key for another batch.
    let other = serde_json::to_vec(&RedeemBatch {
        claims: vec![a.claim(&one, 9)],
    })
    .unwrap();
    let mismatch = send(other, key).await;
    assert_eq!(mismatch.status, 409);
    assert_eq!(host_earnings(&broker, &a).await, 31);
    assert_eq!(state(&broker, &one).await.highest_redeemed, 5);
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

/// The hashing of all claims of one batch together is bounded by the claim distance, as one
/// claim's is: a claim that does not fit is refused alone, and goes through in a later
/// request.
async fn a_batch_hashes_no_more_than_one_claim_may(backend: Backend) {
    let broker = TestBroker::start_with(
        backend,
        Options {
            max_claim_distance: 16,
            ..Options::default()
        },
    )
    .await;
    let tenant = broker.tenant(1, 100_000).await;
    let a = broker.host(1).await;
    let mut chains = Vec::new();
    for _ in 0..4 {
        let (chain, _) = buy(&broker, &tenant, 100, 1).await;
        acquire(&a, &chain).await;
        chains.push(chain);
    }
    let claims = vec![
        a.claim(&chains[0], 10),
        a.claim(&chains[1], 10), // 10 more hashes: over the 16
        a.claim(&chains[2], 17), // over the claim distance itself
        a.claim(&chains[3], 6),  // fits the 6 left
    ];
    let answer = a.redeem_batch(claims).await;
    assert_eq!(
        outcomes(&answer),
        vec![
            Ok((10, 10)),
            Err((422, "batch_work_exceeded".into())),
            Err((422, "claim_too_far".into())),
            Ok((6, 6)),
        ]
    );
    let answer = a
        .redeem_batch(vec![a.claim(&chains[1], 10), a.claim(&chains[2], 16)])
        .await;
    assert_eq!(
        outcomes(&answer),
        vec![Ok((10, 10)), Err((422, "batch_work_exceeded".into()))]
    );
    let answer = a.redeem_batch(vec![a.claim(&chains[2], 16)]).await;
    assert_eq!(outcomes(&answer), vec![Ok((16, 16))]);
    assert_eq!(host_earnings(&broker, &a).await, 42);
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

both_backends!(
    a_bad_claim_refuses_only_itself,
    a_forged_or_oversized_batch_moves_nothing,
    a_batch_is_idempotent_on_its_key,
    a_batch_hashes_no_more_than_one_claim_may,
);
