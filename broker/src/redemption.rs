//! Redemptions: one claim (`POST /v1/redemptions`), or many claims of one host in one signed
//! request (`POST /v1/redemptions/batch`), by the same rules and with the same writes.
//!
//! A claim is first settled: its signature, its token, the lease rules and the request's
//! hashing budget, all of which may refuse it, and none of which writes anything but the
//! token's row lock. Only a claim that passed is paid and its token's book kept. So in a
//! batch a refused claim leaves nothing behind, and its refusal is part of the request's
//! answer; a failure while paying (the database, an amount the ledger cannot hold) fails
//! the whole request, whose transaction (or savepoint) then undoes every claim of it. The
//! answer and the credits are committed together with the request's idempotency record, so
//! a claim's credit is in the ledger exactly when the stored answer says it is.

use laundromat_api::types::{
    BatchRedeemed, ClaimOutcome, ClaimResult, Redeem, RedeemBatch, Redeemed, MAX_BATCH_CLAIMS,
};
use sqlx::AnyConnection;
use token::SignedClaim;

use crate::error::ServiceError;
use crate::ledger::{self, HostTransfer};
use crate::ops::{answer, pay_credit, verify_claim, Answer, Context};
use crate::rules::{Credit, LeaseBook};
use crate::store::{self, HostRow, TokenRow};

/// A claim that passed every rule: its token as loaded, its book after the claim, and what
/// the claim earns. Nothing of it is written yet.
struct Settled {
    row: TokenRow,
    book: LeaseBook,
    credit: Option<Credit>,
}

/// Everything that may refuse one claim, checked before anything of it is written. Its
/// hashing is taken from `budget`.
async fn settle(
    conn: &mut AnyConnection,
    host: &HostRow,
    signed: &SignedClaim,
    ctx: &Context<'_>,
    budget: &mut u64,
) -> Result<Settled, ServiceError> {
    let claim = verify_claim(host, signed)?;
    let token_id = claim.claim().token_id;
    // In a straight batch the token was locked and read with the batch's others, and its
    // changes and its escrow's debit are written with theirs (see [`crate::deferred`]).
    let row = match ctx.deferred {
        Some(deferred) => deferred.token(conn, &token_id).await?,
        None => store::load_token(conn, &token_id, true).await?,
    };
    let mut book = row.book.clone();
    let credit = book.redeem_within(&claim, ctx.config.max_claim_distance, budget)?;
    Ok(Settled { row, book, credit })
}

/// Pays a settled claim and keeps its token's new book; returns the credit.
async fn pay(
    conn: &mut AnyConnection,
    ctx: &Context<'_>,
    settled: Settled,
) -> Result<u64, ServiceError> {
    let token_id = settled.book.token_id;
    let when = ctx.deferred.map_or(HostTransfer::Now, HostTransfer::Later);
    let credited = pay_credit(conn, ctx, &token_id, settled.credit, when).await?;
    match ctx.deferred {
        Some(deferred) => deferred.save_book(&settled.book)?,
        None => store::save_book(conn, &settled.row.book, &settled.book).await?,
    }
    Ok(credited)
}

/// The host's earnings including what this transaction holds for it so far.
async fn host_balance(
    conn: &mut AnyConnection,
    host: &HostRow,
    ctx: &Context<'_>,
) -> Result<u64, ServiceError> {
    let host_account = ledger::host_account(&host.0);
    let stored = match ctx.deferred {
        Some(deferred) => deferred.stored_balance(conn, &host_account).await?,
        None => ledger::balance(conn, &host_account).await?,
    };
    Ok(stored
        .unwrap_or(0)
        .saturating_add(ctx.held_for(&host_account)))
}

pub(crate) async fn redeem(
    conn: &mut AnyConnection,
    host: &HostRow,
    body: &Redeem,
    ctx: &Context<'_>,
) -> Result<Answer, ServiceError> {
    // A single claim's hashing is bounded by the claim distance alone.
    let mut unbounded = u64::MAX;
    let settled = settle(conn, host, &body.claim, ctx, &mut unbounded).await?;
    let highest_redeemed = settled.book.highest_redeemed();
    let credit = pay(conn, ctx, settled).await?;
    answer(
        200,
        &Redeemed {
            credit,
            highest_redeemed,
            host_balance: host_balance(conn, host, ctx).await?,
        },
    )
}

/// Refuses a batch with no claims or more than [`MAX_BATCH_CLAIMS`].
pub fn check_batch_size(body: &RedeemBatch) -> Result<(), ServiceError> {
    match body.claims.len() {
        0 => Err(ServiceError::BadRequest(
            "a batch of redemptions needs at least one claim".into(),
        )),
        n if n > MAX_BATCH_CLAIMS => Err(ServiceError::BadRequest(format!(
            "a batch of redemptions carries at most {MAX_BATCH_CLAIMS} claims, and this one has {n}"
        ))),
        _ => Ok(()),
    }
}

/// Settles each claim of the batch in order, as [`redeem`] would one by one, except that
/// a refused claim is answered in the batch's answer, and that all the claims' hashing
/// together is bounded by the claim distance, as one claim's is.
pub(crate) async fn redeem_batch(
    conn: &mut AnyConnection,
    host: &HostRow,
    body: &RedeemBatch,
    ctx: &Context<'_>,
) -> Result<Answer, ServiceError> {
    check_batch_size(body)?;
    let mut budget = ctx.config.max_claim_distance;
    let mut results = Vec::with_capacity(body.claims.len());
    for signed in &body.claims {
        let outcome = match settle(conn, host, signed, ctx, &mut budget).await {
            Ok(settled) => {
                let highest_redeemed = settled.book.highest_redeemed();
                let credit = pay(conn, ctx, settled).await?;
                ClaimOutcome::Credited {
                    credit,
                    highest_redeemed,
                }
            }
            Err(error) if error.is_answer() => {
                let (status, code) = error.status_and_code();
                ClaimOutcome::Refused {
                    status,
                    code: code.to_owned(),
                    error: error.to_string(),
                }
            }
            Err(error) => return Err(error),
        };
        results.push(ClaimResult {
            token_id: signed.claim.token_id,
            index: signed.claim.index,
            outcome,
        });
    }
    answer(
        200,
        &BatchRedeemed {
            results,
            host_balance: host_balance(conn, host, ctx).await?,
        },
    )
}
