//! One batch, built by hand so that its requests share one transaction for certain: a
//! refused request leaves no trace but its recorded refusal, the others commit, and the
//! same idempotency key twice in one batch runs once. On both backends.

use std::sync::{Arc, OnceLock};

use laundromat_api::types::{BuyToken, NewTenant, Topup};
use serde::Serialize;
use token::{ClusterId, ImageDigest, Link, SigningKey, TokenId};

use super::*;
use crate::clock::Clock;
use crate::db::Db;
use crate::idempotency::{request_hash, KeyedRequest};
use crate::ops::{Principal, Role};
use crate::scratch_pg::Cluster;
use crate::service::Config;
use crate::store::key_hex;

fn operator() -> SigningKey {
    SigningKey::from_bytes(&[0x0b; 32])
}

fn tenant() -> SigningKey {
    SigningKey::from_bytes(&[0x1e; 32])
}

/// A fresh database in the one scratch cluster these tests share (a cluster's directory is
/// named by the process). The cluster stops when the test process ends.
async fn postgres_database() -> String {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    let cluster = tokio::task::spawn_blocking(|| {
        CLUSTER.get_or_init(|| Cluster::start().expect("start a scratch PostgreSQL cluster"))
    })
    .await
    .expect("join");
    cluster.fresh_database().await.expect("create a database")
}

async fn broker(url: &str) -> Arc<Broker> {
    let db = Db::open(url, 4).await.expect("open the database");
    let signing_key = SigningKey::from_bytes(&[0xb0; 32]);
    let config = Config {
        cluster_id: ClusterId([0xc1; 16]),
        key_id: crate::service::key_id_of(&signing_key.verifying_key()),
        signing_key,
        operator_key: operator().verifying_key(),
        max_claim_distance: 64,
        refund_grace_secs: 100,
        allow_free_tokens: false,
    };
    Arc::new(Broker::new(db, config, Clock::default()))
}

/// A request as the writer receives it. `nonce` stands for the signature: two requests
/// with the same bytes but different nonces are a retry, not a replay.
fn job<T: Serialize>(
    signer: &SigningKey,
    key: &str,
    path: &str,
    body: &T,
    nonce: u8,
    op: Operation,
) -> (Job, oneshot::Receiver<Stored>) {
    let body = serde_json::to_vec(body).expect("encode the body");
    let signer_hex = key_hex(&signer.verifying_key());
    let (reply, answer) = oneshot::channel();
    let job = Job {
        keyed: Keyed {
            signer_key: signer.verifying_key(),
            request_id: format!("{signer_hex}/{key}"),
            request: KeyedRequest {
                signer: signer_hex,
                key: key.to_owned(),
                hash: request_hash("POST", path, &body),
                signature: format!("{nonce:02x}"),
            },
        },
        op,
        runs: 0,
        reply,
    };
    (job, answer)
}

fn topup(key: &str, amount: u64, nonce: u8) -> (Job, oneshot::Receiver<Stored>) {
    let body = Topup {
        tenant_key: tenant().verifying_key(),
        amount,
    };
    let op = Operation::Topup(body.clone());
    job(&operator(), key, "/v1/topups", &body, nonce, op)
}

fn balance_in(answer: &Stored) -> u64 {
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON answer");
    value["balance"].as_u64().expect("a balance in the answer")
}

async fn one_batch_isolates_requests(url: &str) {
    let broker = broker(url).await;
    let now = broker.clock.now();
    let register = NewTenant {
        tenant_key: tenant().verifying_key(),
    };
    let token_id = TokenId([0x70; 16]);
    let too_dear = BuyToken {
        token_id,
        chain_root: Link([3; 32]),
        chain_length: 1000,
        price_per_link: 1,
        link_period_ms: 1000,
        image_digest: ImageDigest([1; 32]),
        vcpus: 1,
        memory_mib: 64,
        not_before: now - 10,
        expiry: now + 3600,
    };
    let mut answers = Vec::new();
    let mut batch = Vec::new();
    for (job, answer) in [
        job(
            &operator(),
            "register",
            "/v1/tenants",
            &register,
            1,
            Operation::RegisterTenant(register.clone()),
        ),
        topup("first", 100, 2),
        // Escrow 1000 from a balance of 100: refused after it wrote the token's row and
        // opened its escrow account, which must be undone.
        job(
            &tenant(),
            "buy",
            "/v1/tokens",
            &too_dear,
            3,
            Operation::Buy(too_dear.clone()),
        ),
        // The same key and body again, newly signed: the first answer, and no second credit.
        topup("first", 100, 4),
        // The same key with another body.
        topup("first", 70, 5),
        topup("second", 25, 6),
    ] {
        batch.push(job);
        answers.push(answer);
    }
    let mut state = WriterState::new(0);
    let again = commit_batch(&broker, batch, &mut state).await;
    assert!(again.is_empty(), "nothing lost a race: {again:?}");
    assert_eq!(
        state.careful_left, CAREFUL_BATCHES,
        "the refusal made the batch run again with savepoints"
    );
    // The writer's kept connection goes back to the pool, which `close` waits for.
    drop(state);
    let mut got = Vec::new();
    for answer in answers {
        got.push(answer.await.expect("every request is answered"));
    }
    let statuses: Vec<u16> = got.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [201, 200, 402, 200, 409, 200], "{got:?}");
    assert_eq!(balance_in(&got[1]), 100);
    assert_eq!(got[3], got[1], "a retry gets the stored answer");
    assert_eq!(balance_in(&got[5]), 125);

    let mut conn = broker.db.pool().acquire().await.expect("a connection");
    let account = crate::ledger::tenant_account(&tenant().verifying_key());
    let balance = crate::ledger::balance(&mut conn, &account)
        .await
        .expect("read");
    assert_eq!(balance, Some(125));
    let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
        .fetch_one(&mut *conn)
        .await
        .expect("count tokens");
    assert_eq!(tokens, 0, "the refused purchase left its token behind");
    let escrow = crate::ledger::balance(&mut conn, &crate::ledger::escrow_account(&token_id))
        .await
        .expect("read");
    assert_eq!(
        escrow, None,
        "the refused purchase left its escrow account behind"
    );
    let refusal = crate::idempotency::look_up(
        &mut conn,
        &KeyedRequest {
            signer: key_hex(&tenant().verifying_key()),
            key: "buy".into(),
            hash: request_hash(
                "POST",
                "/v1/tokens",
                &serde_json::to_vec(&too_dear).expect("encode"),
            ),
            signature: "ff".into(),
        },
    )
    .await
    .expect("look up the refusal");
    assert!(
        matches!(&refusal, crate::idempotency::Claimed::Answered(stored) if stored.status == 402),
        "the refusal is kept under its key: {refusal:?}"
    );
    drop(conn);
    let report = crate::check::check(broker.db.pool()).await.expect("check");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    broker.db.close().await;
}

#[path = "group_commit_redeem_tests.rs"]
mod redeem;

#[tokio::test]
async fn sqlite_one_batch_isolates_requests() {
    let dir = std::env::temp_dir().join(format!("group-commit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    one_batch_isolates_requests(&Db::default_url(&dir)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_one_batch_isolates_requests() {
    let url = postgres_database().await;
    one_batch_isolates_requests(&url).await;
}

/// A straight run that meets a refusal is rolled back whole: the tenant it registered is
/// neither in the database nor remembered as a known signer. The careful run then commits
/// the registration, and only then is the tenant remembered.
async fn rolled_back_signers_are_not_remembered(url: &str) {
    let broker = broker(url).await;
    let now = broker.clock.now();
    let register = NewTenant {
        tenant_key: tenant().verifying_key(),
    };
    let dear = BuyToken {
        token_id: TokenId([0x71; 16]),
        chain_root: Link([3; 32]),
        chain_length: 10,
        price_per_link: 1,
        link_period_ms: 1000,
        image_digest: ImageDigest([1; 32]),
        vcpus: 1,
        memory_mib: 64,
        not_before: now - 10,
        expiry: now + 3600,
    };
    let (first, _) = job(
        &operator(),
        "register",
        "/v1/tenants",
        &register,
        1,
        Operation::RegisterTenant(register.clone()),
    );
    // No balance: refused after the tenant was resolved (and learned) in the same run.
    let (second, _) = job(
        &tenant(),
        "buy",
        "/v1/tokens",
        &dear,
        2,
        Operation::Buy(dear.clone()),
    );
    let batch = vec![first, second];
    let straight = run_batch(&broker, &batch, 0, Mode::Straight)
        .await
        .expect("the transaction itself works");
    assert!(straight.is_none(), "the refusal aborts the straight run");
    let key = tenant().verifying_key();
    assert!(
        broker.known.get(Role::Tenant, &key).is_none(),
        "a registration that rolled back is remembered"
    );
    let mut conn = broker.db.pool().acquire().await.expect("a connection");
    assert!(
        !crate::store::tenant_exists(&mut conn, &key)
            .await
            .expect("read"),
        "the straight run left its registration behind"
    );
    drop(conn);

    let outcomes = run_batch(&broker, &batch, 0, Mode::Careful)
        .await
        .expect("the transaction itself works")
        .expect("a careful run always completes");
    let statuses: Vec<u16> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Outcome::Answer(stored) => stored.status,
            Outcome::Again => 0,
        })
        .collect();
    assert_eq!(statuses, [201, 402]);
    assert!(
        matches!(broker.known.get(Role::Tenant, &key), Some(Principal::Tenant(k)) if k == key),
        "the committed registration is remembered"
    );
    assert!(
        broker.known.get(Role::Host, &key).is_none(),
        "a tenant is not known as a host"
    );
    let report = crate::check::check(broker.db.pool()).await.expect("check");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    broker.db.close().await;
}

#[tokio::test]
async fn sqlite_rolled_back_signers_are_not_remembered() {
    let dir = std::env::temp_dir().join(format!("group-commit-known-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    rolled_back_signers_are_not_remembered(&Db::default_url(&dir)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_rolled_back_signers_are_not_remembered() {
    let url = postgres_database().await;
    rolled_back_signers_are_not_remembered(&url).await;
}

/// A straight batch keeps each request's view exact although its keys are looked up at
/// once and its answers written at the end: a retry of a key answered earlier in the same
/// batch gets that answer and moves nothing, and the answers reach the database.
async fn straight_batch_answers_retries_from_itself(url: &str) {
    let broker = broker(url).await;
    let register = NewTenant {
        tenant_key: tenant().verifying_key(),
    };
    let (first, _) = job(
        &operator(),
        "register",
        "/v1/tenants",
        &register,
        1,
        Operation::RegisterTenant(register.clone()),
    );
    let (second, _) = topup("first", 100, 2);
    // The same key and body, newly signed: the answer of the request before it.
    let (third, _) = topup("first", 100, 3);
    let (fourth, _) = topup("second", 25, 4);
    let batch = vec![first, second, third, fourth];
    let outcomes = run_batch(&broker, &batch, 0, Mode::Straight)
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
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [201, 200, 200, 200], "{answers:?}");
    assert_eq!(answers[2], answers[1], "a retry gets the stored answer");
    assert_eq!(balance_in(&answers[3]), 125);

    // The deferred answers were written: a later batch's look-up finds them, and another
    // body under the same key is refused.
    let (again, _) = topup("second", 25, 5);
    let (other, _) = topup("second", 30, 6);
    let mut conn = broker.db.pool().acquire().await.expect("a connection");
    let found = crate::idempotency::look_up(&mut conn, &again.keyed.request)
        .await
        .expect("look up");
    assert!(
        matches!(&found, crate::idempotency::Claimed::Answered(stored) if *stored == answers[3]),
        "{found:?}"
    );
    let mismatch = crate::idempotency::look_up(&mut conn, &other.keyed.request)
        .await
        .expect("look up");
    assert_eq!(mismatch, crate::idempotency::Claimed::Mismatch);
    let account = crate::ledger::tenant_account(&tenant().verifying_key());
    let balance = crate::ledger::balance(&mut conn, &account)
        .await
        .expect("read");
    assert_eq!(balance, Some(125), "the retry moved nothing");
    drop(conn);
    let report = crate::check::check(broker.db.pool()).await.expect("check");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    broker.db.close().await;
}

#[tokio::test]
async fn sqlite_straight_batch_answers_retries_from_itself() {
    let dir = std::env::temp_dir().join(format!("group-commit-straight-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    straight_batch_answers_retries_from_itself(&Db::default_url(&dir)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_straight_batch_answers_retries_from_itself() {
    let url = postgres_database().await;
    straight_batch_answers_retries_from_itself(&url).await;
}
