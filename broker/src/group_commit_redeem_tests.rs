//! A batch of redemptions, run straight (tokens locked and read together, their changes and
//! escrow debits written together at the end) and run carefully (each request on its own,
//! in a savepoint), on two copies of the same ledger: the answers, the lease books and the
//! balances must be the same. On both backends.

use laundromat_api::types::{BuyToken, Empty, Host, NewTenant, Redeem, Release, Topup};
use token::{Claim, HostId, ImageDigest, Link, LinkHasher, SigningKey, TokenId};

use super::*;

fn host_key() -> SigningKey {
    SigningKey::from_bytes(&[0x77; 32])
}

const HOST: HostId = HostId([0x77; 16]);
const LENGTH: u64 = 10;
const PRICE: u64 = 3;

/// A token's chain: link `i` at index `i`.
fn chain(id: &TokenId) -> Vec<Link> {
    let hasher = LinkHasher::new(id);
    let mut links = vec![Link([0x5e; 32]); LENGTH as usize + 1];
    for i in (0..LENGTH).rev() {
        links[i as usize] = hasher.link(i, &links[i as usize + 1]);
    }
    links
}

fn claim(id: TokenId, index: u64) -> token::SignedClaim {
    Claim {
        token_id: id,
        host_id: HOST,
        index,
        link: chain(&id)[index as usize],
    }
    .sign(&host_key())
}

fn redeem(key: &str, id: TokenId, index: u64, nonce: u8) -> (Job, oneshot::Receiver<Stored>) {
    let body = Redeem {
        claim: claim(id, index),
    };
    let op = Operation::Redeem(body.clone());
    job(&host_key(), key, "/v1/redemptions", &body, nonce, op)
}

/// Runs `jobs` in one batch, committed, and returns their answers.
async fn commit(broker: &Broker, jobs: Vec<(Job, oneshot::Receiver<Stored>)>) -> Vec<Stored> {
    let (batch, answers): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
    let mut state = WriterState::new(0);
    let again = commit_batch(broker, batch, &mut state).await;
    assert!(again.is_empty(), "nothing lost a race: {again:?}");
    let mut got = Vec::new();
    for answer in answers {
        got.push(answer.await.expect("every request is answered"));
    }
    got
}

/// A ledger with a tenant, a host and two tokens the host holds, bought at `now`.
async fn ledger(url: &str, tokens: [TokenId; 2], now: u64) -> Arc<Broker> {
    let broker = broker(url).await;
    let register = NewTenant {
        tenant_key: tenant().verifying_key(),
    };
    let host = Host {
        host_id: HOST,
        host_key: host_key().verifying_key(),
        cluster_id: broker.config.cluster_id,
    };
    let fund = Topup {
        tenant_key: tenant().verifying_key(),
        amount: 1000,
    };
    let mut setup = vec![
        job(
            &operator(),
            "tenant",
            "/v1/tenants",
            &register,
            1,
            Operation::RegisterTenant(register.clone()),
        ),
        job(
            &operator(),
            "host",
            "/v1/hosts",
            &host,
            2,
            Operation::RegisterHost(host.clone()),
        ),
        job(
            &operator(),
            "fund",
            "/v1/topups",
            &fund,
            3,
            Operation::Topup(fund.clone()),
        ),
    ];
    for (n, id) in tokens.into_iter().enumerate() {
        let buy = BuyToken {
            token_id: id,
            chain_root: chain(&id)[0],
            chain_length: LENGTH,
            price_per_link: PRICE,
            link_period_ms: 1000,
            image_digest: ImageDigest([1; 32]),
            vcpus: 1,
            memory_mib: 64,
            not_before: now - 10,
            expiry: now + 3600,
        };
        let nonce = 10 + 2 * n as u8;
        setup.push(job(
            &tenant(),
            &format!("buy-{n}"),
            "/v1/tokens",
            &buy,
            nonce,
            Operation::Buy(buy.clone()),
        ));
        setup.push(job(
            &host_key(),
            &format!("acquire-{n}"),
            "/v1/acquire",
            &Empty {},
            nonce + 1,
            Operation::Acquire(id),
        ));
    }
    let statuses: Vec<u16> = commit(&broker, setup)
        .await
        .iter()
        .map(|a| a.status)
        .collect();
    assert_eq!(statuses, [201, 201, 200, 201, 200, 201, 200]);
    broker
}

/// Redemptions on two tokens, a retry, and a release between them (which makes the batch
/// write what its redemptions deferred before it runs, and read the token again after).
fn redemptions(a: TokenId, b: TokenId) -> Vec<(Job, oneshot::Receiver<Stored>)> {
    let release = Release {
        final_claim: Some(claim(a, 4)),
    };
    vec![
        redeem("r1", a, 1, 30),
        redeem("r2", a, 3, 31),
        redeem("r3", b, 2, 32),
        // The same key and body, newly signed: the answer of the request before it.
        redeem("r2", a, 3, 33),
        job(
            &host_key(),
            "release",
            "/v1/release",
            &release,
            34,
            Operation::Release(a, release.clone()),
        ),
        redeem("r4", b, 5, 35),
        // Below what the token's range redeemed: checked, and pays nothing.
        redeem("r5", b, 4, 36),
        redeem("r6", b, 6, 37),
    ]
}

/// What a run left: the answers, each token's public state, and the host's balance.
type Result3 = (Vec<Stored>, Vec<laundromat_api::types::TokenState>, u64);

async fn run(url: &str, mode: Mode, now: u64) -> Result3 {
    let (a, b) = (TokenId([0xa1; 16]), TokenId([0xb2; 16]));
    let broker = ledger(url, [a, b], now).await;
    let (batch, _): (Vec<_>, Vec<_>) = redemptions(a, b).into_iter().unzip();
    let outcomes = run_batch(&broker, &batch, 1, mode)
        .await
        .expect("the transaction itself works")
        .expect("nothing in the batch is refused");
    let answers: Vec<Stored> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Answer(stored) => stored,
            Outcome::Again => panic!("nothing lost a race"),
        })
        .collect();
    let mut states = Vec::new();
    for id in [a, b] {
        states.push(broker.token_state(&id).await.expect("the token's state"));
    }
    let mut conn = broker.db.pool().acquire().await.expect("a connection");
    let host = crate::ledger::balance(&mut conn, &crate::ledger::host_account(&HOST))
        .await
        .expect("read")
        .expect("the host's account");
    drop(conn);
    let report = crate::check::check(broker.db.pool()).await.expect("check");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    broker.db.close().await;
    (answers, states, host)
}

fn credit_in(answer: &Stored) -> u64 {
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON answer");
    value["credit"].as_u64().expect("a credit in the answer")
}

async fn straight_redemptions_match_careful_ones(straight_url: &str, careful_url: &str) {
    // One purchase time for both, so that the tokens' expiries in the answers match.
    let now = crate::clock::unix_now();
    let straight = run(straight_url, Mode::Straight, now).await;
    let careful = run(careful_url, Mode::Careful, now).await;
    assert_eq!(straight, careful, "straight and careful runs differ");

    let (answers, states, host) = straight;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200; 8], "{answers:?}");
    let credits: Vec<u64> = [0, 1, 2, 3, 5, 6, 7]
        .iter()
        .map(|&i| credit_in(&answers[i]))
        .collect();
    assert_eq!(
        credits,
        [PRICE, 2 * PRICE, 2 * PRICE, 2 * PRICE, 3 * PRICE, 0, PRICE]
    );
    assert_eq!(answers[3], answers[1], "a retry gets the stored answer");
    let (a, b) = (&states[0], &states[1]);
    assert_eq!(
        (a.highest_redeemed, a.holder, a.escrow),
        (4, None, 6 * PRICE)
    );
    assert_eq!(
        (b.highest_redeemed, b.holder, b.escrow),
        (6, Some(HOST), 4 * PRICE)
    );
    assert_eq!(host, 10 * PRICE);
}

#[tokio::test]
async fn sqlite_straight_redemptions_match_careful_ones() {
    let dir = std::env::temp_dir().join(format!("group-commit-redeem-{}", std::process::id()));
    let (straight, careful) = (dir.join("straight"), dir.join("careful"));
    for dir in [&straight, &careful] {
        std::fs::create_dir_all(dir).expect("create a temp dir");
    }
    straight_redemptions_match_careful_ones(
        &Db::default_url(&straight),
        &Db::default_url(&careful),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_straight_redemptions_match_careful_ones() {
    let straight = postgres_database().await;
    let careful = postgres_database().await;
    straight_redemptions_match_careful_ones(&straight, &careful).await;
}

/// A multi-row debit that one balance does not cover fails, so the batch is rolled back
/// and run carefully; one that every balance covers takes each amount once.
async fn batched_debits_are_conditional(url: &str) {
    let broker = broker(url).await;
    let mut write = broker.db.begin().await.expect("begin");
    for (id, balance) in [("escrow:x", 5_i64), ("escrow:y", 9)] {
        sqlx::query("INSERT INTO accounts (id, kind, balance) VALUES ($1, 'escrow', $2)")
            .bind(id)
            .bind(balance)
            .execute(&mut *write.tx)
            .await
            .expect("open an account");
    }
    let debits = |x: i64, y: i64| {
        std::collections::BTreeMap::from([("escrow:x".to_owned(), x), ("escrow:y".to_owned(), y)])
    };
    crate::batch_tokens::debit_accounts(&mut write.tx, &debits(5, 4))
        .await
        .expect("both balances cover their debits");
    let overdrawn = crate::batch_tokens::debit_accounts(&mut write.tx, &debits(1, 1)).await;
    assert!(overdrawn.is_err(), "x has nothing left: {overdrawn:?}");
    drop(write);
    broker.db.close().await;
}

#[tokio::test]
async fn sqlite_batched_debits_are_conditional() {
    let dir = std::env::temp_dir().join(format!("group-commit-debits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    batched_debits_are_conditional(&Db::default_url(&dir)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_batched_debits_are_conditional() {
    let url = postgres_database().await;
    batched_debits_are_conditional(&url).await;
}
