//! Token leases and redemption over HTTP, on SQLite and PostgreSQL: who may claim which links,
//! the migration handover, and the bound on the work one claim can cause.

mod common;

use broker::client::new_idempotency_key;
use common::{assert_invariants, buy, refused, Backend, TestBroker};
use laundromat_api::paths;
use laundromat_api::types::{Empty, Handover, Host, Redeem, Redeemed, Release, TokenState};

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

/// A host's earnings live in its account's row plus the writers' shards of it: the answers
/// add them up, and `broker check` counts the shards, so a shard altered behind the
/// broker's back is reported.
async fn host_earnings_in_shards_are_checked(backend: Backend) {
    let broker = TestBroker::start(backend).await;
    let tenant = broker.tenant(1, 10_000).await;
    let host = broker.host(1).await;
    let (chain, _) = buy(&broker, &tenant, 100, 3).await;
    let _: TokenState = host
        .client
        .post(
            &paths::lease(&chain.token_id, "acquire"),
            &Empty {},
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    let mut balances = Vec::new();
    for index in [10, 20] {
        let redeemed: Redeemed = host
            .client
            .post(
                paths::REDEMPTIONS,
                &Redeem {
                    claim: host.claim(&chain, index),
                },
                &new_idempotency_key(),
            )
            .await
            .unwrap();
        balances.push(redeemed.host_balance);
    }
    assert_eq!(balances, [30, 60]);
    assert_invariants(&broker).await;
    let altered = sqlx::query("UPDATE account_shards SET amount = amount + 7")
        .execute(broker.broker.db.pool())
        .await
        .unwrap();
    assert!(altered.rows_affected() >= 1, "the credits went to a shard");
    let report = broker.check().await;
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.starts_with("conservation"))
            && report
                .violations
                .iter()
                .any(|v| v.starts_with("double entry")),
        "{:?}",
        report.violations
    );
    broker.shutdown().await;
}

both_backends!(
    leases_redemption_and_migration,
    work_per_claim_is_bounded,
    host_earnings_in_shards_are_checked
);
