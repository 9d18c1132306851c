//! Double entry: accounts and the transfers between them.
//!
//! Every movement of money is one row in `transfers` (with a unique id naming what caused
//! it) and the same amount leaving one balance and entering another, in one transaction. A
//! balance only falls through a conditional `UPDATE` that refuses to take it below zero, and
//! the table's CHECK constraint refuses it again; only the operator's mint goes negative.
//!
//! Credits to a host's earnings are held back to the end of the transaction
//! ([`HeldCredits`]): a host's account is credited by every redemption and lease change of
//! every token it runs, so on PostgreSQL its row lock, taken at the first credit and held
//! until the commit, would serialize all of them. Held, they are applied at the end, to the
//! writer's own shard of the account (`account_shards`, one row per writer and account), so
//! that no two writers of one broker ever wait for each other's commit on it. An account's
//! balance is its row's plus its shards'. Host accounts are never debited, so no balance
//! check ever needs the held or sharded amounts.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use sqlx::AnyConnection;
use token::{HostId, TokenId, VerifyingKey};

use crate::db::{from_db, to_db};
use crate::deferred::Deferred;
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
    let balance: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(a.balance + COALESCE((SELECT SUM(s.amount) FROM account_shards s \
         WHERE s.account_id = a.id), 0) AS BIGINT) FROM accounts a WHERE a.id = $1",
    )
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
    let amount = debit(conn, movement.from, movement.amount).await?;
    let credited = sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
        .bind(amount)
        .bind(movement.to)
        .execute(&mut *conn)
        .await?;
    if credited.rows_affected() != 1 {
        return Err(ServiceError::NotFound(format!("account {}", movement.to)));
    }
    insert_transfer(conn, &movement, amount).await?;
    Ok(())
}

/// Writes the ledger row of a movement.
async fn insert_transfer(
    conn: &mut AnyConnection,
    movement: &Movement<'_>,
    amount: i64,
) -> Result<(), sqlx::Error> {
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

/// A ledger row to be written later (see [`crate::deferred`]).
#[derive(Debug, Clone)]
pub struct TransferRow {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: i64,
    pub kind: String,
    pub at: i64,
}

/// Writes several ledger rows in one statement.
pub async fn insert_transfers(
    conn: &mut AnyConnection,
    rows: &[TransferRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let values: Vec<String> = (0..rows.len())
        .map(|i| {
            let n = 6 * i;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO transfers (id, from_account, to_account, amount, kind, at) VALUES {}",
        values.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = query
            .bind(&row.id)
            .bind(&row.from)
            .bind(&row.to)
            .bind(row.amount)
            .bind(&row.kind)
            .bind(row.at);
    }
    query.execute(conn).await?;
    Ok(())
}

/// Takes `amount` from an account, refusing, changing nothing, if its balance does not
/// cover it.
async fn debit(conn: &mut AnyConnection, account: &str, amount: u64) -> Result<i64, ServiceError> {
    let value = to_db(amount)
        .ok_or_else(|| ServiceError::Unprocessable("the amount does not fit the ledger".into()))?;
    let debited = sqlx::query(
        "UPDATE accounts SET balance = balance - $1 \
         WHERE id = $2 AND (kind = 'mint' OR balance >= $1)",
    )
    .bind(value)
    .bind(account)
    .execute(&mut *conn)
    .await?;
    if debited.rows_affected() != 1 {
        let balance = balance(conn, account).await?.unwrap_or(0);
        return Err(ServiceError::InsufficientBalance {
            balance,
            needed: amount,
        });
    }
    Ok(value)
}

/// Credits to host accounts made in a transaction and not yet applied: account -> amount.
#[derive(Debug, Default)]
pub struct HeldCredits(Mutex<BTreeMap<String, u64>>);

impl HeldCredits {
    fn credits(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        // A panic while holding the lock cannot leave the map half-changed: every change
        // is one insert.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What is held for `account`.
    pub fn of(&self, account: &str) -> u64 {
        self.credits().get(account).copied().unwrap_or(0)
    }

    fn add(&self, account: &str, amount: u64) -> Result<(), ServiceError> {
        let mut credits = self.credits();
        let held = credits.entry(account.to_owned()).or_insert(0);
        *held = held
            .checked_add(amount)
            .filter(|total| to_db(*total).is_some())
            .ok_or_else(|| {
                ServiceError::Unprocessable("the amount does not fit the ledger".into())
            })?;
        Ok(())
    }

    /// Adds what `other` holds to this: a request's credits joining its batch's.
    pub fn absorb(&self, other: HeldCredits) -> Result<(), ServiceError> {
        let other = other
            .0
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (account, amount) in other {
            self.add(&account, amount)?;
        }
        Ok(())
    }

    /// Takes the held credits, in the order of the account ids, to be applied by the caller.
    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.credits())
    }

    /// Applies the held credits to the accounts' `shard`, in the order of the account ids
    /// (so that two transactions applying theirs cannot deadlock), and forgets them. The
    /// shard row's foreign key refuses an account that does not exist.
    pub async fn apply(&self, conn: &mut AnyConnection, shard: u32) -> Result<(), sqlx::Error> {
        let credits = self.take();
        for (account, amount) in credits {
            sqlx::query(
                "INSERT INTO account_shards (account_id, shard, amount) VALUES ($1, $2, $3) \
                 ON CONFLICT (account_id, shard) \
                 DO UPDATE SET amount = account_shards.amount + excluded.amount",
            )
            .bind(&account)
            .bind(i64::from(shard))
            .bind(to_db(amount).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

/// When a transfer to a host writes what it writes (see [`crate::deferred`]).
#[derive(Clone, Copy)]
pub enum HostTransfer<'a> {
    /// The debit and the ledger row now.
    Now,
    /// The debit now, the ledger row at the end of the straight batch.
    RowLater(&'a Deferred),
    /// Both at the end of the straight batch: for a redemption's debit of its token's
    /// escrow, which nothing in the batch reads before then.
    Later(&'a Deferred),
}

/// Moves `amount` from an account to a host's, holding the host's credit in `held` (see
/// [`HeldCredits`]). The debit and the ledger row are written now or at the end of a
/// straight batch, as `when` says. A zero amount moves nothing and writes nothing.
pub async fn transfer_to_host(
    conn: &mut AnyConnection,
    movement: Movement<'_>,
    held: &HeldCredits,
    when: HostTransfer<'_>,
) -> Result<(), ServiceError> {
    if movement.amount == 0 {
        return Ok(());
    }
    let (amount, deferred) = match when {
        HostTransfer::Now => (debit(conn, movement.from, movement.amount).await?, None),
        HostTransfer::RowLater(deferred) => (
            debit(conn, movement.from, movement.amount).await?,
            Some(deferred),
        ),
        HostTransfer::Later(deferred) => (
            deferred.debit(movement.from, movement.amount)?,
            Some(deferred),
        ),
    };
    match deferred {
        Some(deferred) => deferred.transfer(TransferRow {
            id: movement.id.to_owned(),
            from: movement.from.to_owned(),
            to: movement.to.to_owned(),
            amount,
            kind: movement.kind.to_owned(),
            at: to_db(movement.at).unwrap_or(i64::MAX),
        }),
        // The row's foreign key refuses a host account that does not exist, now rather
        // than when the credit is applied.
        None => insert_transfer(conn, &movement, amount).await?,
    }
    held.add(movement.to, movement.amount)
}
