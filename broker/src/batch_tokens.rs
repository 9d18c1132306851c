//! The statements that let a straight batch (see [`crate::group_commit`]) handle its
//! redemptions' tokens and escrows in a fixed number of round trips, whatever its size:
//! every token locked and read in one statement at the start, and at the end every changed
//! range written in one, and every escrow debited in one.
//!
//! Each is a multi-row form of what [`crate::store`] and [`crate::ledger`] do for one row,
//! with the same effect and the same refusals:
//! - locking bumps each token's `lock_version`, as [`crate::store::load_token`] does, so the
//!   batch holds every token's row lock from its start to its commit;
//! - a debit is conditional on the balance covering it, and the statement reports which
//!   accounts it could not debit, so that the batch is run again carefully, each request on
//!   its own (where the one that overdraws is refused alone).

use std::collections::{BTreeMap, HashMap};

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Row};
use token::TokenId;

use crate::db::db_int;
use crate::error::ServiceError;
use crate::rules::Range;
use crate::store::{range_from_row, token_from_row, TokenRow, RANGE_COLUMNS, TOKEN_COLUMNS};

/// Rows per statement: far below both backends' limits on bound parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 64;

/// `($first, $first+1, ...)` for `width` parameters.
pub(crate) fn tuple(first: usize, width: usize) -> String {
    let params: Vec<String> = (first..first + width).map(|n| format!("${n}")).collect();
    format!("({})", params.join(", "))
}

/// `rows` tuples of `width` parameters each, numbered from 1.
fn tuples(rows: usize, width: usize) -> String {
    let tuples: Vec<String> = (0..rows).map(|i| tuple(i * width + 1, width)).collect();
    tuples.join(", ")
}

/// Locks and reads the tokens `ids` (distinct) with their lease books. A token that does
/// not exist is absent from the answer.
pub(crate) async fn lock_tokens(
    conn: &mut AnyConnection,
    ids: &[TokenId],
) -> Result<HashMap<TokenId, TokenRow>, ServiceError> {
    let mut tokens = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let list = tuple(1, chunk.len());
        let texts: Vec<String> = chunk.iter().map(ToString::to_string).collect();
        let sql = format!(
            "UPDATE tokens SET lock_version = lock_version + 1 WHERE token_id IN {list} \
             RETURNING token_id, {TOKEN_COLUMNS}"
        );
        let mut query = sqlx::query(&sql);
        for text in &texts {
            query = query.bind(text);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id = parse_id(&row.try_get::<String, _>(0)?)?;
            tokens.insert(id, token_from_row(&row, 1, &id)?);
        }
        let sql = format!(
            "SELECT token_id, {RANGE_COLUMNS} FROM lease_ranges WHERE token_id IN {list} \
             ORDER BY token_id, seq"
        );
        let mut query = sqlx::query(&sql);
        for text in &texts {
            query = query.bind(text);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id = parse_id(&row.try_get::<String, _>(0)?)?;
            let token = tokens
                .get_mut(&id)
                .ok_or(ServiceError::Corrupt("a lease range of an unknown token"))?;
            token.book.ranges.push(range_from_row(&row, 1)?);
        }
    }
    Ok(tokens)
}

fn parse_id(text: &str) -> Result<TokenId, ServiceError> {
    text.parse().map_err(|_| ServiceError::Corrupt("token id"))
}

/// A changed range of a token: its new end and redeemed link.
#[derive(Debug, Clone)]
pub(crate) struct RangeUpdate {
    pub token_id: TokenId,
    pub seq: u64,
    pub range: Range,
}

/// Binds a changed range as the five values `(token_id, seq, end, redeemed, link)`.
pub(crate) fn bind_range<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    update: &RangeUpdate,
) -> Query<'q, Any, AnyArguments<'q>> {
    query
        .bind(update.token_id.to_string())
        .bind(db_int(update.seq))
        .bind(update.range.end.map(db_int))
        .bind(db_int(update.range.redeemed))
        .bind(update.range.redeemed_link.to_string())
}

/// Writes changed ranges, which must exist.
pub(crate) async fn update_ranges(
    conn: &mut AnyConnection,
    updates: &[RangeUpdate],
) -> Result<(), ServiceError> {
    for chunk in updates.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE lease_ranges SET end_index = v.column3, redeemed_index = v.column4, \
             redeemed_link = v.column5 FROM (VALUES {}) AS v \
             WHERE lease_ranges.token_id = v.column1 AND lease_ranges.seq = v.column2",
            tuples(chunk.len(), 5)
        );
        let mut query = sqlx::query(&sql);
        for update in chunk {
            query = bind_range(query, update);
        }
        let updated = query.execute(&mut *conn).await?.rows_affected();
        if updated != chunk.len() as u64 {
            return Err(ServiceError::Corrupt("a lease range to update is missing"));
        }
    }
    Ok(())
}

/// Takes each amount from its account (distinct accounts), failing if any balance does
/// not cover its amount (only the mint may go negative, as in [`crate::ledger`]): the
/// caller then rolls back.
pub(crate) async fn debit_accounts(
    conn: &mut AnyConnection,
    debits: &BTreeMap<String, i64>,
) -> Result<(), ServiceError> {
    let debits: Vec<_> = debits.iter().collect();
    for chunk in debits.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE accounts SET balance = balance - v.column2 FROM (VALUES {}) AS v \
             WHERE accounts.id = v.column1 \
             AND (accounts.kind = 'mint' OR accounts.balance >= v.column2)",
            tuples(chunk.len(), 2)
        );
        let mut query = sqlx::query(&sql);
        for (account, amount) in chunk {
            query = query.bind(account.as_str()).bind(**amount);
        }
        let debited = query.execute(&mut *conn).await?.rows_affected();
        if debited != chunk.len() as u64 {
            return Err(ServiceError::Unprocessable(
                "an account of the batch does not cover its debits".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_number_parameters_from_one() {
        assert_eq!(tuple(1, 3), "($1, $2, $3)");
        assert_eq!(tuples(2, 2), "($1, $2), ($3, $4)");
    }
}
