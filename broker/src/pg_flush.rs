//! A straight batch's deferred writes on PostgreSQL as one statement: one round trip where
//! SQLite, which has none to save, runs one statement per kind of row (see
//! [`crate::deferred`]). Each kind of row is a data-modifying `WITH` query:
//! - the escrow debits, conditional as in [`crate::ledger`], and counted;
//! - the redemptions' changed lease ranges, counted;
//! - the ledger rows, the answers under idempotency keys, and the credits to the writer's
//!   shard of each host's account (see [`crate::ledger::HeldCredits`]).
//!
//! PostgreSQL runs every part to completion whether or not the final `SELECT` reads it, all
//! on one snapshot, with the constraints (balances never negative, foreign keys, unique
//! ids and keys) checked as for separate statements. The parts touch different rows: only
//! the debits change `accounts`, and no row is changed by two parts, which a single
//! statement could not do. A debit a balance does not cover leaves that account out of
//! the count; the caller then rolls the batch back and runs it carefully, request by
//! request.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, Row};

use crate::batch_tokens::{bind_range, tuple, RangeUpdate};
use crate::db::db_int;
use crate::error::ServiceError;
use crate::idempotency::{KeyedRequest, Stored};
use crate::ledger::TransferRow;

/// What a straight batch writes at its end.
#[derive(Debug)]
pub(crate) struct Writes<'a> {
    pub debits: &'a BTreeMap<String, i64>,
    pub ranges: &'a [RangeUpdate],
    pub transfers: &'a [TransferRow],
    pub records: &'a [(KeyedRequest, Stored, u64)],
    pub credits: &'a BTreeMap<String, u64>,
    pub shard: u32,
}

/// The statement's text, with its parameters numbered as they are added.
#[derive(Default)]
struct Statement {
    parts: Vec<String>,
    next: usize,
}

impl Statement {
    /// `rows` tuples of `width` parameters each.
    fn values(&mut self, rows: usize, width: usize) -> String {
        let first = self.next + 1;
        self.next += rows * width;
        let tuples: Vec<String> = (0..rows).map(|i| tuple(first + i * width, width)).collect();
        tuples.join(", ")
    }

    fn part(&mut self, name: &str, sql: String) {
        self.parts.push(format!("{name} AS ({sql})"));
    }
}

/// The statement for `writes`; its parameters are bound in the order of [`write`].
fn sql(writes: &Writes<'_>) -> String {
    let mut statement = Statement::default();
    if !writes.debits.is_empty() {
        let values = statement.values(writes.debits.len(), 2);
        statement.part(
            "debited",
            format!(
                "UPDATE accounts SET balance = balance - v.column2 FROM (VALUES {values}) AS v \
                 WHERE accounts.id = v.column1 \
                 AND (accounts.kind = 'mint' OR accounts.balance >= v.column2) RETURNING 1"
            ),
        );
    }
    if !writes.ranges.is_empty() {
        let values = statement.values(writes.ranges.len(), 5);
        statement.part(
            "ranged",
            format!(
                "UPDATE lease_ranges SET end_index = v.column3, redeemed_index = v.column4, \
                 redeemed_link = v.column5 FROM (VALUES {values}) AS v \
                 WHERE lease_ranges.token_id = v.column1 AND lease_ranges.seq = v.column2 \
                 RETURNING 1"
            ),
        );
    }
    if !writes.transfers.is_empty() {
        let values = statement.values(writes.transfers.len(), 6);
        statement.part(
            "transferred",
            format!(
                "INSERT INTO transfers (id, from_account, to_account, amount, kind, at) \
                 VALUES {values}"
            ),
        );
    }
    if !writes.records.is_empty() {
        let values = statement.values(writes.records.len(), 7);
        statement.part(
            "recorded",
            format!(
                "INSERT INTO idempotency (signer, idem_key, request_hash, signature, status, \
                 response, created_at) VALUES {values}"
            ),
        );
    }
    if !writes.credits.is_empty() {
        let values = statement.values(writes.credits.len(), 3);
        statement.part(
            "credited",
            format!(
                "INSERT INTO account_shards (account_id, shard, amount) VALUES {values} \
                 ON CONFLICT (account_id, shard) \
                 DO UPDATE SET amount = account_shards.amount + excluded.amount"
            ),
        );
    }
    let count = |name: &str, present: bool| {
        if present {
            format!("(SELECT COUNT(*) FROM {name})")
        } else {
            "CAST(0 AS BIGINT)".to_owned()
        }
    };
    let select = format!(
        "SELECT {}, {}",
        count("debited", !writes.debits.is_empty()),
        count("ranged", !writes.ranges.is_empty())
    );
    if statement.parts.is_empty() {
        select
    } else {
        format!("WITH {} {select}", statement.parts.join(", "))
    }
}

/// Writes a straight batch's deferred rows in one statement. Fails, to be rolled back, if
/// a debit is not covered or a range is missing.
pub(crate) async fn write(
    conn: &mut AnyConnection,
    writes: &Writes<'_>,
) -> Result<(), ServiceError> {
    let sql = sql(writes);
    let mut query = sqlx::query(&sql);
    for (account, amount) in writes.debits {
        query = query.bind(account.as_str()).bind(*amount);
    }
    for update in writes.ranges {
        query = bind_range(query, update);
    }
    for row in writes.transfers {
        query = query
            .bind(row.id.as_str())
            .bind(row.from.as_str())
            .bind(row.to.as_str())
            .bind(row.amount)
            .bind(row.kind.as_str())
            .bind(row.at);
    }
    for (request, answer, now) in writes.records {
        query = query
            .bind(request.signer.as_str())
            .bind(request.key.as_str())
            .bind(request.hash.as_str())
            .bind(request.signature.as_str())
            .bind(i64::from(answer.status))
            .bind(answer.body.as_str())
            .bind(db_int(*now));
    }
    for (account, amount) in writes.credits {
        query = query
            .bind(account.as_str())
            .bind(i64::from(writes.shard))
            .bind(db_int(*amount));
    }
    let row = query.fetch_one(&mut *conn).await?;
    let (debited, ranged): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    if debited != writes.debits.len() as i64 {
        return Err(ServiceError::Unprocessable(
            "an account of the batch does not cover its debits".into(),
        ));
    }
    if ranged != writes.ranges.len() as i64 {
        return Err(ServiceError::Corrupt("a lease range to update is missing"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_across_parts() {
        let debits = BTreeMap::from([("escrow:a".to_owned(), 3)]);
        let credits = BTreeMap::from([("host:h".to_owned(), 3)]);
        let writes = Writes {
            debits: &debits,
            ranges: &[],
            transfers: &[],
            records: &[],
            credits: &credits,
            shard: 1,
        };
        let sql = sql(&writes);
        assert!(sql.contains("VALUES ($1, $2)) AS v"), "{sql}");
        assert!(sql.contains("VALUES ($3, $4, $5) ON CONFLICT"), "{sql}");
        assert!(sql.ends_with("SELECT (SELECT COUNT(*) FROM debited), CAST(0 AS BIGINT)"));
    }
}
