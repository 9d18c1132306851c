//! Writes a straight batch (see [`crate::group_commit`]) makes once, at its end, instead of
//! once per request: the ledger rows of credits to hosts and the answers under idempotency
//! keys, each as one multi-row `INSERT`, and its redemptions' changes to lease ranges and
//! debits of escrows, each as one multi-row `UPDATE` (see [`crate::batch_tokens`]). It also
//! looks every key of the batch up in one query at its start, locks and reads the tokens
//! its redemptions name in one more, and reads each host's balance once.
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
//! - A token read here is locked (its row lock held to the commit), so only this batch
//!   changes it; its redemptions read and change it here, in memory, one after the other.
//!   An escrow is only debited by its token's redemptions, and a redemption reads no
//!   escrow's balance. Every other operation first writes what is pending and forgets the
//!   tokens read ([`Deferred::settle`]), so it reads the database as it would without
//!   deferral, and a redemption after it reads the token again.
//! - A deferred debit is as conditional as an immediate one: if a balance does not cover
//!   the batch's debits of it, the flush fails and the batch runs again carefully, each
//!   request on its own.
//! - In a straight batch the first refusal or failure rolls the whole run back, so nothing
//!   deferred ever belongs to a request that must be undone alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use sqlx::AnyConnection;
use token::TokenId;

use crate::batch_tokens::{self, RangeUpdate, ROWS_PER_STATEMENT};
use crate::db::{to_db, Backend};
use crate::error::ServiceError;
use crate::idempotency::{self, Claimed, KeyedRequest, Prior, Stored};
use crate::ledger::{self, HeldCredits, TransferRow};
use crate::pg_flush;
use crate::rules::LeaseBook;
use crate::store::{self, TokenRow};

/// A token the batch has locked and read: as stored, and as its redemptions left it.
#[derive(Debug)]
struct Held {
    stored: LeaseBook,
    now: TokenRow,
}

#[derive(Debug, Default)]
struct Pending {
    answers: HashMap<(String, String), Prior>,
    records: Vec<(KeyedRequest, Stored, u64)>,
    transfers: Vec<TransferRow>,
    balances: HashMap<String, u64>,
    /// Tokens locked and read; `None`: not in the database.
    tokens: HashMap<TokenId, Option<Held>>,
    /// Debits not yet made: account -> amount.
    debits: BTreeMap<String, i64>,
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

    /// Looks up every key of the batch in one query per [`ROWS_PER_STATEMENT`] keys, and
    /// locks and reads the `tokens` (the batch's redemptions') likewise.
    pub async fn prefetch(
        conn: &mut AnyConnection,
        requests: &[&KeyedRequest],
        tokens: &[TokenId],
    ) -> Result<Self, ServiceError> {
        let mut answers = HashMap::new();
        for chunk in requests.chunks(ROWS_PER_STATEMENT) {
            answers.extend(idempotency::look_up_many(conn, chunk).await?);
        }
        let mut ids = tokens.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut found = batch_tokens::lock_tokens(conn, &ids).await?;
        let tokens = ids
            .iter()
            .map(|id| {
                let held = found.remove(id).map(|row| Held {
                    stored: row.book.clone(),
                    now: row,
                });
                (*id, held)
            })
            .collect();
        Ok(Self(Mutex::new(Pending {
            answers,
            tokens,
            ..Pending::default()
        })))
    }

    /// A token, locked, as the batch's redemptions so far left it: read (and locked) now
    /// if the batch has not read it yet.
    pub async fn token(
        &self,
        conn: &mut AnyConnection,
        id: &TokenId,
    ) -> Result<TokenRow, ServiceError> {
        match self.pending().tokens.get(id) {
            Some(Some(held)) => return Ok(held.now.clone()),
            Some(None) => return Err(ServiceError::NotFound(format!("token {id}"))),
            None => {}
        }
        let row = store::load_token(conn, id, true).await?;
        self.pending().tokens.insert(
            *id,
            Some(Held {
                stored: row.book.clone(),
                now: row.clone(),
            }),
        );
        Ok(row)
    }

    /// Keeps a token's book as a redemption left it, to be written at the end. The token
    /// must have been read with [`Deferred::token`].
    pub fn save_book(&self, book: &LeaseBook) -> Result<(), ServiceError> {
        match self.pending().tokens.get_mut(&book.token_id) {
            Some(Some(held)) => {
                held.now.book = book.clone();
                Ok(())
            }
            _ => Err(ServiceError::Corrupt("a token saved without being read")),
        }
    }

    /// Takes `amount` from `account` at the end (see [`Deferred::settle`]).
    pub fn debit(&self, account: &str, amount: u64) -> Result<i64, ServiceError> {
        let too_large = || ServiceError::Unprocessable("the amount does not fit the ledger".into());
        let value = to_db(amount).ok_or_else(too_large)?;
        let mut pending = self.pending();
        let total = pending.debits.entry(account.to_owned()).or_insert(0);
        *total = total.checked_add(value).ok_or_else(too_large)?;
        Ok(value)
    }

    /// Takes the pending debits and the tokens' changes, forgetting the tokens read: the
    /// changes a redemption makes (its range's redeemed link) as [`RangeUpdate`]s, any
    /// other as the books before and after.
    fn take_token_writes(&self) -> TokenWrites {
        let (debits, tokens) = {
            let mut pending = self.pending();
            (
                std::mem::take(&mut pending.debits),
                std::mem::take(&mut pending.tokens),
            )
        };
        let mut writes = TokenWrites {
            debits,
            ..TokenWrites::default()
        };
        for held in tokens.into_values().flatten() {
            let (before, after) = (held.stored, held.now.book);
            if before.refunded != after.refunded
                || before.handover != after.handover
                || before.ranges.len() != after.ranges.len()
            {
                writes.books.push((before, after));
                continue;
            }
            for (seq, (old, new)) in before.ranges.iter().zip(&after.ranges).enumerate() {
                if old != new {
                    writes.ranges.push(RangeUpdate {
                        token_id: after.token_id,
                        seq: seq as u64,
                        range: new.clone(),
                    });
                }
            }
        }
        writes
    }

    /// Makes the pending debits and writes the tokens' changed books, and forgets the
    /// tokens read: before any operation other than a redemption.
    pub async fn settle(&self, conn: &mut AnyConnection) -> Result<(), ServiceError> {
        let writes = self.take_token_writes();
        for (before, after) in &writes.books {
            store::save_book(conn, before, after).await?;
        }
        batch_tokens::debit_accounts(conn, &writes.debits).await?;
        batch_tokens::update_ranges(conn, &writes.ranges).await
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

    /// Writes what was deferred and applies the batch's `held` credits to hosts to the
    /// writer's `shard` of their accounts. On PostgreSQL, all in one statement (see
    /// [`crate::pg_flush`]), the debits and ranges checked by its counts; on SQLite, whose
    /// statements cost no round trip, one statement for each kind of row.
    pub async fn flush(
        self,
        conn: &mut AnyConnection,
        backend: Backend,
        held: &HeldCredits,
        shard: u32,
    ) -> Result<(), ServiceError> {
        let writes = self.take_token_writes();
        for (before, after) in &writes.books {
            store::save_book(conn, before, after).await?;
        }
        let pending = self
            .0
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if backend == Backend::Postgres {
            let credits = held.take();
            return pg_flush::write(
                conn,
                &pg_flush::Writes {
                    debits: &writes.debits,
                    ranges: &writes.ranges,
                    transfers: &pending.transfers,
                    records: &pending.records,
                    credits: &credits,
                    shard,
                },
            )
            .await;
        }
        batch_tokens::debit_accounts(conn, &writes.debits).await?;
        batch_tokens::update_ranges(conn, &writes.ranges).await?;
        for chunk in pending.transfers.chunks(ROWS_PER_STATEMENT) {
            ledger::insert_transfers(conn, chunk).await?;
        }
        for chunk in pending.records.chunks(ROWS_PER_STATEMENT) {
            idempotency::record_many(conn, chunk).await?;
        }
        held.apply(conn, shard).await?;
        Ok(())
    }
}

/// What a batch's redemptions changed in tokens and escrows.
#[derive(Debug, Default)]
struct TokenWrites {
    debits: BTreeMap<String, i64>,
    ranges: Vec<RangeUpdate>,
    books: Vec<(LeaseBook, LeaseBook)>,
}
