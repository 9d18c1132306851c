//! Rows to values and back: registered tenants and hosts, and a token with its lease book.

use std::str::FromStr;

use laundromat_api::types::{LeaseRange, TokenState};
use sqlx::{AnyConnection, Row};
use token::{hex, HostId, Link, TokenId, VerifyingKey};

use crate::db::{db_int, from_db};
use crate::error::ServiceError;
use crate::ledger;
use crate::rules::{LeaseBook, Pending, Range};

pub fn key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

fn parse<T: FromStr>(text: &str, what: &'static str) -> Result<T, ServiceError> {
    text.parse().map_err(|_| ServiceError::Corrupt(what))
}

pub fn parse_key(text: &str) -> Result<VerifyingKey, ServiceError> {
    let bytes: [u8; 32] = hex::decode_array(text).map_err(|_| ServiceError::Corrupt("key"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| ServiceError::Corrupt("key"))
}

pub async fn tenant_exists(
    conn: &mut AnyConnection,
    key: &VerifyingKey,
) -> Result<bool, sqlx::Error> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT tenant_key FROM tenants WHERE tenant_key = $1")
            .bind(key_hex(key))
            .fetch_optional(conn)
            .await?;
    Ok(found.is_some())
}

/// A registered host: (id, key, cluster).
pub type HostRow = (HostId, VerifyingKey, token::ClusterId);

fn host_row(row: &sqlx::any::AnyRow) -> Result<HostRow, ServiceError> {
    Ok((
        parse(row.try_get::<String, _>(0)?.as_str(), "host id")?,
        parse_key(&row.try_get::<String, _>(1)?)?,
        parse(row.try_get::<String, _>(2)?.as_str(), "cluster id")?,
    ))
}

pub async fn host_by_key(
    conn: &mut AnyConnection,
    key: &VerifyingKey,
) -> Result<Option<HostRow>, ServiceError> {
    let row = sqlx::query("SELECT host_id, host_key, cluster_id FROM hosts WHERE host_key = $1")
        .bind(key_hex(key))
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(host_row).transpose()
}

pub async fn host_by_id(
    conn: &mut AnyConnection,
    id: &HostId,
) -> Result<Option<HostRow>, ServiceError> {
    let row = sqlx::query("SELECT host_id, host_key, cluster_id FROM hosts WHERE host_id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(host_row).transpose()
}

pub async fn hosts(conn: &mut AnyConnection) -> Result<Vec<HostRow>, ServiceError> {
    let rows = sqlx::query("SELECT host_id, host_key, cluster_id FROM hosts ORDER BY host_id")
        .fetch_all(conn)
        .await?;
    rows.iter().map(host_row).collect()
}

/// A token as the ledger keeps it.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub book: LeaseBook,
    pub tenant_key: VerifyingKey,
    pub expiry: u64,
}

/// The columns of `tokens` a [`TokenRow`] is read from, after `token_id`.
pub(crate) const TOKEN_COLUMNS: &str = "tenant_key, chain_root, chain_length, price_per_link, \
    expiry, refunded, handover_to, handover_index, handover_link";

/// The columns of `lease_ranges` a [`Range`] is read from.
pub(crate) const RANGE_COLUMNS: &str =
    "host_id, start_index, end_index, redeemed_index, redeemed_link";

/// A token read from [`TOKEN_COLUMNS`] starting at column `at`, with no ranges yet.
pub(crate) fn token_from_row(
    row: &sqlx::any::AnyRow,
    at: usize,
    id: &TokenId,
) -> Result<TokenRow, ServiceError> {
    let handover = match row.try_get::<Option<String>, _>(at + 6)? {
        Some(to) => Some(Pending {
            to: parse(&to, "handover host")?,
            index: from_db(row.try_get::<Option<i64>, _>(at + 7)?.unwrap_or(0)),
            link: parse(
                &row.try_get::<Option<String>, _>(at + 8)?
                    .unwrap_or_default(),
                "handover link",
            )?,
        }),
        None => None,
    };
    Ok(TokenRow {
        tenant_key: parse_key(&row.try_get::<String, _>(at)?)?,
        expiry: from_db(row.try_get(at + 4)?),
        book: LeaseBook {
            token_id: *id,
            chain_root: parse::<Link>(&row.try_get::<String, _>(at + 1)?, "chain root")?,
            chain_length: from_db(row.try_get(at + 2)?),
            price_per_link: from_db(row.try_get(at + 3)?),
            refunded: row.try_get::<i64, _>(at + 5)? != 0,
            handover,
            ranges: Vec::new(),
        },
    })
}

/// A range read from [`RANGE_COLUMNS`] starting at column `at`.
pub(crate) fn range_from_row(row: &sqlx::any::AnyRow, at: usize) -> Result<Range, ServiceError> {
    Ok(Range {
        host: parse(&row.try_get::<String, _>(at)?, "range host")?,
        start: from_db(row.try_get(at + 1)?),
        end: row.try_get::<Option<i64>, _>(at + 2)?.map(from_db),
        redeemed: from_db(row.try_get(at + 3)?),
        redeemed_link: parse(&row.try_get::<String, _>(at + 4)?, "range link")?,
    })
}

/// Loads a token and its lease book. With `lock`, bumps the token's `lock_version` as it
/// reads it, which serializes this transaction with every other one on the token (see
/// [`crate::db`]).
pub async fn load_token(
    conn: &mut AnyConnection,
    id: &TokenId,
    lock: bool,
) -> Result<TokenRow, ServiceError> {
    let id_text = id.to_string();
    // Locking and reading are one statement: one round trip less on the writer's path.
    let sql = if lock {
        format!(
            "UPDATE tokens SET lock_version = lock_version + 1 WHERE token_id = $1 \
             RETURNING {TOKEN_COLUMNS}"
        )
    } else {
        format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_id = $1")
    };
    let row = sqlx::query(&sql)
        .bind(&id_text)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("token {id}")))?;
    let mut token = token_from_row(&row, 0, id)?;
    token.book.ranges = sqlx::query(&format!(
        "SELECT {RANGE_COLUMNS} FROM lease_ranges WHERE token_id = $1 ORDER BY seq"
    ))
    .bind(&id_text)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| range_from_row(r, 0))
    .collect::<Result<Vec<_>, ServiceError>>()?;
    Ok(token)
}

/// Writes back what an operation changed in a token's book, compared with `before`.
pub async fn save_book(
    conn: &mut AnyConnection,
    before: &LeaseBook,
    after: &LeaseBook,
) -> Result<(), ServiceError> {
    let id = after.token_id.to_string();
    for (seq, range) in after.ranges.iter().enumerate() {
        let end = range.end.map(db_int);
        match before.ranges.get(seq) {
            Some(old) if old == range => {}
            Some(_) => {
                sqlx::query(
                    "UPDATE lease_ranges SET end_index = $1, redeemed_index = $2, redeemed_link = $3 \
                     WHERE token_id = $4 AND seq = $5",
                )
                .bind(end)
                .bind(db_int(range.redeemed))
                .bind(range.redeemed_link.to_string())
                .bind(&id)
                .bind(db_int(seq as u64))
                .execute(&mut *conn)
                .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO lease_ranges (token_id, seq, host_id, start_index, end_index, \
                     redeemed_index, redeemed_link) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&id)
                .bind(db_int(seq as u64))
                .bind(range.host.to_string())
                .bind(db_int(range.start))
                .bind(end)
                .bind(db_int(range.redeemed))
                .bind(range.redeemed_link.to_string())
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    if before.refunded != after.refunded
        || before.handover != after.handover
        || before.holder() != after.holder()
    {
        sqlx::query(
            "UPDATE tokens SET refunded = $1, lease_holder = $2, handover_to = $3, \
             handover_index = $4, handover_link = $5 WHERE token_id = $6",
        )
        .bind(i64::from(after.refunded))
        .bind(after.holder().map(|h| h.to_string()))
        .bind(after.handover.map(|p| p.to.to_string()))
        .bind(after.handover.map(|p| db_int(p.index)))
        .bind(after.handover.map(|p| p.link.to_string()))
        .bind(&id)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// The public view of a token.
pub async fn token_state(
    conn: &mut AnyConnection,
    row: &TokenRow,
) -> Result<TokenState, ServiceError> {
    let book = &row.book;
    let escrow = ledger::balance(conn, &ledger::escrow_account(&book.token_id))
        .await?
        .unwrap_or(0);
    Ok(TokenState {
        token_id: book.token_id,
        tenant_key: row.tenant_key,
        chain_length: book.chain_length,
        price_per_link: book.price_per_link,
        expiry: row.expiry,
        holder: book.holder(),
        handover_to: book.handover.map(|p| p.to),
        highest_redeemed: book.highest_redeemed(),
        redeemed_links: book.redeemed_links(),
        escrow,
        refunded: book.refunded,
        ranges: book
            .ranges
            .iter()
            .map(|r| LeaseRange {
                host_id: r.host,
                start: r.start,
                end: r.end,
                redeemed: r.redeemed,
            })
            .collect(),
    })
}
