//! A real broker in the test's process, on SQLite in a temporary directory, started the way
//! the broker's own tests start it; and the operator and tenant requests hostd's tests need.

use std::sync::Arc;
use std::time::Duration;

use broker::client::{new_idempotency_key, Client};
use broker::db::Db;
use broker::server::{self, Running};
use broker::service::{key_id_of, Broker, Config};
use laundromat_api::paths;
use laundromat_api::types::{Account, BuyToken, Host, NewTenant, Purchase, TokenState, Topup};
use token::{HostId, Link, Payer, SigningKey, TokenId, VerifyingKey};

use super::{broker_key, now_s, tenant, Bought, CLUSTER, PRICE};

pub struct RealBroker {
    pub base: String,
    pub broker: Arc<Broker>,
    pub operator: SigningKey,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl RealBroker {
    /// A broker that accepts claims at most `max_claim_distance` links apart (small values
    /// make hosts redeem in steps).
    pub async fn start(max_claim_distance: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&Db::default_url(dir.path()), 4).await.unwrap();
        let signing_key = broker_key();
        let operator = SigningKey::from_bytes(&[0x0b; 32]);
        let config = Config {
            cluster_id: CLUSTER,
            key_id: key_id_of(&signing_key.verifying_key()),
            signing_key,
            operator_key: operator.verifying_key(),
            max_claim_distance,
            refund_grace_secs: 100,
            allow_free_tokens: false,
        };
        let broker = Arc::new(Broker::new(db, config, Default::default()));
        let running = server::start(broker.clone(), "127.0.0.1:0", Duration::from_secs(3600))
            .await
            .unwrap();
        Self {
            base: format!("http://{}", running.addr),
            broker,
            operator,
            running: Some(running),
            _dir: dir,
        }
    }

    pub fn client(&self, key: SigningKey) -> Client {
        Client::new(&self.base, key)
    }

    /// The operator registers a host.
    pub async fn register_host(&self, host_id: HostId, host_key: VerifyingKey) {
        let _: Host = self
            .client(self.operator.clone())
            .post(
                paths::HOSTS,
                &Host {
                    host_id,
                    host_key,
                    cluster_id: CLUSTER,
                },
                &new_idempotency_key(),
            )
            .await
            .unwrap();
    }

    /// Registers tenant `n` (the key `common::tenant(n)`) with `balance`.
    pub async fn register_tenant(&self, n: u8, balance: u64) {
        let operator = self.client(self.operator.clone());
        let tenant_key = tenant(n).verifying_key();
        let _: Account = operator
            .post(
                paths::TENANTS,
                &NewTenant { tenant_key },
                &new_idempotency_key(),
            )
            .await
            .unwrap();
        let _: Account = operator
            .post(
                paths::TOPUPS,
                &Topup {
                    tenant_key,
                    amount: balance,
                },
                &new_idempotency_key(),
            )
            .await
            .unwrap();
    }

    /// Tenant `n` buys a token of `links` links of `period_ms` each for a bench VM.
    pub async fn buy(
        &self,
        n: u8,
        kernel: &[u8],
        cmdline: &str,
        period_ms: u64,
        links: u64,
    ) -> Bought {
        let token_id = TokenId::random();
        let payer = Payer::new(token_id, &Link::random_seed(), links).unwrap();
        let body = BuyToken {
            token_id,
            chain_root: payer.root(),
            chain_length: links,
            price_per_link: PRICE,
            link_period_ms: period_ms,
            image_digest: token::image_digest(kernel, None, cmdline),
            vcpus: 1,
            memory_mib: 32,
            not_before: now_s() - 10,
            expiry: now_s() + 3600,
        };
        let purchase: Purchase = self
            .client(tenant(n))
            .post(paths::TOKENS, &body, &new_idempotency_key())
            .await
            .unwrap();
        Bought {
            signed: purchase.token,
            payer,
            tenant: tenant(n),
        }
    }

    pub async fn token(&self, id: &TokenId) -> TokenState {
        self.client(self.operator.clone())
            .get(&paths::token(id))
            .await
            .unwrap()
    }

    /// A host's earnings on the ledger.
    pub async fn host_balance(&self, id: &HostId) -> u64 {
        let mut conn = self.broker.db.pool().acquire().await.unwrap();
        broker::ledger::balance(&mut conn, &broker::ledger::host_account(id))
            .await
            .unwrap()
            .unwrap_or(0)
    }

    /// `broker check` on the ledger: its violations (none when the books balance).
    pub async fn check(&self) -> Vec<String> {
        broker::check::check(self.broker.db.pool())
            .await
            .unwrap()
            .violations
    }
}

impl Drop for RealBroker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stopper().send(true);
        }
    }
}
