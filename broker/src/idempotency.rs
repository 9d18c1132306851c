//! Idempotency keys with Stripe's semantics, kept in the same transaction as the request's
//! effects.
//!
//! Before a request runs, its key is looked up. A key seen before with the same method, path
//! and body gets the stored answer and moves nothing; with anything else, 409. A byte-for-byte
//! copy of a request already answered (the same signature) is a replay, refused with 401. A
//! new key runs the request, and its answer is inserted under the key in the transaction that
//! holds the request's effects, so the two are durable together or not at all.
//!
//! All of one broker's money-moving requests go through one writer (see
//! [`crate::group_commit`]), so nothing inserts the key between the look-up and the insert.
//! Another broker on the same PostgreSQL database that answers the same key first makes the
//! insert fail with a unique violation; the request is then run again and finds the stored
//! answer.

use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::db::to_db;

/// The stored answer to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub status: u16,
    pub body: String,
}

/// What the key's row says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The key is new: the request runs, and its answer is recorded.
    Fresh,
    /// The same request was answered before.
    Answered(Stored),
    /// The key was used for a different request.
    Mismatch,
    /// The very same signed bytes were received before.
    Replayed,
}

/// SHA-256 over method, path and body: what "the same request" means.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(body);
    token::hex::encode(&hasher.finalize())
}

/// A request's key and what identifies the request under it.
#[derive(Debug, Clone)]
pub struct KeyedRequest {
    /// The signer's public key, hex.
    pub signer: String,
    pub key: String,
    /// [`request_hash`] of the request.
    pub hash: String,
    /// The request's signature, hex: the same bytes again are a replay.
    pub signature: String,
}

/// What a key was used for before: the request's hash and signature, and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prior {
    pub hash: String,
    pub signature: String,
    pub answer: Stored,
}

impl Prior {
    fn from_row(row: &AnyRow, at: usize) -> Result<Self, sqlx::Error> {
        Ok(Self {
            hash: row.try_get(at)?,
            signature: row.try_get(at + 1)?,
            answer: Stored {
                status: u16::try_from(row.try_get::<i64, _>(at + 2)?).unwrap_or(500),
                body: row.try_get(at + 3)?,
            },
        })
    }

    /// What this prior use of the key means for `request`.
    pub fn claim(&self, request: &KeyedRequest) -> Claimed {
        if self.hash != request.hash {
            Claimed::Mismatch
        } else if self.signature == request.signature {
            Claimed::Replayed
        } else {
            Claimed::Answered(self.answer.clone())
        }
    }
}

/// Reports what the key was used for before, if anything.
pub async fn look_up(
    conn: &mut AnyConnection,
    request: &KeyedRequest,
) -> Result<Claimed, sqlx::Error> {
    let row = sqlx::query(
        "SELECT request_hash, signature, status, response FROM idempotency \
         WHERE signer = $1 AND idem_key = $2",
    )
    .bind(&request.signer)
    .bind(&request.key)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => Ok(Prior::from_row(&row, 0)?.claim(request)),
        None => Ok(Claimed::Fresh),
    }
}

/// The prior uses of the keys of `requests`, in one query: (signer, key) -> prior.
pub async fn look_up_many(
    conn: &mut AnyConnection,
    requests: &[&KeyedRequest],
) -> Result<Vec<((String, String), Prior)>, sqlx::Error> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let conditions: Vec<String> = (0..requests.len())
        .map(|i| format!("(signer = ${} AND idem_key = ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let sql = format!(
        "SELECT signer, idem_key, request_hash, signature, status, response FROM idempotency \
         WHERE {}",
        conditions.join(" OR ")
    );
    let mut query = sqlx::query(&sql);
    for request in requests {
        query = query.bind(&request.signer).bind(&request.key);
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter()
        .map(|row| Ok(((row.try_get(0)?, row.try_get(1)?), Prior::from_row(row, 2)?)))
        .collect()
}

/// Records several answers in one statement: (request, answer, time). Fails with a unique
/// violation if any key was recorded meanwhile.
pub async fn record_many(
    conn: &mut AnyConnection,
    records: &[(KeyedRequest, Stored, u64)],
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let values: Vec<String> = (0..records.len())
        .map(|i| {
            let n = 7 * i;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5,
                n + 6,
                n + 7
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO idempotency (signer, idem_key, request_hash, signature, status, response, created_at) \
         VALUES {}",
        values.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for (request, answer, now) in records {
        query = query
            .bind(&request.signer)
            .bind(&request.key)
            .bind(&request.hash)
            .bind(&request.signature)
            .bind(i64::from(answer.status))
            .bind(&answer.body)
            .bind(to_db(*now).unwrap_or(0));
    }
    query.execute(conn).await?;
    Ok(())
}

/// Records the answer under the request's key. Fails with a unique violation if the key was
/// recorded meanwhile (by another broker on the same database).
pub async fn record(
    conn: &mut AnyConnection,
    request: &KeyedRequest,
    answer: &Stored,
    now: u64,
) -> Result<(), sqlx::Error> {
    record_many(conn, &[(request.clone(), answer.clone(), now)]).await
}
