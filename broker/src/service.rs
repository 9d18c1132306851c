//! The broker: configuration, the one path every money-moving request takes (authenticate,
//! claim the idempotency key, run, record, commit), the reads, and the refund sweeper.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use laundromat_api::types::{
    Account, BrokerInfo, ErrorBody, Host, Statement, TokenState, Transfer,
};
use laundromat_api::RequestSignature;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};
use token::{ClusterId, HostId, KeyId, SigningKey, TokenId, VerifyingKey};

use crate::clock::Clock;
use crate::db::{from_db, is_retryable, to_db, Backend, Db};
use crate::deferred::Deferred;
use crate::error::ServiceError;
use crate::group_commit::{self, Committer};
use crate::idempotency::{self, Claimed, KeyedRequest, Stored};
use crate::known::{KnownSigners, Learned};
use crate::ledger::{self, HeldCredits};
use crate::metrics::Metrics;
use crate::ops::{self, Context, Operation, Principal, Role};
use crate::store::{self, key_hex};

/// How often a transaction that lost a race is run again before the request fails.
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// The broker's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_id: ClusterId,
    pub key_id: KeyId,
    pub signing_key: SigningKey,
    pub operator_key: VerifyingKey,
    pub max_claim_distance: u64,
    pub refund_grace_secs: u64,
    pub allow_free_tokens: bool,
}

/// The key id of a broker key: the first four bytes of SHA-256 over the public key, so
/// that a rotated key gets a new id without any bookkeeping.
pub fn key_id_of(key: &VerifyingKey) -> KeyId {
    let digest = Sha256::digest(key.as_bytes());
    KeyId(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]))
}

/// A request whose signature has been checked.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub signature: RequestSignature,
}

pub struct Broker {
    pub db: Db,
    pub config: Config,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Registered signers seen by committed transactions (see [`crate::known`]).
    pub known: KnownSigners,
    /// The single writer of money-moving requests, started by the first one.
    committer: OnceLock<Committer>,
}

/// A request ready for the writer.
#[derive(Debug, Clone)]
pub(crate) struct Keyed {
    pub signer_key: VerifyingKey,
    pub request: KeyedRequest,
    /// Unique per (signer, idempotency key): names the transfers the request makes.
    pub request_id: String,
}

/// What [`Broker::apply`] did with a request.
#[derive(Debug)]
pub(crate) enum Applied {
    /// It ran, or was answered before; what it wrote is to be kept.
    Done(Stored),
    /// It was refused: what it wrote is to be undone, and the refusal recorded.
    Refused(Stored),
}

/// The stored form of a refusal.
pub fn error_answer(error: &ServiceError) -> Stored {
    let (status, code) = error.status_and_code();
    let body = ErrorBody {
        error: error.to_string(),
        code: code.to_owned(),
    };
    Stored {
        status,
        body: serde_json::to_string(&body).unwrap_or_default(),
    }
}

impl Broker {
    pub fn new(db: Db, config: Config, clock: Clock) -> Self {
        Self {
            db,
            config,
            clock,
            metrics: Metrics::default(),
            known: KnownSigners::default(),
            committer: OnceLock::new(),
        }
    }

    pub fn info(&self) -> BrokerInfo {
        BrokerInfo {
            cluster_id: self.config.cluster_id,
            key_id: self.config.key_id,
            public_key: self.config.signing_key.verifying_key(),
            max_claim_distance: self.config.max_claim_distance,
            refund_grace_secs: self.config.refund_grace_secs,
            allow_free_tokens: self.config.allow_free_tokens,
        }
    }

    /// Finds the signer of a request in the registry, or among the signers known to be
    /// registered. What it finds in the registry goes to `learned`, to be remembered once
    /// the transaction has committed.
    async fn resolve(
        &self,
        conn: &mut AnyConnection,
        key: &VerifyingKey,
        role: Role,
        learned: &Learned,
    ) -> Result<Principal, ServiceError> {
        if let Some(known) = self.known.get(role, key) {
            return Ok(known);
        }
        let principal = self.look_up_signer(conn, key, role).await?;
        if role != Role::Operator {
            learned.add(role, key, &principal);
        }
        Ok(principal)
    }

    async fn look_up_signer(
        &self,
        conn: &mut AnyConnection,
        key: &VerifyingKey,
        role: Role,
    ) -> Result<Principal, ServiceError> {
        match role {
            Role::Operator if *key == self.config.operator_key => Ok(Principal::Operator),
            Role::Operator => Err(ServiceError::NotOperator),
            Role::Tenant if store::tenant_exists(conn, key).await? => Ok(Principal::Tenant(*key)),
            Role::Host => match store::host_by_key(conn, key).await? {
                Some(host) => Ok(Principal::Host(host)),
                None => Err(ServiceError::UnknownSigner(key_hex(key))),
            },
            Role::Tenant => Err(ServiceError::UnknownSigner(key_hex(key))),
        }
    }

    /// Runs a money-moving request exactly once per idempotency key, and returns the answer
    /// (status and JSON body) to send. The request joins the next group commit, and is
    /// answered once that commit is durable.
    pub async fn execute(self: &Arc<Self>, request: &SignedRequest, op: Operation) -> Stored {
        let started = Instant::now();
        let name = op.name();
        let answer = match self.prepare(request) {
            Ok(keyed) => {
                let committer = self.committer.get_or_init(|| {
                    group_commit::spawn(Arc::downgrade(self), self.db.pool(), self.writers())
                });
                committer.submit(keyed, op).await
            }
            Err(error) => error_answer(&error),
        };
        self.metrics
            .observe(name, answer.status, started.elapsed().as_secs_f64());
        answer
    }

    /// How many transactions run money-moving requests at once.
    fn writers(&self) -> usize {
        match self.db.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => group_commit::POSTGRES_WRITERS,
        }
    }

    /// What the writer needs of a request besides its operation, worked out before it
    /// queues, so the single writer does as little as it can.
    fn prepare(&self, request: &SignedRequest) -> Result<Keyed, ServiceError> {
        let signature = &request.signature;
        let key = signature
            .idempotency_key
            .clone()
            .ok_or(ServiceError::MissingIdempotencyKey)?;
        let signer = key_hex(&signature.key);
        let request_id = {
            let digest = Sha256::digest(format!("{signer}/{key}"));
            token::hex::encode(&digest[..16])
        };
        Ok(Keyed {
            signer_key: signature.key,
            request_id,
            request: KeyedRequest {
                hash: idempotency::request_hash(&request.method, &request.path, &request.body),
                signature: token::hex::encode(&signature.signature.to_bytes()),
                signer,
                key,
            },
        })
    }

    /// Runs one request inside the writer's transaction: authorizes the signer, consults
    /// the idempotency key, runs the operation and records its answer. A refusal is returned
    /// as [`Applied::Refused`]: the caller undoes the request's effects, then records it.
    /// `held` collects the batch's credits to hosts: this request's join them when it
    /// succeeds; `learned`, the signers found in the registry. In a straight batch,
    /// `deferred` holds the batch's keys and the writes it makes at its end.
    pub(crate) async fn apply(
        &self,
        conn: &mut AnyConnection,
        keyed: &Keyed,
        op: &Operation,
        held: &HeldCredits,
        learned: &Learned,
        deferred: Option<&Deferred>,
    ) -> Result<Applied, ServiceError> {
        let now = self.clock.now();
        let principal = self
            .resolve(conn, &keyed.signer_key, op.role(), learned)
            .await?;
        let claimed = match deferred {
            Some(deferred) => deferred.look_up(&keyed.request),
            None => idempotency::look_up(conn, &keyed.request).await?,
        };
        match claimed {
            Claimed::Fresh => {}
            Claimed::Answered(stored) => return Ok(Applied::Done(stored)),
            Claimed::Mismatch => return Err(ServiceError::IdempotencyMismatch),
            Claimed::Replayed => return Err(ServiceError::Replayed),
        }
        if let Some(deferred) = deferred {
            // Only redemptions read and change tokens through the batch's deferred state;
            // anything else reads the database, so it must hold what is pending.
            if !matches!(op, Operation::Redeem(_) | Operation::RedeemBatch(_)) {
                deferred.settle(conn).await?;
            }
        }
        let own = HeldCredits::default();
        let ctx = Context {
            config: &self.config,
            now,
            request_id: &keyed.request_id,
            held: &own,
            held_before: held,
            deferred,
        };
        match op.run(&ctx, conn, &principal).await {
            Ok((status, body)) => {
                let stored = Stored {
                    status,
                    body: body.to_string(),
                };
                match deferred {
                    Some(deferred) => deferred.record(&keyed.request, &stored, now),
                    None => idempotency::record(conn, &keyed.request, &stored, now).await?,
                }
                held.absorb(own)?;
                Ok(Applied::Done(stored))
            }
            Err(error) if error.is_answer() => Ok(Applied::Refused(error_answer(&error))),
            Err(error) => Err(error),
        }
    }

    async fn read_conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, ServiceError> {
        Ok(self.db.pool().acquire().await?)
    }

    async fn tenant(
        &self,
        conn: &mut AnyConnection,
        key: &VerifyingKey,
    ) -> Result<u64, ServiceError> {
        if !store::tenant_exists(conn, key).await? {
            return Err(ServiceError::UnknownSigner(key_hex(key)));
        }
        Ok(ledger::balance(conn, &ledger::tenant_account(key))
            .await?
            .unwrap_or(0))
    }

    pub async fn account(&self, key: &VerifyingKey) -> Result<Account, ServiceError> {
        let mut conn = self.read_conn().await?;
        let balance = self.tenant(&mut conn, key).await?;
        Ok(Account {
            tenant_key: *key,
            balance,
        })
    }

    /// The tenant's balance and its newest 100 transfers.
    pub async fn statement(&self, key: &VerifyingKey) -> Result<Statement, ServiceError> {
        let mut conn = self.read_conn().await?;
        let balance = self.tenant(&mut conn, key).await?;
        let account = ledger::tenant_account(key);
        let rows = sqlx::query(
            "SELECT id, from_account, to_account, amount, kind, at FROM transfers \
             WHERE from_account = $1 OR to_account = $1 ORDER BY at DESC, id LIMIT 100",
        )
        .bind(&account)
        .fetch_all(&mut *conn)
        .await?;
        let transfers = rows
            .iter()
            .map(|row| {
                Ok(Transfer {
                    id: row.try_get(0)?,
                    from: row.try_get(1)?,
                    to: row.try_get(2)?,
                    amount: from_db(row.try_get(3)?),
                    kind: row.try_get(4)?,
                    at: from_db(row.try_get(5)?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Statement {
            tenant_key: *key,
            balance,
            transfers,
        })
    }

    pub async fn token_state(&self, id: &TokenId) -> Result<TokenState, ServiceError> {
        let mut conn = self.read_conn().await?;
        let row = store::load_token(&mut conn, id, false).await?;
        store::token_state(&mut conn, &row).await
    }

    pub async fn hosts(&self) -> Result<Vec<Host>, ServiceError> {
        let mut conn = self.read_conn().await?;
        Ok(store::hosts(&mut conn)
            .await?
            .into_iter()
            .map(|(host_id, host_key, cluster_id)| Host {
                host_id,
                host_key,
                cluster_id,
            })
            .collect())
    }

    pub async fn host(&self, id: &HostId) -> Result<Host, ServiceError> {
        let mut conn = self.read_conn().await?;
        let (host_id, host_key, cluster_id) = store::host_by_id(&mut conn, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("host {id}")))?;
        Ok(Host {
            host_id,
            host_key,
            cluster_id,
        })
    }

    /// Refunds every token whose expiry plus grace has passed; returns how many. Each refund
    /// is its own transaction, named by the token, so it happens exactly once even if a
    /// tenant asks at the same moment.
    pub async fn refund_due(&self) -> Result<usize, ServiceError> {
        let now = self.clock.now();
        let cutoff = now.saturating_sub(self.config.refund_grace_secs);
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT token_id FROM tokens WHERE refunded = 0 AND expiry <= $1 ORDER BY expiry LIMIT 1000",
        )
        .bind(to_db(cutoff).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await?;
        let mut refunded = 0;
        for id in ids {
            let id: TokenId = id.parse().map_err(|_| ServiceError::Corrupt("token id"))?;
            for attempt in 1..=MAX_ATTEMPTS {
                let mut write = self.db.begin().await?;
                match ops::refund(&mut write.tx, &id, None, &self.config, now).await {
                    Ok(refund) => {
                        write.tx.commit().await?;
                        tracing::info!(token = %id, amount = refund.amount, "refunded expired token");
                        refunded += 1;
                        break;
                    }
                    Err(ServiceError::Database(error))
                        if is_retryable(&error) && attempt < MAX_ATTEMPTS =>
                    {
                        continue
                    }
                    // Refunded meanwhile by its tenant: nothing left to do.
                    Err(ServiceError::Rule(crate::rules::RuleError::Refunded)) => break,
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(refunded)
    }

    /// Gauges for `/metrics`: tokens, and money in each kind of account.
    pub async fn gauges(&self) -> Result<Vec<(&'static str, &'static str, i64)>, ServiceError> {
        let pool = self.db.pool();
        let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
            .fetch_one(pool)
            .await?;
        let mut gauges = vec![("broker_tokens", "Tokens sold.", tokens)];
        for (name, help, kind) in [
            (
                "broker_tenant_balance_total",
                "Money in tenant accounts.",
                "tenant",
            ),
            (
                "broker_escrow_total",
                "Money held in token escrow.",
                "escrow",
            ),
            (
                "broker_host_earnings_total",
                "Money earned by hosts.",
                "host",
            ),
        ] {
            let total: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE((SELECT SUM(a.balance) FROM accounts a WHERE a.kind = $1), 0) \
                 + COALESCE((SELECT SUM(s.amount) FROM account_shards s \
                 JOIN accounts a ON a.id = s.account_id WHERE a.kind = $1), 0) AS BIGINT)",
            )
            .bind(kind)
            .fetch_one(pool)
            .await?;
            gauges.push((name, help, total));
        }
        Ok(gauges)
    }
}
