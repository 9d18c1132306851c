//! Double entry: accounts and the transfers between them.
//!
//! Every movement of money is one row in `transfers` (with a unique id naming what caused
//! it) and the same amount leaving one balance and entering another, in one transaction. A
//! balance only falls through a conditional `UPDATE` that refuses to take it below zero, and
//! the table's CHECK constraint refuses it again; only the operator's mint goes negative.

use sqlx::AnyConnection;
use token::{HostId, TokenId, VerifyingKey};

use crate::db::{from_db, to_db};
use crate::error::ServiceError;

pub const MINT: &str = "mint";

pub fn tenant_account(key: &VerifyingKey) -> String {
    format!("tenant:{}", token::hex::encode(key.as_bytes()))
}

pub fn escrow_account(token_id: &TokenId) -> String {
    format!("escrow:{token_id}")
}

pub fn host_account(host_id: &HostId) -> String {
    format!("host:{host_id}")
}

/// Opens an account at zero if it does not exist.
pub async fn open_account(
    conn: &mut AnyConnection,
    id: &str,
    kind: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accounts (id, kind, balance) VALUES ($1, $2, 0) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(kind)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn balance(conn: &mut AnyConnection, id: &str) -> Result<Option<u64>, sqlx::Error> {
    let balance: Option<i64> = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(balance.map(from_db))
}

/// What a transfer is, for the ledger row.
pub struct Movement<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub amount: u64,
    pub kind: &'a str,
    pub at: u64,
}

/// Moves `amount` from one account to another. A zero amount moves nothing and writes
/// nothing. Refuses, changing nothing, if the source's balance does not cover it.
pub async fn transfer(
    conn: &mut AnyConnection,
    movement: Movement<'_>,
) -> Result<(), ServiceError> {
    if movement.amount == 0 {
        return Ok(());
    }
    let amount = to_db(movement.amount)
        .ok_or_else(|| ServiceError::Unprocessable("the amount does not fit the ledger".into()))?;
    let debited = sqlx::query(
        "UPDATE accounts SET balance = balance - $1 \
         WHERE id = $2 AND (kind = 'mint' OR balance >= $1)",
    )
    .bind(amount)
    .bind(movement.from)
    .execute(&mut *conn)
    .await?;
    if debited.rows_affected() != 1 {
        let balance = balance(conn, movement.from).await?.unwrap_or(0);
        return Err(ServiceError::InsufficientBalance {
            balance,
            needed: movement.amount,
        });
    }
    let credited = sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
        .bind(amount)
        .bind(movement.to)
        .execute(&mut *conn)
        .await?;
    if credited.rows_affected() != 1 {
        return Err(ServiceError::NotFound(format!("account {}", movement.to)));
    }
    sqlx::query(
        "INSERT INTO transfers (id, from_account, to_account, amount, kind, at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(movement.id)
    .bind(movement.from)
    .bind(movement.to)
    .bind(amount)
    .bind(movement.kind)
    .bind(to_db(movement.at).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}
