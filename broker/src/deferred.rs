//! Writes a straight batch (see [`crate::group_commit`]) makes once, at its end, instead of
//! once per request: the ledger rows of credits to hosts and the answers under idempotency
//! keys, each as one multi-row `INSERT`. It also looks every key of the batch up in one
//! query at its start, and reads each host's balance once.
//!
//! Why this keeps each request's view exact:
//! - A key's look-up sees the database as of the batch's start plus the answers recorded
//!   by the batch's earlier requests, which are kept here until the end; a key that is in
//!   neither is new. Another broker on the same PostgreSQL database that records the key
//!   meanwhile makes the final `INSERT` fail with a unique violation, and the whole batch
//!   runs again (it then finds that answer), as a per-request insert did before.
//! - The deferred ledger rows are only ever written, never read, by the batch's requests.
//! - A host's balance changes in a transaction only when its held credits are applied, at
//!   the end; until then it is its stored balance, read once, plus what is held.
//! - In a straight batch the first refusal or failure rolls the whole run back, so nothing
//!   deferred ever belongs to a request that must be undone alone.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use sqlx::AnyConnection;

use crate::error::ServiceError;
use crate::idempotency::{self, Claimed, KeyedRequest, Prior, Stored};
use crate::ledger::{self, TransferRow};

/// Rows per multi-row statement: far below both backends' limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 64;

#[derive(Debug, Default)]
struct Pending {
    answers: HashMap<(String, String), Prior>,
    records: Vec<(KeyedRequest, Stored, u64)>,
    transfers: Vec<TransferRow>,
    balances: HashMap<String, u64>,
}

/// One straight batch's deferred writes and batched reads.
#[derive(Debug, Default)]
pub struct Deferred(Mutex<Pending>);

impl Deferred {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Every change under the lock is one insert or push: a panic elsewhere cannot
        // leave it half-changed.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks up every key of the batch in one query per [`ROWS_PER_STATEMENT`] keys.
    pub async fn prefetch(
        conn: &mut AnyConnection,
        requests: &[&KeyedRequest],
    ) -> Result<Self, sqlx::Error> {
        let mut answers = HashMap::new();
        for chunk in requests.chunks(ROWS_PER_STATEMENT) {
            answers.extend(idempotency::look_up_many(conn, chunk).await?);
        }
        Ok(Self(Mutex::new(Pending {
            answers,
            ..Pending::default()
        })))
    }

    /// What the key was used for before, in the database or earlier in this batch.
    pub fn look_up(&self, request: &KeyedRequest) -> Claimed {
        let pending = self.pending();
        match pending
            .answers
            .get(&(request.signer.clone(), request.key.clone()))
        {
            Some(prior) => prior.claim(request),
            None => Claimed::Fresh,
        }
    }

    /// Keeps an answer under its key, for the look-ups of later requests and for the end.
    pub fn record(&self, request: &KeyedRequest, answer: &Stored, now: u64) {
        let mut pending = self.pending();
        pending.answers.insert(
            (request.signer.clone(), request.key.clone()),
            Prior {
                hash: request.hash.clone(),
                signature: request.signature.clone(),
                answer: answer.clone(),
            },
        );
        pending.records.push((request.clone(), answer.clone(), now));
    }

    pub fn transfer(&self, row: TransferRow) {
        self.pending().transfers.push(row);
    }

    /// An account's balance as stored, read once per batch: for accounts only credited
    /// through [`ledger::HeldCredits`] (hosts), whose stored balance this transaction does
    /// not change before its end.
    pub async fn stored_balance(
        &self,
        conn: &mut AnyConnection,
        account: &str,
    ) -> Result<Option<u64>, sqlx::Error> {
        if let Some(balance) = self.pending().balances.get(account) {
            return Ok(Some(*balance));
        }
        let balance = ledger::balance(conn, account).await?;
        if let Some(balance) = balance {
            self.pending().balances.insert(account.to_owned(), balance);
        }
        Ok(balance)
    }

    /// Writes what was deferred: the ledger rows, then the answers.
    pub async fn flush(self, conn: &mut AnyConnection) -> Result<(), ServiceError> {
        let pending = self
            .0
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for chunk in pending.transfers.chunks(ROWS_PER_STATEMENT) {
            ledger::insert_transfers(conn, chunk).await?;
        }
        for chunk in pending.records.chunks(ROWS_PER_STATEMENT) {
            idempotency::record_many(conn, chunk).await?;
        }
        Ok(())
    }
}
