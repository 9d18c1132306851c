//! The broker's operations and every refusal, over HTTP, on SQLite and PostgreSQL.

mod common;

use broker::client::new_idempotency_key;
use common::{assert_invariants, balance, buy, refused, Backend, Chain, Options, TestBroker};
use laundromat_api::paths;
use laundromat_api::signing;
use laundromat_api::types::{
    Account, BrokerInfo, Empty, Purchase, Redeem, Redeemed, Refund, Statement, TokenState,
};
use token::{BrokerKeys, SignedToken, SigningKey};

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
    refunds_happen_once_after_expiry_and_grace,
    metrics_count_requests,
);
