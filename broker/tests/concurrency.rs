//! Many concurrent clients buy tokens, take and hand over leases, redeem and refund, in
//! random interleavings, on both backends; some requests are raced with the same
//! idempotency key from two connections. Afterwards `broker check` passes, and every answer
//! and every balance equals what a sequential model of the accepted requests predicts.
//!
//! Hosts also redeem batches of claims on several tokens at once, each claim of which the
//! model settles as a single redemption.
//!
//! Tenants and hosts are shared by all clients (their balances are the contended rows);
//! each token is driven by the one client that bought it, so its requests have a program
//! order the model follows.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use broker::client::{new_idempotency_key, Client, ClientError};
use common::{Backend, Chain, Options, TestBroker, TestHost};
use laundromat_api::paths;
use laundromat_api::types::{
    Account, ClaimOutcome, Empty, Handover, Purchase, Redeem, Redeemed, Refund, Release, TokenState,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLIENTS: u64 = 8;
const OPS_PER_CLIENT: usize = 30;
const TENANTS: u8 = 3;
const HOSTS: u8 = 3;
const START_BALANCE: u64 = 2_000;

/// One token as the model sees it: who holds the lease, where the holder's stretch starts,
/// what has been paid out, a prepared handover.
#[derive(Debug, Clone)]
struct ModelToken {
    chain: Chain,
    tenant: usize,
    price: u64,
    holder: Option<usize>,
    start: u64,
    paid: u64,
    /// Hosts that ever held the lease.
    held: Vec<usize>,
    refunded: bool,
}

#[derive(Default, Debug)]
struct Outcome {
    /// tenant -> escrowed by its accepted purchases.
    spent: BTreeMap<usize, u64>,
    /// host -> credits the broker answered.
    earned: BTreeMap<usize, u64>,
    tokens: Vec<ModelToken>,
    /// Claims of batches that earned something.
    batch_credits: usize,
}

fn status<T>(result: &Result<T, ClientError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(error) => error.status().unwrap_or(0),
    }
}

/// Pays `host` up to `index` in the model, if it holds the lease; returns the credit.
fn model_pay(token: &mut ModelToken, host: usize, index: u64) -> u64 {
    if token.holder != Some(host) || index <= token.paid.max(token.start) {
        return 0;
    }
    let from = token.paid.max(token.start);
    token.paid = index;
    (index - from) * token.price
}

/// One host redeems a batch of claims on this client's tokens (any of them, the same one
/// more than once, with any index); the model settles them in the batch's order.
async fn redeem_batch(rng: &mut StdRng, hosts: &[TestHost], out: &mut Outcome) {
    // Mostly a host that holds one of the tokens, so that claims earn.
    let some_holder = out.tokens[rng.gen_range(0..out.tokens.len())].holder;
    let h = match some_holder {
        Some(holder) if rng.gen_bool(0.7) => holder,
        _ => rng.gen_range(0..hosts.len()),
    };
    let host = &hosts[h];
    let picks: Vec<(usize, u64)> = (0..rng.gen_range(1..=6))
        .map(|_| {
            let t = rng.gen_range(0..out.tokens.len());
            (t, rng.gen_range(0..=out.tokens[t].chain.length))
        })
        .collect();
    let claims = picks
        .iter()
        .map(|&(t, index)| host.claim(&out.tokens[t].chain, index))
        .collect();
    let answer = host.redeem_batch(claims).await;
    assert_eq!(answer.results.len(), picks.len());
    for (&(t, index), result) in picks.iter().zip(&answer.results) {
        let token = &mut out.tokens[t];
        match &result.outcome {
            ClaimOutcome::Credited { credit, .. } if token.held.contains(&h) => {
                let expected = model_pay(token, h, index);
                assert_eq!(*credit, expected, "batch: redeem {index} by host {h}");
                *out.earned.entry(h).or_default() += credit;
                out.batch_credits += usize::from(*credit > 0);
            }
            ClaimOutcome::Refused { status, .. } if !token.held.contains(&h) => {
                assert_eq!(*status, 403, "batch: {result:?}");
            }
            other => panic!("batch: host {h}, link {index}: {other:?}"),
        }
    }
}

async fn client_run(
    seed: u64,
    broker: Arc<TestBroker>,
    tenants: Arc<Vec<Client>>,
    hosts: Arc<Vec<TestHost>>,
) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Outcome::default();
    for _ in 0..OPS_PER_CLIENT {
        let choice = rng.gen_range(0..12);
        if out.tokens.is_empty() || choice < 2 {
            let tenant = rng.gen_range(0..tenants.len());
            let (length, price) = (rng.gen_range(5..60), rng.gen_range(1..5));
            let chain = Chain::new(length);
            let request = chain.buy_request(price, broker.clock.now());
            let key = new_idempotency_key();
            let result: Result<Purchase, _> = if rng.gen_bool(0.3) {
                // The same request raced from two connections, signed a second apart.
                let behind = broker::clock::Clock::default();
                behind.advance(-1);
                let other = tenants[tenant].clone().with_clock(behind);
                let (first, second) = tokio::join!(
                    tenants[tenant].post::<_, Purchase>(paths::TOKENS, &request, &key),
                    other.post::<_, Purchase>(paths::TOKENS, &request, &key)
                );
                match (&first, &second) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "one key, two answers"),
                    _ => assert_eq!(status(&first), status(&second), "{first:?} vs {second:?}"),
                }
                first
            } else {
                tenants[tenant].post(paths::TOKENS, &request, &key).await
            };
            match result {
                Ok(purchase) => {
                    assert_eq!(purchase.escrow, length * price);
                    *out.spent.entry(tenant).or_default() += purchase.escrow;
                    out.tokens.push(ModelToken {
                        chain,
                        tenant,
                        price,
                        holder: None,
                        start: 0,
                        paid: 0,
                        held: Vec::new(),
                        refunded: false,
                    });
                }
                Err(error) => assert_eq!(error.status(), Some(402), "{error}"),
            }
            continue;
        }
        if choice >= 10 {
            redeem_batch(&mut rng, &hosts, &mut out).await;
            continue;
        }
        let t = rng.gen_range(0..out.tokens.len());
        let token = &mut out.tokens[t];
        let id = token.chain.token_id;
        let h = rng.gen_range(0..hosts.len());
        let host = &hosts[h];
        let index = rng.gen_range(0..=token.chain.length);
        match choice {
            2 => {
                let result: Result<TokenState, _> = host
                    .client
                    .post(
                        &paths::lease(&id, "acquire"),
                        &Empty {},
                        &new_idempotency_key(),
                    )
                    .await;
                let free = token.holder.is_none() || token.holder == Some(h);
                assert_eq!(result.is_ok(), free, "acquire {result:?}");
                if token.holder.is_none() && free {
                    token.holder = Some(h);
                    token.start = token.paid;
                    token.held.push(h);
                }
            }
            3..=5 => {
                let result: Result<Redeemed, _> = host
                    .client
                    .post(
                        paths::REDEMPTIONS,
                        &Redeem {
                            claim: host.claim(&token.chain, index),
                        },
                        &new_idempotency_key(),
                    )
                    .await;
                if token.held.contains(&h) {
                    let expected = model_pay(token, h, index);
                    let credit = result.expect("redeem").credit;
                    assert_eq!(credit, expected, "redeem {index} by host {h}");
                    *out.earned.entry(h).or_default() += credit;
                } else {
                    assert_eq!(status(&result), 403, "{result:?}");
                }
            }
            6 | 7 => {
                let Some(holder) = token.holder else { continue };
                let to = (holder + 1 + rng.gen_range(0..hosts.len() - 1)) % hosts.len();
                let body = Handover {
                    to_host: hosts[to].id,
                    final_claim: hosts[holder].claim(&token.chain, index),
                };
                let _: TokenState = hosts[holder]
                    .client
                    .post(
                        &paths::lease(&id, "handover"),
                        &body,
                        &new_idempotency_key(),
                    )
                    .await
                    .expect("handover");
                if rng.gen_bool(0.8) {
                    let state: TokenState = hosts[to]
                        .client
                        .post(
                            &paths::lease(&id, "handover/confirm"),
                            &Empty {},
                            &new_idempotency_key(),
                        )
                        .await
                        .expect("confirm");
                    let credit = model_pay(token, holder, index);
                    *out.earned.entry(holder).or_default() += credit;
                    token.holder = Some(to);
                    token.start = token.paid;
                    token.held.push(to);
                    assert_eq!(state.highest_redeemed, token.paid);
                } else {
                    let _: TokenState = hosts[to]
                        .client
                        .post(
                            &paths::lease(&id, "handover/cancel"),
                            &Empty {},
                            &new_idempotency_key(),
                        )
                        .await
                        .expect("cancel");
                }
            }
            _ => {
                let Some(holder) = token.holder else { continue };
                let body = Release {
                    final_claim: rng
                        .gen_bool(0.5)
                        .then(|| hosts[holder].claim(&token.chain, index)),
                };
                let _: TokenState = hosts[holder]
                    .client
                    .post(&paths::lease(&id, "release"), &body, &new_idempotency_key())
                    .await
                    .expect("release");
                if body.final_claim.is_some() {
                    let credit = model_pay(token, holder, index);
                    *out.earned.entry(holder).or_default() += credit;
                }
                token.holder = None;
            }
        }
    }
    out
}

async fn concurrent_clients_agree_with_a_sequential_model(backend: Backend) {
    let broker = Arc::new(
        TestBroker::start_with(
            backend,
            Options {
                refund_grace_secs: 0,
                ..Options::default()
            },
        )
        .await,
    );
    let mut tenants = Vec::new();
    for t in 0..TENANTS {
        tenants.push(broker.tenant(t + 1, START_BALANCE).await);
    }
    let mut hosts = Vec::new();
    for h in 0..HOSTS {
        hosts.push(broker.host(h + 1).await);
    }
    let (tenants, hosts) = (Arc::new(tenants), Arc::new(hosts));
    let runs: Vec<_> = (0..CLIENTS)
        .map(|seed| {
            tokio::spawn(client_run(
                seed,
                broker.clone(),
                tenants.clone(),
                hosts.clone(),
            ))
        })
        .collect();
    let mut outcomes = Vec::new();
    for run in runs {
        outcomes.push(run.await.expect("client"));
    }
    // Every token expires; each is refunded by two racing requests, of which one wins.
    broker.clock.advance(2_000);
    let mut refunds = Vec::new();
    for outcome in &mut outcomes {
        for token in &mut outcome.tokens {
            let tenant = tenants[token.tenant].clone();
            let id = token.chain.token_id;
            refunds.push(tokio::spawn(async move {
                let path = paths::refund(&id);
                let (key_a, key_b) = (new_idempotency_key(), new_idempotency_key());
                let (a, b) = tokio::join!(
                    tenant.post::<_, Refund>(&path, &Empty {}, &key_a),
                    tenant.post::<_, Refund>(&path, &Empty {}, &key_b)
                );
                match (a, b) {
                    (Ok(refund), Err(e)) | (Err(e), Ok(refund)) => {
                        assert_eq!(e.status(), Some(409), "{e}");
                        refund.amount
                    }
                    other => panic!("a refund raced twice must succeed once: {other:?}"),
                }
            }));
            token.refunded = true;
        }
    }
    let mut refunded_amounts = Vec::new();
    for refund in refunds {
        refunded_amounts.push(refund.await.expect("refund"));
    }
    // The model: every token's refund is its unpaid links; balances follow.
    let mut expected_tenant = vec![START_BALANCE; tenants.len()];
    let mut expected_host = vec![0u64; hosts.len()];
    let mut amounts = refunded_amounts.into_iter();
    for outcome in &outcomes {
        for (tenant, spent) in &outcome.spent {
            expected_tenant[*tenant] -= spent;
        }
        for (host, earned) in &outcome.earned {
            expected_host[*host] += earned;
        }
        for token in &outcome.tokens {
            let amount = amounts.next().expect("refund amount");
            assert_eq!(amount, (token.chain.length - token.paid) * token.price);
            expected_tenant[token.tenant] += amount;
            let state: TokenState = tenants[0]
                .get(&paths::token(&token.chain.token_id))
                .await
                .unwrap();
            assert_eq!(
                (state.highest_redeemed, state.escrow, state.refunded),
                (token.paid, 0, true)
            );
        }
    }
    for (t, tenant) in tenants.iter().enumerate() {
        let account: Account = tenant.get_signed(paths::ACCOUNT).await.unwrap();
        assert_eq!(account.balance, expected_tenant[t], "tenant {t}");
    }
    for (h, host) in hosts.iter().enumerate() {
        let balance = broker::ledger::balance(
            &mut broker.broker.db.pool().acquire().await.unwrap(),
            &broker::ledger::host_account(&host.id),
        )
        .await
        .unwrap();
        assert_eq!(balance, Some(expected_host[h]), "host {h}");
    }
    let report = broker.check().await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.issued, i64::from(TENANTS) * START_BALANCE as i64);
    let tokens: usize = outcomes.iter().map(|o| o.tokens.len()).sum();
    assert!(
        tokens >= CLIENTS as usize,
        "too few purchases succeeded: {tokens}"
    );
    let batch_credits: usize = outcomes.iter().map(|o| o.batch_credits).sum();
    assert!(batch_credits > 0, "no claim of a batch earned anything");
    eprintln!("{tokens} tokens; {batch_credits} claims of batches earned");
}

both_backends!(concurrent_clients_agree_with_a_sequential_model);
