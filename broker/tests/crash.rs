//! `kill -9` of the broker in the middle of a concurrent load: after a restart on the same
//! database, `broker check` passes and every request that was answered 2xx is in the ledger
//! (asked again under its idempotency key, it gets the very same answer, and its token
//! exists, and a batch of redemptions' credits are in its tokens). Both backends; the broker
//! runs as its own process.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::client::{new_idempotency_key, Client};
use common::{fresh_database, Backend, Chain, TempDir, CLUSTER};
use laundromat_api::paths;
use laundromat_api::types::{
    Account, BatchRedeemed, ClaimOutcome, Empty, Host, NewTenant, Purchase, Redeem, RedeemBatch,
    TokenState, Topup,
};
use token::{HostId, SigningKey};

const BROKER: &str = env!("CARGO_BIN_EXE_broker");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn_broker(db_url: &str, data: &Path, port: u16, operator: &SigningKey) -> Child {
    Command::new(BROKER)
        .args([
            "serve",
            "--db",
            db_url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(data)
        .args([
            "--operator-key",
            &token::hex::encode(operator.verifying_key().as_bytes()),
        ])
        .args(["--cluster", &CLUSTER.to_string()])
        .env("BROKER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start broker")
}

async fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "the broker did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request answered 2xx: enough to ask again.
#[derive(Clone)]
struct Answered {
    client: Client,
    path: String,
    body: Vec<u8>,
    key: String,
    status: u16,
    answer: Vec<u8>,
}

async fn load(
    client: Client,
    host: Client,
    host_id: HostId,
    host_key: SigningKey,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Answered>>>,
) {
    let claim = |chain: &Chain, index: u64| {
        token::Claim {
            token_id: chain.token_id,
            host_id,
            index,
            link: chain.link(index),
        }
        .sign(&host_key)
    };
    while !stop.load(Ordering::Relaxed) {
        let (chain, other) = (Chain::new(20), Chain::new(20));
        let now = broker::clock::unix_now();
        let mut steps: Vec<(Client, String, Vec<u8>)> = Vec::new();
        for chain in [&chain, &other] {
            steps.push((
                client.clone(),
                paths::TOKENS.to_owned(),
                serde_json::to_vec(&chain.buy_request(1, now)).unwrap(),
            ));
            steps.push((
                host.clone(),
                paths::lease(&chain.token_id, "acquire"),
                serde_json::to_vec(&Empty {}).unwrap(),
            ));
        }
        steps.push((
            host.clone(),
            paths::REDEMPTIONS.to_owned(),
            serde_json::to_vec(&Redeem {
                claim: claim(&chain, 7),
            })
            .unwrap(),
        ));
        // A batch: both tokens, one claim twice.
        let claims = vec![
            claim(&chain, 20),
            claim(&other, 12),
            claim(&other, 12),
            claim(&other, 20),
        ];
        steps.push((
            host.clone(),
            paths::BATCH_REDEMPTIONS.to_owned(),
            serde_json::to_vec(&RedeemBatch { claims }).unwrap(),
        ));
        for (who, path, body) in steps {
            let key = new_idempotency_key();
            match who.send_raw("POST", &path, &body, Some(&key), true).await {
                Ok(raw) if (200..300).contains(&raw.status) => log.lock().unwrap().push(Answered {
                    client: who,
                    path,
                    body,
                    key,
                    status: raw.status,
                    answer: raw.body,
                }),
                Ok(raw) => panic!(
                    "refused under load: {} {}",
                    raw.status,
                    String::from_utf8_lossy(&raw.body)
                ),
                // The broker died: this request has no answer, so it promised nothing.
                Err(_) => return,
            }
        }
    }
}

async fn kill_9_mid_load_loses_no_answered_request(backend: Backend) {
    let (db_url, _db_dir) = fresh_database(backend).await;
    let data = TempDir::new("broker-crash");
    let operator = SigningKey::from_bytes(&[0x0b; 32]);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut process = spawn_broker(&db_url, &data.0, port, &operator);
    wait_ready(&base).await;
    let admin = Client::new(&base, operator.clone());
    let host_key = SigningKey::from_bytes(&[0x91; 32]);
    let host_id = HostId([0x91; 16]);
    let _: Host = admin
        .post(
            paths::HOSTS,
            &Host {
                host_id,
                host_key: host_key.verifying_key(),
                cluster_id: CLUSTER,
            },
            &new_idempotency_key(),
        )
        .await
        .unwrap();
    let host = Client::new(&base, host_key.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut loads = Vec::new();
    for t in 0..6u8 {
        let tenant = Client::new(&base, SigningKey::from_bytes(&[0x30 + t; 32]));
        let tenant_key = tenant.key().verifying_key();
        let _: Account = admin
            .post(
                paths::TENANTS,
                &NewTenant { tenant_key },
                &new_idempotency_key(),
            )
            .await
            .unwrap();
        let _: Account = admin
            .post(
                paths::TOPUPS,
                &Topup {
                    tenant_key,
                    amount: 1_000_000,
                },
                &new_idempotency_key(),
            )
            .await
            .unwrap();
        loads.push(tokio::spawn(load(
            tenant,
            host.clone(),
            host_id,
            host_key.clone(),
            stop.clone(),
            log.clone(),
        )));
    }
    // Let the load run, then kill the broker without warning.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.lock().unwrap().len() < 60 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process.kill().expect("kill -9");
    process.wait().expect("reap");
    stop.store(true, Ordering::Relaxed);
    for load in loads {
        load.await.expect("load task");
    }
    let answered = log.lock().unwrap().clone();
    assert!(
        answered.len() >= 20,
        "only {} requests were answered before the kill",
        answered.len()
    );

    assert!(
        answered.iter().any(|a| a.path == paths::BATCH_REDEMPTIONS),
        "no batch was answered before the kill"
    );
    let mut process = spawn_broker(&db_url, &data.0, port, &operator);
    wait_ready(&base).await;
    let check = Command::new(BROKER)
        .args(["check", "--db", &db_url])
        .output()
        .expect("broker check");
    assert!(
        check.status.success(),
        "broker check failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    for request in &answered {
        let again = request
            .client
            .send_raw(
                "POST",
                &request.path,
                &request.body,
                Some(&request.key),
                true,
            )
            .await
            .expect("ask again");
        assert_eq!(
            (again.status, &again.body),
            (request.status, &request.answer),
            "{} lost its answer",
            request.path
        );
        if request.path == paths::TOKENS {
            let purchase: Purchase = serde_json::from_slice(&request.answer).unwrap();
            let state: TokenState = host
                .get(&paths::token(&purchase.token.token().token_id))
                .await
                .expect("the token survived");
            assert!(state.escrow <= 20);
        }
        if request.path == paths::BATCH_REDEMPTIONS {
            let answer: BatchRedeemed = serde_json::from_slice(&request.answer).unwrap();
            let credits: Vec<_> = answer
                .results
                .iter()
                .map(|r| match r.outcome {
                    ClaimOutcome::Credited { credit, .. } => Some(credit),
                    ClaimOutcome::Refused { .. } => None,
                })
                .collect();
            assert_eq!(credits, [Some(13), Some(12), Some(0), Some(8)]);
            let state: TokenState = host
                .get(&paths::token(&answer.results[1].token_id))
                .await
                .expect("the token survived");
            assert_eq!((state.highest_redeemed, state.escrow), (20, 0));
        }
    }
    // SIGTERM stops the broker cleanly.
    let term = Command::new("kill")
        .args(["-TERM", &process.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let status = process.wait().expect("wait");
    assert!(
        status.success(),
        "the broker exited with {status} on SIGTERM"
    );
}

both_backends!(kill_9_mid_load_loses_no_answered_request);
