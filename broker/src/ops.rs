//! The requests that move money or change a lease, each run inside one transaction.

use laundromat_api::types::{
    Account, BuyToken, Handover, Host, NewTenant, Purchase, Redeem, RedeemBatch, Refund, Release,
    Topup,
};
use serde::Serialize;
use sqlx::AnyConnection;
use token::{BootToken, HostId, SignedClaim, SignedToken, TokenId, VerifiedClaim, TOKEN_VERSION};

use crate::db::to_db;
use crate::deferred::Deferred;
use crate::error::ServiceError;
use crate::ledger::{self, HostTransfer, Movement};
use crate::redemption;
use crate::rules::Credit;
use crate::service::Config;
use crate::store::{self, key_hex, HostRow};

/// Who may send an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Operator,
    Tenant,
    Host,
}

/// The signer of a request, resolved against the registry.
#[derive(Debug, Clone)]
pub enum Principal {
    Operator,
    Tenant(token::VerifyingKey),
    Host(HostRow),
}

#[derive(Debug, Clone)]
pub enum Operation {
    RegisterTenant(NewTenant),
    RegisterHost(Host),
    Topup(Topup),
    Buy(BuyToken),
    Refund(TokenId),
    Acquire(TokenId),
    Handover(TokenId, Handover),
    Confirm(TokenId),
    Cancel(TokenId),
    Release(TokenId, Release),
    Redeem(Redeem),
    RedeemBatch(RedeemBatch),
}

/// What an operation needs besides its body.
pub struct Context<'a> {
    pub config: &'a Config,
    pub now: u64,
    /// Unique per (signer, idempotency key): names the transfers the request makes.
    pub request_id: &'a str,
    /// This request's credits to hosts, applied at the end of its transaction.
    pub held: &'a ledger::HeldCredits,
    /// The credits to hosts held by the requests before this one in the same transaction.
    pub held_before: &'a ledger::HeldCredits,
    /// In a straight batch, where ledger rows wait to be written at its end.
    pub deferred: Option<&'a Deferred>,
}

impl Context<'_> {
    /// What the transaction holds for `account` so far, beyond its stored balance.
    pub(crate) fn held_for(&self, account: &str) -> u64 {
        self.held
            .of(account)
            .saturating_add(self.held_before.of(account))
    }
}

/// A successful answer: status and JSON body.
pub type Answer = (u16, serde_json::Value);

pub(crate) fn answer<T: Serialize>(status: u16, body: &T) -> Result<Answer, ServiceError> {
    let value = serde_json::to_value(body)
        .map_err(|error| ServiceError::BadRequest(format!("unencodable answer: {error}")))?;
    Ok((status, value))
}

impl Operation {
    pub fn role(&self) -> Role {
        match self {
            Self::RegisterTenant(_) | Self::RegisterHost(_) | Self::Topup(_) => Role::Operator,
            Self::Buy(_) | Self::Refund(_) => Role::Tenant,
            _ => Role::Host,
        }
    }

    /// The label of the operation in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RegisterTenant(_) => "register_tenant",
            Self::RegisterHost(_) => "register_host",
            Self::Topup(_) => "topup",
            Self::Buy(_) => "buy",
            Self::Refund(_) => "refund",
            Self::Acquire(_) => "lease_acquire",
            Self::Handover(..) => "lease_handover",
            Self::Confirm(_) => "lease_confirm",
            Self::Cancel(_) => "lease_cancel",
            Self::Release(..) => "lease_release",
            Self::Redeem(_) => "redeem",
            Self::RedeemBatch(_) => "redeem_batch",
        }
    }

    pub async fn run(
        &self,
        ctx: &Context<'_>,
        conn: &mut AnyConnection,
        principal: &Principal,
    ) -> Result<Answer, ServiceError> {
        match (self, principal) {
            (Self::RegisterTenant(body), Principal::Operator) => {
                register_tenant(conn, body, ctx).await
            }
            (Self::RegisterHost(body), Principal::Operator) => register_host(conn, body, ctx).await,
            (Self::Topup(body), Principal::Operator) => topup(conn, body, ctx).await,
            (Self::Buy(body), Principal::Tenant(key)) => buy(conn, key, body, ctx).await,
            (Self::Refund(id), Principal::Tenant(key)) => {
                let refund = refund(conn, id, Some(key), ctx.config, ctx.now).await?;
                answer(200, &refund)
            }
            (Self::Redeem(body), Principal::Host(host)) => {
                redemption::redeem(conn, host, body, ctx).await
            }
            (Self::RedeemBatch(body), Principal::Host(host)) => {
                redemption::redeem_batch(conn, host, body, ctx).await
            }
            (op, Principal::Host(host)) => lease(conn, host, op, ctx).await,
            _ => Err(ServiceError::NotOperator),
        }
    }
}

async fn register_tenant(
    conn: &mut AnyConnection,
    body: &NewTenant,
    ctx: &Context<'_>,
) -> Result<Answer, ServiceError> {
    if store::tenant_exists(conn, &body.tenant_key).await? {
        return Err(ServiceError::Conflict(
            "the tenant is already registered".into(),
        ));
    }
    sqlx::query("INSERT INTO tenants (tenant_key, created_at) VALUES ($1, $2)")
        .bind(key_hex(&body.tenant_key))
        .bind(to_db(ctx.now).unwrap_or(0))
        .execute(&mut *conn)
        .await?;
    ledger::open_account(conn, &ledger::tenant_account(&body.tenant_key), "tenant").await?;
    answer(
        201,
        &Account {
            tenant_key: body.tenant_key,
            balance: 0,
        },
    )
}

async fn register_host(
    conn: &mut AnyConnection,
    body: &Host,
    ctx: &Context<'_>,
) -> Result<Answer, ServiceError> {
    if store::host_by_id(conn, &body.host_id).await?.is_some() {
        return Err(ServiceError::Conflict(format!(
            "host {} is already registered",
            body.host_id
        )));
    }
    if store::host_by_key(conn, &body.host_key).await?.is_some() {
        return Err(ServiceError::Conflict(
            "another host is registered with this key".into(),
        ));
    }
    sqlx::query(
        "INSERT INTO hosts (host_id, host_key, cluster_id, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(body.host_id.to_string())
    .bind(key_hex(&body.host_key))
    .bind(body.cluster_id.to_string())
    .bind(to_db(ctx.now).unwrap_or(0))
    .execute(&mut *conn)
    .await?;
    ledger::open_account(conn, &ledger::host_account(&body.host_id), "host").await?;
    answer(201, body)
}

async fn topup(
    conn: &mut AnyConnection,
    body: &Topup,
    ctx: &Context<'_>,
) -> Result<Answer, ServiceError> {
    if body.amount == 0 {
        return Err(ServiceError::Unprocessable(
            "a top-up of 0 moves nothing".into(),
        ));
    }
    if !store::tenant_exists(conn, &body.tenant_key).await? {
        return Err(ServiceError::NotFound("the tenant".into()));
    }
    let account = ledger::tenant_account(&body.tenant_key);
    let id = format!("topup:{}", ctx.request_id);
    ledger::transfer(
        conn,
        Movement {
            id: &id,
            from: ledger::MINT,
            to: &account,
            amount: body.amount,
            kind: "topup",
            at: ctx.now,
        },
    )
    .await?;
    let balance = ledger::balance(conn, &account).await?.unwrap_or(0);
    answer(
        200,
        &Account {
            tenant_key: body.tenant_key,
            balance,
        },
    )
}

async fn buy(
    conn: &mut AnyConnection,
    tenant: &token::VerifyingKey,
    body: &BuyToken,
    ctx: &Context<'_>,
) -> Result<Answer, ServiceError> {
    let config = ctx.config;
    if body.price_per_link == 0 && !config.allow_free_tokens {
        return Err(ServiceError::Unprocessable(
            "a price of 0 is refused: this broker does not sell free tokens".into(),
        ));
    }
    let token = BootToken {
        version: TOKEN_VERSION,
        broker_key_id: config.key_id,
        token_id: body.token_id,
        tenant_key: *tenant,
        cluster_id: config.cluster_id,
        image_digest: body.image_digest,
        vcpus: body.vcpus,
        memory_mib: body.memory_mib,
        price_per_link: body.price_per_link,
        link_period_ms: body.link_period_ms,
        chain_root: body.chain_root,
        chain_length: body.chain_length,
        not_before: body.not_before,
        expiry: body.expiry,
    };
    token
        .validate()
        .map_err(|error| ServiceError::Unprocessable(error.to_string()))?;
    if token.expiry <= ctx.now {
        return Err(ServiceError::Unprocessable(format!(
            "the token would expire at {}, which is not after now ({})",
            token.expiry, ctx.now
        )));
    }
    let escrow = token.escrow().unwrap_or(u64::MAX);
    let (Some(escrow_db), Some(_), Some(_)) = (
        to_db(escrow),
        to_db(token.expiry),
        to_db(token.chain_length),
    ) else {
        return Err(ServiceError::Unprocessable(
            "the escrow or the expiry is too large for the ledger".into(),
        ));
    };
    let seen: Option<String> =
        sqlx::query_scalar("SELECT token_id FROM tokens WHERE token_id = $1")
            .bind(body.token_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    if seen.is_some() {
        return Err(ServiceError::Conflict(format!(
            "token id {} has been used before",
            body.token_id
        )));
    }
    let signed = SignedToken::sign(token, &config.signing_key)
        .map_err(|error| ServiceError::Unprocessable(error.to_string()))?;
    sqlx::query(
        "INSERT INTO tokens (token_id, tenant_key, signed_token, chain_root, chain_length, \
         price_per_link, expiry, refunded, lock_version, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, $8)",
    )
    .bind(body.token_id.to_string())
    .bind(key_hex(tenant))
    .bind(token::hex::encode(&signed.to_bytes()))
    .bind(body.chain_root.to_string())
    .bind(to_db(body.chain_length).unwrap_or(0))
    .bind(to_db(body.price_per_link).unwrap_or(0))
    .bind(to_db(body.expiry).unwrap_or(0))
    .bind(to_db(ctx.now).unwrap_or(0))
    .execute(&mut *conn)
    .await?;
    let escrow_account = ledger::escrow_account(&body.token_id);
    ledger::open_account(conn, &escrow_account, "escrow").await?;
    let tenant_account = ledger::tenant_account(tenant);
    let id = format!("buy:{}", body.token_id);
    ledger::transfer(
        conn,
        Movement {
            id: &id,
            from: &tenant_account,
            to: &escrow_account,
            amount: escrow,
            kind: "purchase",
            at: ctx.now,
        },
    )
    .await?;
    let balance = ledger::balance(conn, &tenant_account).await?.unwrap_or(0);
    debug_assert!(escrow_db >= 0);
    answer(
        201,
        &Purchase {
            token: signed,
            escrow,
            balance,
        },
    )
}

/// Returns a token's unredeemed escrow to its tenant, once its expiry plus the grace period
/// has passed. `owner` is the tenant asking, or `None` for the broker's own sweeper.
pub async fn refund(
    conn: &mut AnyConnection,
    id: &TokenId,
    owner: Option<&token::VerifyingKey>,
    config: &Config,
    now: u64,
) -> Result<Refund, ServiceError> {
    let row = store::load_token(conn, id, true).await?;
    if owner.is_some_and(|owner| *owner != row.tenant_key) {
        return Err(ServiceError::NotFound(format!("token {id} of this tenant")));
    }
    let due = row.expiry.saturating_add(config.refund_grace_secs);
    if !row.book.refunded && now < due {
        return Err(ServiceError::Conflict(format!(
            "the token's escrow is refundable from {due} (expiry plus grace), and it is {now}"
        )));
    }
    let mut book = row.book.clone();
    let links = book.refund()?;
    let amount = links * book.price_per_link;
    let tenant_account = ledger::tenant_account(&row.tenant_key);
    let transfer_id = format!("refund:{id}");
    ledger::transfer(
        conn,
        Movement {
            id: &transfer_id,
            from: &ledger::escrow_account(id),
            to: &tenant_account,
            amount,
            kind: "refund",
            at: now,
        },
    )
    .await?;
    store::save_book(conn, &row.book, &book).await?;
    let balance = ledger::balance(conn, &tenant_account).await?.unwrap_or(0);
    Ok(Refund { amount, balance })
}

pub(crate) async fn pay_credit(
    conn: &mut AnyConnection,
    ctx: &Context<'_>,
    token_id: &TokenId,
    credit: Option<Credit>,
    when: HostTransfer<'_>,
) -> Result<u64, ServiceError> {
    let Some(credit) = credit else {
        return Ok(0);
    };
    let id = format!("redeem:{token_id}:{}:{}", credit.range, credit.to_index);
    let host_account = ledger::host_account(&credit.host);
    ledger::transfer_to_host(
        conn,
        Movement {
            id: &id,
            from: &ledger::escrow_account(token_id),
            to: &host_account,
            amount: credit.amount,
            kind: "redemption",
            at: ctx.now,
        },
        ctx.held,
        when,
    )
    .await?;
    Ok(credit.amount)
}

pub(crate) fn verify_claim(
    host: &HostRow,
    claim: &SignedClaim,
) -> Result<VerifiedClaim, ServiceError> {
    claim
        .verify(host.0, &host.1)
        .map_err(|error| ServiceError::Unprocessable(error.to_string()))
}

async fn registered_in_cluster(
    conn: &mut AnyConnection,
    id: &HostId,
    config: &Config,
) -> Result<(), ServiceError> {
    let host = store::host_by_id(conn, id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("host {id}")))?;
    if host.2 != config.cluster_id {
        return Err(ServiceError::Unprocessable(format!(
            "host {id} is in cluster {}, not this broker's cluster {}",
            host.2, config.cluster_id
        )));
    }
    Ok(())
}

async fn lease(
    conn: &mut AnyConnection,
    host: &HostRow,
    op: &Operation,
    ctx: &Context<'_>,
) -> Result<Answer, ServiceError> {
    let max = ctx.config.max_claim_distance;
    let (Operation::Acquire(id)
    | Operation::Handover(id, _)
    | Operation::Confirm(id)
    | Operation::Cancel(id)
    | Operation::Release(id, _)) = op
    else {
        return Err(ServiceError::NotOperator);
    };
    let row = store::load_token(conn, id, true).await?;
    let mut book = row.book.clone();
    let credit = match op {
        Operation::Acquire(_) => {
            registered_in_cluster(conn, &host.0, ctx.config).await?;
            if ctx.now >= row.expiry {
                return Err(ServiceError::Conflict(format!(
                    "token {id} expired at {}",
                    row.expiry
                )));
            }
            book.acquire(host.0)?;
            None
        }
        Operation::Handover(_, body) => {
            registered_in_cluster(conn, &body.to_host, ctx.config).await?;
            let claim = verify_claim(host, &body.final_claim)?;
            book.prepare_handover(body.to_host, &claim, max)?;
            None
        }
        Operation::Confirm(_) => book.confirm_handover(host.0)?,
        Operation::Cancel(_) => {
            book.cancel_handover(host.0)?;
            None
        }
        Operation::Release(_, body) => {
            let claim = body
                .final_claim
                .as_ref()
                .map(|c| verify_claim(host, c))
                .transpose()?;
            book.release(host.0, claim.as_ref(), max)?
        }
        _ => None,
    };
    let when = ctx
        .deferred
        .map_or(HostTransfer::Now, HostTransfer::RowLater);
    pay_credit(conn, ctx, id, credit, when).await?;
    store::save_book(conn, &row.book, &book).await?;
    let row = store::TokenRow { book, ..row };
    answer(200, &store::token_state(conn, &row).await?)
}
