//! The broker's operations and every refusal, over HTTP, on SQLite and PostgreSQL.

mod common;

use broker::client::{new_idempotency_key, Client, ClientError};
use common::{buy, Backend, Chain, Options, TestBroker};
use laundromat_api::paths;
use laundromat_api::signing;
use laundromat_api::types::{
    Account, BrokerInfo, Empty, Handover, Host, Purchase, Redeem, Redeemed, Refund, Release,
    Statement, TokenState,
};
use token::{BrokerKeys, SignedToken, SigningKey};

/// The status of a refusal, or a panic if the request succeeded.
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Refused { status, body }) => (status, body.code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn balance(tenant: &Client) -> u64 {
    let account: Account = tenant.get_signed(paths::ACCOUNT).await.unwrap();
    account.balance
}

async fn assert_invariants(broker: &TestBroker) {
    let report = broker.check().await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

async fn purchase_escrows_and_signs(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 10_000).await;
    let (chain, purchase) = buy(&broker, &tenant, 100, 7).await;
    assert_eq!(purchase.escrow, 700);
    assert_eq!(purchase.balance, 9_300);
    assert_eq!(balance(&tenant).await, 9_300);
    // Hosts verify the token with the broker's published key.
    let info: BrokerInfo = tenant.get(paths::BROKER).await.unwrap();
    let keys: BrokerKeys = [(info.key_id, info.public_key)].into_iter().collect();
    let bytes = purchase.token.to_bytes();
    let token = SignedToken::decode_and_verify(
        &bytes,
        &keys,
        broker.clock.now(),
        &info.cluster_id,
        &purchase.token.token().image_digest,
    )
    .unwrap();
    assert_eq!(token.token().chain_root, chain.root());
    assert_eq!(token.token().tenant_key, tenant.key().verifying_key());
    let state: TokenState = tenant.get(&paths::token(&chain.token_id)).await.unwrap();
    assert_eq!(
        (state.escrow, state.holder, state.highest_redeemed),
        (700, None, 0)
    );
    let statement: Statement = tenant.get_signed(paths::STATEMENT).await.unwrap();
    assert_eq!(statement.transfers.len(), 2);
    assert!(statement
        .transfers
        .iter()
        .any(|t| t.kind == "purchase" && t.amount == 700));
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

async fn unsigned_forged_stale_and_replayed_requests_move_nothing(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 1_000).await;
    let chain = Chain::new(10);
    let body = serde_json::to_vec(&chain.buy_request(5, broker.clock.now())).unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}{}", broker.base, paths::TOKENS);
    let send = |headers: Vec<(&'static str, String)>| {
        let mut request = http.post(&url).body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    // Unsigned.
    let answer = send(vec![("idempotency-key", "k1".into())]).await.unwrap();
    assert_eq!(answer.status(), 401);
    // Signed by another key under the tenant's name.
    let mut forged = signing::sign(
        &SigningKey::from_bytes(&[66; 32]),
        "POST",
        paths::TOKENS,
        &body,
        broker.clock.now(),
        Some("k2"),
    )
    .unwrap()
    .0;
    forged[0].1 = token::hex::encode(tenant.key().verifying_key().as_bytes());
    assert_eq!(send(forged).await.unwrap().status(), 401);
    // Signed too long ago, and too far ahead.
    for skew in [-61i64, 61] {
        let at = broker.clock.now().saturating_add_signed(skew);
        let stale = signing::sign(tenant.key(), "POST", paths::TOKENS, &body, at, Some("k3"))
            .unwrap()
            .0;
        assert_eq!(send(stale).await.unwrap().status(), 401);
    }
    // Signed over another body.
    let other = signing::sign(
        tenant.key(),
        "POST",
        paths::TOKENS,
        b"{}",
        broker.clock.now(),
        Some("k4"),
    )
    .unwrap()
    .0;
    assert_eq!(send(other).await.unwrap().status(), 401);
    // By a key the broker does not know.
    let stranger = signing::sign(
        &SigningKey::from_bytes(&[67; 32]),
        "POST",
        paths::TOKENS,
        &body,
        broker.clock.now(),
        Some("k5"),
    )
    .unwrap()
    .0;
    assert_eq!(send(stranger).await.unwrap().status(), 401);
    assert_eq!(balance(&tenant).await, 1_000);
    // A good request, then the very same bytes again: the replay is refused.
    let good = signing::sign(
        tenant.key(),
        "POST",
        paths::TOKENS,
        &body,
        broker.clock.now(),
        Some("k6"),
    )
    .unwrap()
    .0;
    assert_eq!(send(good.clone()).await.unwrap().status(), 201);
    assert_eq!(send(good).await.unwrap().status(), 401);
    assert_eq!(balance(&tenant).await, 950);
    // Without an idempotency key, a money request is refused.
    let no_key = signing::sign(
        tenant.key(),
        "POST",
        paths::TOKENS,
        &body,
        broker.clock.now(),
        None,
    )
    .unwrap()
    .0;
    assert_eq!(send(no_key).await.unwrap().status(), 400);
    // The operator's commands need the operator's key.
    let (status, code) = refused(
        tenant
            .post::<_, Account>(
                paths::TOPUPS,
                &laundromat_api::types::Topup {
                    tenant_key: tenant.key().verifying_key(),
                    amount: 5,
                },
                "t",
            )
            .await,
    );
    assert_eq!((status, code.as_str()), (403, "not_operator"));
    assert_eq!(balance(&tenant).await, 950);
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

async fn idempotency_keys_follow_stripe(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 1_000).await;
    let chain = Chain::new(10);
    let request = chain.buy_request(5, broker.clock.now());
    let first: Purchase = tenant
        .post(paths::TOKENS, &request, "same-key")
        .await
        .unwrap();
    // Re-signed retry with the same key and body: the stored answer, nothing moves.
    let again: Purchase = tenant
        .post(paths::TOKENS, &request, "same-key")
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(balance(&tenant).await, 950);
    // The same key with another body: 409.
    let other = Chain::new(10).buy_request(5, broker.clock.now());
    let (status, code) = refused(
        tenant
            .post::<_, Purchase>(paths::TOKENS, &other, "same-key")
            .await,
    );
    assert_eq!((status, code.as_str()), (409, "idempotency_mismatch"));
    // Refusals are stored too: the same request under its key gets the same refusal even
    // after the cause is gone.
    let poor = Chain::new(1_000).buy_request(5, broker.clock.now());
    assert_eq!(
        refused(
            tenant
                .post::<_, Purchase>(paths::TOKENS, &poor, "poor")
                .await
        )
        .0,
        402
    );
    let _: Account = broker
        .operator()
        .post(
            paths::TOPUPS,
            &laundromat_api::types::Topup {
                tenant_key: tenant.key().verifying_key(),
                amount: 10_000,
            },
            "top",
        )
        .await
        .unwrap();
    assert_eq!(
        refused(
            tenant
                .post::<_, Purchase>(paths::TOKENS, &poor, "poor")
                .await
        )
        .0,
        402
    );
    let _: Purchase = tenant.post(paths::TOKENS, &poor, "rich").await.unwrap();
    // Operator top-ups are idempotent too.
    let _: Account = broker
        .operator()
        .post(
            paths::TOPUPS,
            &laundromat_api::types::Topup {
                tenant_key: tenant.key().verifying_key(),
                amount: 10_000,
            },
            "top",
        )
        .await
        .unwrap();
    assert_eq!(balance(&tenant).await, 950 + 10_000 - 5_000);
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

async fn token_ids_prices_and_balances_are_checked(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let alice = broker.tenant(1, 1_000).await;
    let bob = broker.tenant(2, 1_000).await;
    let (chain, _) = buy(&broker, &alice, 10, 5).await;
    // The same token id again, by its tenant and by another: refused, nothing moves.
    let again = chain.buy_request(5, broker.clock.now());
    assert_eq!(
        refused(
            alice
                .post::<_, Purchase>(paths::TOKENS, &again, &new_idempotency_key())
                .await
        )
        .0,
        409
    );
    assert_eq!(
        refused(
            bob.post::<_, Purchase>(paths::TOKENS, &again, &new_idempotency_key())
                .await
        )
        .0,
        409
    );
    // A price of 0 is refused by a broker that does not sell free tokens.
    let free = Chain::new(10).buy_request(0, broker.clock.now());
    assert_eq!(
        refused(
            bob.post::<_, Purchase>(paths::TOKENS, &free, &new_idempotency_key())
                .await
        ),
        (422, "unprocessable".into())
    );
    // More than the balance: 402, and no token is created.
    let dear = Chain::new(1_000);
    assert_eq!(
        refused(
            bob.post::<_, Purchase>(
                paths::TOKENS,
                &dear.buy_request(5, broker.clock.now()),
                &new_idempotency_key()
            )
            .await
        )
        .0,
        402
    );
    assert_eq!(
        refused(bob.get::<TokenState>(&paths::token(&dear.token_id)).await).0,
        404
    );
    // Nonsense fields are refused with the token crate's reason.
    let mut zero = Chain::new(10).buy_request(5, broker.clock.now());
    zero.vcpus = 0;
    assert_eq!(
        refused(
            bob.post::<_, Purchase>(paths::TOKENS, &zero, &new_idempotency_key())
                .await
        )
        .0,
        422
    );
    assert_eq!((balance(&alice).await, balance(&bob).await), (950, 1_000));
    broker.shutdown().await;
    // A broker that allows free tokens sells them, escrowing nothing.
    let generous = TestBroker::start_with(
        backend,
        Options {
            allow_free_tokens: true,
            ..Options::default()
        },
    )
    .await;
    let carol = generous.tenant(3, 0).await;
    let (_, purchase) = buy(&generous, &carol, 10, 0).await;
    assert_eq!(purchase.escrow, 0);
    assert_invariants(&generous).await;
    generous.shutdown().await;
}

async fn leases_redemption_and_migration(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 10_000).await;
    let (a, b, c) = (
        broker.host(1).await,
        broker.host(2).await,
        broker.host(3).await,
    );
    let (chain, _) = buy(&broker, &tenant, 100, 3).await;
    let id = chain.token_id;
    let redeem = |host: &common::TestHost, index: u64| {
        let claim = host.claim(&chain, index);
        let client = host.client.clone();
        async move {
            client
                .post::<_, Redeemed>(
                    paths::REDEMPTIONS,
                    &Redeem { claim },
                    &new_idempotency_key(),
                )
                .await
        }
    };
    // A host that never held the lease earns nothing: refused.
    assert_eq!(
        refused(redeem(&c, 5).await),
        (403, "never_held_lease".into())
    );
    let state: TokenState = a
        .client
        .post(
            &paths::lease(&id, "acquire"),
            &Empty {},
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    assert_eq!(state.holder, Some(a.id));
    assert_eq!(
        refused(
            b.client
                .post::<_, TokenState>(
                    &paths::lease(&id, "acquire"),
                    &Empty {},
                    &new_idempotency_key()
                )
                .await
        )
        .0,
        409
    );
    assert_eq!(redeem(&a, 10).await.unwrap().credit, 30);
    // Double redemption earns nothing; a claim beyond n is refused; a forged link too.
    assert_eq!(redeem(&a, 10).await.unwrap().credit, 0);
    assert_eq!(
        refused(redeem(&a, 101).await),
        (422, "beyond_chain_end".into())
    );
    let mut forged = a.claim(&chain, 20);
    forged.claim.link = token::Link([1; 32]);
    forged = forged.claim.sign(&a.key);
    assert_eq!(
        refused(
            a.client
                .post::<_, Redeemed>(
                    paths::REDEMPTIONS,
                    &Redeem { claim: forged },
                    &new_idempotency_key()
                )
                .await
        )
        .0,
        422
    );
    // A claim signed by another host is refused.
    let stolen = a.claim(&chain, 20);
    assert_eq!(
        refused(
            b.client
                .post::<_, Redeemed>(
                    paths::REDEMPTIONS,
                    &Redeem { claim: stolen },
                    &new_idempotency_key()
                )
                .await
        )
        .0,
        422
    );
    // Migration: a holds link 25 at switchover and hands the lease to b with it.
    let handover = Handover {
        to_host: b.id,
        final_claim: a.claim(&chain, 25),
    };
    let state: TokenState = a
        .client
        .post(
            &paths::lease(&id, "handover"),
            &handover,
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    assert_eq!((state.holder, state.handover_to), (Some(a.id), Some(b.id)));
    assert_eq!(
        refused(
            c.client
                .post::<_, TokenState>(
                    &paths::lease(&id, "handover/confirm"),
                    &Empty {},
                    &new_idempotency_key()
                )
                .await
        )
        .0,
        403
    );
    let state: TokenState = b
        .client
        .post(
            &paths::lease(&id, "handover/confirm"),
            &Empty {},
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    assert_eq!((state.holder, state.highest_redeemed), (Some(b.id), 25));
    // The destination got link 25 with the payment state: it earns nothing for it...
    assert_eq!(redeem(&b, 25).await.unwrap().credit, 0);
    // ...while the source was paid for it (15 links at the handover), and is paid no more.
    let host_a: Redeemed = redeem(&a, 25).await.unwrap();
    assert_eq!((host_a.credit, host_a.host_balance), (0, 75));
    assert_eq!(redeem(&a, 40).await.unwrap().credit, 0);
    assert_eq!(redeem(&b, 40).await.unwrap().credit, 45);
    // A cancelled handover leaves the lease with its holder.
    let handover = Handover {
        to_host: c.id,
        final_claim: b.claim(&chain, 40),
    };
    let _: TokenState = b
        .client
        .post(
            &paths::lease(&id, "handover"),
            &handover,
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    let state: TokenState = c
        .client
        .post(
            &paths::lease(&id, "handover/cancel"),
            &Empty {},
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    assert_eq!((state.holder, state.handover_to), (Some(b.id), None));
    // Release with a final claim; then anyone may acquire, from where b stopped.
    let state: TokenState = b
        .client
        .post(
            &paths::lease(&id, "release"),
            &Release {
                final_claim: Some(b.claim(&chain, 50)),
            },
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    assert_eq!(
        (state.holder, state.redeemed_links, state.escrow),
        (None, 50, 150)
    );
    let _: TokenState = c
        .client
        .post(
            &paths::lease(&id, "acquire"),
            &Empty {},
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    assert_eq!(redeem(&c, 50).await.unwrap().credit, 0);
    assert_eq!(redeem(&c, 100).await.unwrap().credit, 150);
    assert_eq!(redeem(&b, 100).await.unwrap().credit, 0);
    let state: TokenState = tenant.get(&paths::token(&id)).await.unwrap();
    assert_eq!(
        (state.escrow, state.redeemed_links, state.ranges.len()),
        (0, 100, 3)
    );
    let hosts: Vec<Host> = tenant.get(paths::HOSTS).await.unwrap();
    assert_eq!(hosts.len(), 3);
    let host: Host = tenant.get(&paths::host(&a.id)).await.unwrap();
    assert_eq!(host.host_key, a.key.verifying_key());
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

async fn work_per_claim_is_bounded(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 1 << 40).await;
    let host = broker.host(1).await;
    let (chain, _) = buy(&broker, &tenant, 1 << 22, 1).await;
    let id = chain.token_id;
    let _: TokenState = host
        .client
        .post(
            &paths::lease(&id, "acquire"),
            &Empty {},
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    let max = laundromat_api::claims::MAX_CLAIM_DISTANCE;
    // A forged claim 2^21 links up would cost 2^21 hashes to disprove: refused unhashed.
    let mut far = token::Claim {
        token_id: id,
        host_id: host.id,
        index: 1 << 21,
        link: token::Link([9; 32]),
    };
    let refusal = refused(
        host.client
            .post::<_, Redeemed>(
                paths::REDEMPTIONS,
                &Redeem {
                    claim: far.sign(&host.key),
                },
                &new_idempotency_key(),
            )
            .await,
    );
    assert_eq!(refusal, (422, "claim_too_far".into()));
    // At the bound, a forged link costs `max` hashes and is caught.
    far.index = max;
    assert_eq!(
        refused(
            host.client
                .post::<_, Redeemed>(
                    paths::REDEMPTIONS,
                    &Redeem {
                        claim: far.sign(&host.key)
                    },
                    &new_idempotency_key()
                )
                .await
        )
        .0,
        422
    );
    // An honest host holding a link far ahead is paid in bounded steps.
    let index = 3 * max + 5;
    let steps =
        laundromat_api::claims::stepped_claims(id, host.id, 0, index, chain.link(index), max);
    assert_eq!(steps.len(), 4);
    let mut total = 0;
    for step in steps {
        let redeemed: Redeemed = host
            .client
            .post(
                paths::REDEMPTIONS,
                &Redeem {
                    claim: step.sign(&host.key),
                },
                &new_idempotency_key(),
            )
            .await
            .unwrap();
        total += redeemed.credit;
    }
    assert_eq!(total, index);
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

async fn refunds_happen_once_after_expiry_and_grace(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 1_000).await;
    let other = broker.tenant(2, 0).await;
    let host = broker.host(1).await;
    let (chain, _) = buy(&broker, &tenant, 100, 2).await;
    let id = chain.token_id;
    let _: TokenState = host
        .client
        .post(
            &paths::lease(&id, "acquire"),
            &Empty {},
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    let _: Redeemed = host
        .client
        .post(
            paths::REDEMPTIONS,
            &Redeem {
                claim: host.claim(&chain, 30),
            },
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    // Not before expiry plus grace.
    assert_eq!(
        refused(
            tenant
                .post::<_, Refund>(&paths::refund(&id), &Empty {}, &new_idempotency_key())
                .await
        )
        .0,
        409
    );
    broker.clock.advance(1000 + 100);
    // Only its tenant can ask.
    assert_eq!(
        refused(
            other
                .post::<_, Refund>(&paths::refund(&id), &Empty {}, &new_idempotency_key())
                .await
        )
        .0,
        404
    );
    let refund: Refund = tenant
        .post(&paths::refund(&id), &Empty {}, &new_idempotency_key())
        .await
        .unwrap();
    assert_eq!((refund.amount, refund.balance), (140, 1_000 - 200 + 140));
    // Exactly once: a second request, the sweeper, and a late redemption all move nothing.
    assert_eq!(
        refused(
            tenant
                .post::<_, Refund>(&paths::refund(&id), &Empty {}, &new_idempotency_key())
                .await
        ),
        (409, "refunded".into())
    );
    assert_eq!(broker.broker.refund_due().await.unwrap(), 0);
    assert_eq!(
        refused(
            host.client
                .post::<_, Redeemed>(
                    paths::REDEMPTIONS,
                    &Redeem {
                        claim: host.claim(&chain, 50)
                    },
                    &new_idempotency_key()
                )
                .await
        )
        .0,
        409
    );
    assert_eq!(balance(&tenant).await, 940);
    // The sweeper refunds the tokens nobody asked about.
    let (_, _) = buy(&broker, &tenant, 10, 2).await;
    broker.clock.advance(1000 + 100);
    assert_eq!(broker.broker.refund_due().await.unwrap(), 1);
    assert_eq!(balance(&tenant).await, 940);
    assert_invariants(&broker).await;
    broker.shutdown().await;
}

async fn metrics_count_requests(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 100).await;
    let _ = buy(&broker, &tenant, 10, 1).await;
    let text = reqwest::get(format!("{}/metrics", broker.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("broker_requests_total{op=\"buy\",status=\"201\"} 1"),
        "{text}"
    );
    assert!(text.contains("broker_escrow_total 10"), "{text}");
    broker.shutdown().await;
}

both_backends!(
    purchase_escrows_and_signs,
    unsigned_forged_stale_and_replayed_requests_move_nothing,
    idempotency_keys_follow_stripe,
    token_ids_prices_and_balances_are_checked,
    leases_redemption_and_migration,
    work_per_claim_is_bounded,
    refunds_happen_once_after_expiry_and_grace,
    metrics_count_requests,
);
