//! What every broker test shares: a throwaway PostgreSQL cluster, a broker on either backend,
//! and helpers that register tenants and hosts and buy tokens.
//!
//! [`both_backends!`] turns each `async fn test(backend: Backend)` into two tests,
//! `sqlite::test` and `postgres::test`, so that every ledger test runs on both databases.
//! PostgreSQL is not optional: if its binaries are missing the postgres tests fail.
#![allow(dead_code)]

pub mod pg;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::check::{self, Report};
use broker::client::{new_idempotency_key, Client};
use broker::clock::Clock;
use broker::db::Db;
use broker::server::{self, Running};
use broker::service::{key_id_of, Broker, Config};
use laundromat_api::paths;
use laundromat_api::types::{Account, BuyToken, Host, NewTenant, Purchase, Topup};
use token::{ClusterId, HostId, ImageDigest, Link, Payer, SigningKey, TokenId};

pub const CLUSTER: ClusterId = ClusterId([0xc1; 16]);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(Backend)` as a test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty database URL on `backend`, and the directory that holds it (SQLite).
pub async fn fresh_database(backend: Backend) -> (String, Option<TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = TempDir::new("broker-sqlite");
            (Db::default_url(&dir.0), Some(dir))
        }
        Backend::Postgres => (
            pg::cluster()
                .fresh_database()
                .await
                .expect("create a database"),
            None,
        ),
    }
}

pub struct TestBroker {
    pub base: String,
    pub db_url: String,
    pub operator: SigningKey,
    pub clock: Clock,
    pub broker: Arc<Broker>,
    running: Option<Running>,
    _dir: Option<TempDir>,
}

pub struct Options {
    pub max_claim_distance: u64,
    pub refund_grace_secs: u64,
    pub allow_free_tokens: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_claim_distance: laundromat_api::claims::MAX_CLAIM_DISTANCE,
            refund_grace_secs: 100,
            allow_free_tokens: false,
        }
    }
}

impl TestBroker {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Self {
        let (db_url, dir) = fresh_database(backend).await;
        let db = Db::open(&db_url, 16).await.expect("open the database");
        let signing_key = SigningKey::from_bytes(&[0xb0; 32]);
        let operator = SigningKey::from_bytes(&[0x0b; 32]);
        let config = Config {
            cluster_id: CLUSTER,
            key_id: key_id_of(&signing_key.verifying_key()),
            signing_key,
            operator_key: operator.verifying_key(),
            max_claim_distance: options.max_claim_distance,
            refund_grace_secs: options.refund_grace_secs,
            allow_free_tokens: options.allow_free_tokens,
        };
        let clock = Clock::default();
        let broker = Arc::new(Broker::new(db, config, clock.clone()));
        let running = server::start(broker.clone(), "127.0.0.1:0", Duration::from_secs(3600))
            .await
            .expect("start the broker");
        Self {
            base: format!("http://{}", running.addr),
            db_url,
            operator,
            clock,
            broker,
            running: Some(running),
            _dir: dir,
        }
    }

    pub fn client(&self, key: SigningKey) -> Client {
        Client::new(&self.base, key).with_clock(self.clock.clone())
    }

    pub fn operator(&self) -> Client {
        self.client(self.operator.clone())
    }

    /// Registers a tenant with key seed `seed` and tops it up with `balance`.
    pub async fn tenant(&self, seed: u8, balance: u64) -> Client {
        let tenant = self.client(SigningKey::from_bytes(&[seed; 32]));
        let key = tenant.key().verifying_key();
        let _: Account = self
            .operator()
            .post(
                paths::TENANTS,
                &NewTenant { tenant_key: key },
                &new_idempotency_key(),
            )
            .await
            .expect("register tenant");
        if balance > 0 {
            let _: Account = self
                .operator()
                .post(
                    paths::TOPUPS,
                    &Topup {
                        tenant_key: key,
                        amount: balance,
                    },
                    &new_idempotency_key(),
                )
                .await
                .expect("top up");
        }
        tenant
    }

    /// Registers host `n` in the broker's cluster.
    pub async fn host(&self, n: u8) -> TestHost {
        let key = SigningKey::from_bytes(&[0x80 + n; 32]);
        let id = HostId([n; 16]);
        let _: Host = self
            .operator()
            .post(
                paths::HOSTS,
                &Host {
                    host_id: id,
                    host_key: key.verifying_key(),
                    cluster_id: CLUSTER,
                },
                &new_idempotency_key(),
            )
            .await
            .expect("register host");
        TestHost {
            id,
            key: key.clone(),
            client: self.client(key),
        }
    }

    pub async fn check(&self) -> Report {
        check::check(self.broker.db.pool()).await.expect("check")
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("shutdown");
        }
    }
}

pub struct TestHost {
    pub id: HostId,
    pub key: SigningKey,
    pub client: Client,
}

impl TestHost {
    /// Takes the lease of `chain`'s token.
    pub async fn acquire(&self, chain: &Chain) -> laundromat_api::types::TokenState {
        self.client
            .post(
                &paths::lease(&chain.token_id, "acquire"),
                &laundromat_api::types::Empty {},
                &new_idempotency_key(),
            )
            .await
            .expect("acquire the lease")
    }

    /// Redeems `claims` in one batch under a new key; panics unless the batch is answered.
    pub async fn redeem_batch(
        &self,
        claims: Vec<token::SignedClaim>,
    ) -> laundromat_api::types::BatchRedeemed {
        self.client
            .post(
                paths::BATCH_REDEMPTIONS,
                &laundromat_api::types::RedeemBatch { claims },
                &new_idempotency_key(),
            )
            .await
            .expect("the batch is answered")
    }

    /// A signed claim for link `index` of the chain behind `payer`'s token.
    pub fn claim(&self, chain: &Chain, index: u64) -> token::SignedClaim {
        token::Claim {
            token_id: chain.token_id,
            host_id: self.id,
            index,
            link: chain.link(index),
        }
        .sign(&self.key)
    }
}

/// A tenant's chain for tests, with any link on demand (the test knows the seed).
#[derive(Debug, Clone)]
pub struct Chain {
    pub token_id: TokenId,
    pub seed: Link,
    pub length: u64,
}

impl Chain {
    pub fn new(length: u64) -> Self {
        Self {
            token_id: TokenId::random(),
            seed: Link::random_seed(),
            length,
        }
    }

    pub fn link(&self, index: u64) -> Link {
        let index = index.min(self.length);
        token::LinkHasher::new(&self.token_id).toward_root(
            self.length,
            &self.seed,
            self.length - index,
        )
    }

    pub fn root(&self) -> Link {
        Payer::new(self.token_id, &self.seed, self.length)
            .expect("payer")
            .root()
    }

    /// The purchase request for this chain.
    pub fn buy_request(&self, price: u64, now: u64) -> BuyToken {
        BuyToken {
            token_id: self.token_id,
            chain_root: self.root(),
            chain_length: self.length,
            price_per_link: price,
            link_period_ms: 1000,
            image_digest: ImageDigest([7; 32]),
            vcpus: 1,
            memory_mib: 64,
            not_before: now.saturating_sub(10),
            expiry: now + 1000,
        }
    }
}

/// Buys a token for a fresh chain of `length` links at `price`.
pub async fn buy(
    broker: &TestBroker,
    tenant: &Client,
    length: u64,
    price: u64,
) -> (Chain, Purchase) {
    let chain = Chain::new(length);
    let purchase: Purchase = tenant
        .post(
            paths::TOKENS,
            &chain.buy_request(price, broker.clock.now()),
            &new_idempotency_key(),
        )
        .await
        .expect("buy token");
    (chain, purchase)
}

/// The status and code of a refusal, or a panic if the request succeeded.
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, broker::client::ClientError>,
) -> (u16, String) {
    match result {
        Err(broker::client::ClientError::Refused { status, body }) => (status, body.code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub async fn balance(tenant: &Client) -> u64 {
    let account: laundromat_api::types::Account = tenant
        .get_signed(laundromat_api::paths::ACCOUNT)
        .await
        .unwrap();
    account.balance
}

pub async fn assert_invariants(broker: &TestBroker) {
    let report = broker.check().await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}
