//! Idempotency keys with Stripe's semantics, kept in the same transaction as the request's
//! effects.
//!
//! The first request with a key inserts the key's row before it does anything else; its
//! answer is written into the row before the commit. A later request with the same key
//! finds the row: with the same method, path and body it gets the stored answer and moves
//! nothing; with anything else, 409. On PostgreSQL, a request racing the first one blocks
//! on the row's insert until the first commits, then finds it. A byte-for-byte copy of a
//! request already answered (the same signature) is a replay, refused with 401.

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

/// Takes the key for this request, or reports what it was used for before.
pub async fn claim(
    conn: &mut AnyConnection,
    signer: &str,
    key: &str,
    request_hash: &str,
    signature: &str,
    now: u64,
) -> Result<Claimed, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency (signer, idem_key, request_hash, signature, status, response, created_at) \
         VALUES ($1, $2, $3, $4, 0, '', $5) ON CONFLICT (signer, idem_key) DO NOTHING",
    )
    .bind(signer)
    .bind(key)
    .bind(request_hash)
    .bind(signature)
    .bind(to_db(now).unwrap_or(0))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claimed::Fresh);
    }
    let row = sqlx::query(
        "SELECT request_hash, signature, status, response FROM idempotency \
         WHERE signer = $1 AND idem_key = $2",
    )
    .bind(signer)
    .bind(key)
    .fetch_one(conn)
    .await?;
    let (stored_hash, stored_signature): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    if stored_hash != request_hash {
        return Ok(Claimed::Mismatch);
    }
    if stored_signature == signature {
        return Ok(Claimed::Replayed);
    }
    Ok(Claimed::Answered(Stored {
        status: u16::try_from(row.try_get::<i64, _>(2)?).unwrap_or(500),
        body: row.try_get(3)?,
    }))
}

/// Records the answer under the key claimed in this transaction.
pub async fn record(
    conn: &mut AnyConnection,
    signer: &str,
    key: &str,
    answer: &Stored,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency SET status = $1, response = $2 WHERE signer = $3 AND idem_key = $4",
    )
    .bind(i64::from(answer.status))
    .bind(&answer.body)
    .bind(signer)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}
