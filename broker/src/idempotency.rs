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
    let Some(row) = row else {
        return Ok(Claimed::Fresh);
    };
    let (stored_hash, stored_signature): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    if stored_hash != request.hash {
        return Ok(Claimed::Mismatch);
    }
    if stored_signature == request.signature {
        return Ok(Claimed::Replayed);
    }
    Ok(Claimed::Answered(Stored {
        status: u16::try_from(row.try_get::<i64, _>(2)?).unwrap_or(500),
        body: row.try_get(3)?,
    }))
}

/// Records the answer under the request's key. Fails with a unique violation if the key was
/// recorded meanwhile (by another broker on the same database).
pub async fn record(
    conn: &mut AnyConnection,
    request: &KeyedRequest,
    answer: &Stored,
    now: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency (signer, idem_key, request_hash, signature, status, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&request.signer)
    .bind(&request.key)
    .bind(&request.hash)
    .bind(&request.signature)
    .bind(i64::from(answer.status))
    .bind(&answer.body)
    .bind(to_db(now).unwrap_or(0))
    .execute(conn)
    .await?;
    Ok(())
}
