//! Group commit: one writer runs every money-moving request, many to a transaction.
//!
//! A request's effects, its idempotency record and its lease changes are one unit, and the
//! cost of a durable commit (an fsync, and on PostgreSQL the row locks on hot accounts such
//! as a host's earnings, held until it) does not depend on how many units it carries. So the
//! writer takes every request waiting at that moment, up to [`MAX_BATCH`], runs them all in
//! one transaction, commits once, and only then answers each of them: every 2xx answer is
//! durable before it is sent.
//!
//! A batch first runs straight, its requests one after the other in the transaction with
//! no savepoints (two round trips less per request). If one of them is refused or fails,
//! that run is rolled back unanswered, and the batch runs again carefully, each request in
//! a savepoint of its own: a request that is refused (bad claim, insufficient balance, ...)
//! rolls back to its savepoint, and its refusal is recorded under its idempotency key; the
//! others in the batch are untouched. Either way the answers are the same. A request that loses a race with another transaction (a PostgreSQL
//! deadlock or unique violation) rolls back alone and is queued again, up to
//! [`MAX_ATTEMPTS`] runs. If the commit itself fails, nothing of the batch happened: it is
//! run again whole when the failure is a lost race, and otherwise every request in it gets
//! the failure.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Any, AnyPool};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::db::is_retryable;
#[cfg(doc)]
use crate::db::Db;
use crate::deferred::Deferred;
use crate::error::ServiceError;
use crate::idempotency::{self, Stored};
use crate::known::Learned;
use crate::ledger::HeldCredits;
use crate::ops::Operation;
use crate::service::{error_answer, Applied, Broker, Keyed, MAX_ATTEMPTS};

/// The most requests one transaction carries: bounds the time its locks are held and the
/// work lost when it fails.
pub const MAX_BATCH: usize = 128;

/// Writers on PostgreSQL. With credits to hosts held to the end of each transaction and
/// applied to the writer's own shard of each host's account (see
/// [`crate::ledger::HeldCredits`]), batches on different tokens never wait for each other,
/// so a few writers overlap one batch's statements with another's commit, and their
/// commits share PostgreSQL's WAL flushes. SQLite has a single writer.
pub const POSTGRES_WRITERS: usize = 4;

/// Requests waiting for the writer; a full queue makes new requests wait before they join.
const QUEUE: usize = 1024;

/// A request waiting for the writer, and where its answer goes.
struct Job {
    keyed: Keyed,
    op: Operation,
    runs: u32,
    reply: oneshot::Sender<Stored>,
}

/// What became of a request in a batch that committed.
enum Outcome {
    Answer(Stored),
    /// It lost a race with another transaction; run it again.
    Again,
}

/// The handle requests use to reach the writer. The writer ends when the broker, which
/// holds the only strong handle, is dropped.
#[derive(Debug)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("op", &self.op.name())
            .field("runs", &self.runs)
            .finish()
    }
}

fn unavailable() -> Stored {
    error_answer(&ServiceError::Unavailable)
}

impl Committer {
    /// Queues a request and waits until its batch is durable (or failed).
    pub(crate) async fn submit(&self, keyed: Keyed, op: Operation) -> Stored {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            keyed,
            op,
            runs: 0,
            reply,
        };
        if self.queue.send(job).await.is_err() {
            return unavailable();
        }
        answer.await.unwrap_or_else(|_| unavailable())
    }
}

/// Starts `writers` writers for `broker`, whose database pool is `pool`, sharing one queue.
pub(crate) fn spawn(broker: Weak<Broker>, pool: &AnyPool, writers: usize) -> Committer {
    let (queue, jobs) = mpsc::channel(QUEUE);
    let jobs = Arc::new(Mutex::new(jobs));
    for shard in 0..writers.max(1) {
        let shard = u32::try_from(shard).unwrap_or(u32::MAX);
        tokio::spawn(writer(
            broker.clone(),
            pool.clone(),
            queue.downgrade(),
            jobs.clone(),
            shard,
        ));
    }
    Committer { queue }
}

/// Takes the next batch: waits for one request, then takes whatever else is waiting.
async fn next_batch(jobs: &Mutex<mpsc::Receiver<Job>>) -> Option<Vec<Job>> {
    let mut jobs = jobs.lock().await;
    let mut batch = vec![jobs.recv().await?];
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// What a writer keeps between its batches.
#[derive(Debug)]
struct WriterState {
    /// Its batches credit hosts in its own shard of their accounts (see
    /// [`crate::ledger::HeldCredits`]).
    shard: u32,
    /// How many more batches run with a savepoint per request from the start, after one
    /// had to (see [`Mode`]).
    careful_left: u32,
    /// Its connection, kept from batch to batch (see [`Db::begin_on`]); dropped after a
    /// failure, and taken afresh from the pool.
    conn: Option<PoolConnection<Any>>,
}

impl WriterState {
    fn new(shard: u32) -> Self {
        Self {
            shard,
            careful_left: 0,
            conn: None,
        }
    }
}

/// After a batch had to be run again with savepoints, how many of the writer's next
/// batches start that way: a stream of refused requests costs one run per batch, not two.
const CAREFUL_BATCHES: u32 = 16;

/// How a batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every request straight in the transaction: two round trips less per request. The
    /// first request that is refused or fails aborts the run, and the batch runs again,
    /// carefully; nothing of the aborted run is kept or answered.
    Straight,
    /// Every request in a savepoint of its own, so that a refusal or a failure undoes that
    /// request alone.
    Careful,
}

async fn writer(
    broker: Weak<Broker>,
    pool: AnyPool,
    requeue: mpsc::WeakSender<Job>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    shard: u32,
) {
    let mut state = WriterState::new(shard);
    loop {
        // Closing the pool waits for every connection taken from it: the writer gives its
        // own back as soon as the pool closes, rather than when the next request comes.
        let next = tokio::select! {
            next = next_batch(&jobs) => next,
            () = pool.close_event(), if state.conn.is_some() => {
                state.conn = None;
                continue;
            }
        };
        let Some(batch) = next else {
            return;
        };
        // The jobs' senders see their answers dropped, and answer "unavailable".
        let Some(broker) = broker.upgrade() else {
            return;
        };
        for job in commit_batch(&broker, batch, &mut state).await {
            let Some(queue) = requeue.upgrade() else {
                let _ = job.reply.send(unavailable());
                continue;
            };
            // Back off outside the writer, so the rest of the queue goes on meanwhile.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(u64::from(job.runs) * 2)).await;
                if let Err(mpsc::error::SendError(job)) = queue.send(job).await {
                    let _ = job.reply.send(unavailable());
                }
            });
        }
    }
}

/// Runs a batch until it commits or fails for good; answers its requests, and returns those
/// to run again.
async fn commit_batch(broker: &Broker, mut batch: Vec<Job>, state: &mut WriterState) -> Vec<Job> {
    let mut mode = if state.careful_left > 0 {
        state.careful_left -= 1;
        Mode::Careful
    } else {
        Mode::Straight
    };
    let mut attempt = 0;
    let outcomes = loop {
        attempt += 1;
        let result = run_batch_on(broker, &mut state.conn, &batch, state.shard, mode).await;
        if result.is_err() {
            // Whatever state the failure left the connection in, it goes.
            state.conn = None;
        }
        match result {
            Ok(Some(outcomes)) => break outcomes,
            Ok(None) => {
                // Run at most once per batch, so it is not counted as an attempt.
                attempt -= 1;
                mode = Mode::Careful;
                state.careful_left = CAREFUL_BATCHES;
            }
            Err(error) if is_retryable(&error) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, size = batch.len(), %error, "batch lost a race; running it again");
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2)).await;
            }
            Err(error) => {
                tracing::error!(size = batch.len(), %error, "batch failed");
                let answer = error_answer(&ServiceError::Database(error));
                for job in batch {
                    let _ = job.reply.send(answer.clone());
                }
                return Vec::new();
            }
        }
    };
    if batch.len() > 1 {
        tracing::debug!(size = batch.len(), ?mode, "group commit");
    }
    let mut again = Vec::new();
    for (mut job, outcome) in batch.drain(..).zip(outcomes) {
        match outcome {
            Outcome::Answer(stored) => {
                tracing::info!(op = job.op.name(), status = stored.status, "answered");
                let _ = job.reply.send(stored);
            }
            Outcome::Again => {
                job.runs += 1;
                again.push(job);
            }
        }
    }
    again
}

/// [`run_batch_on`] on a connection from the pool.
#[cfg(test)]
async fn run_batch(
    broker: &Broker,
    batch: &[Job],
    shard: u32,
    mode: Mode,
) -> Result<Option<Vec<Outcome>>, sqlx::Error> {
    run_batch_on(broker, &mut None, batch, shard, mode).await
}

/// One transaction over the batch, on the writer's connection `conn` (taken from the pool
/// if it has none). Fails only when the transaction as a whole fails; the outcomes then
/// mean nothing. In [`Mode::Straight`], returns `None`, having rolled back, when a request
/// was refused or failed: the batch is to run again carefully.
async fn run_batch_on(
    broker: &Broker,
    conn: &mut Option<PoolConnection<Any>>,
    batch: &[Job],
    shard: u32,
    mode: Mode,
) -> Result<Option<Vec<Outcome>>, sqlx::Error> {
    let started = std::time::Instant::now();
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(broker.db.pool().acquire().await?),
    };
    let mut write = broker.db.begin_on(conn).await?;
    let held = HeldCredits::default();
    let learned = Learned::default();
    let outcomes = match mode {
        // A straight batch applies the held credits with its deferred writes.
        Mode::Straight => {
            match run_straight(broker, &mut write.tx, batch, &held, &learned, shard).await? {
                Some(outcomes) => outcomes,
                None => {
                    write.tx.rollback().await?;
                    return Ok(None);
                }
            }
        }
        Mode::Careful => {
            let outcomes = run_careful(broker, &mut write.tx, batch, &held, &learned).await?;
            held.apply(&mut write.tx, shard).await?;
            outcomes
        }
    };
    let committing = std::time::Instant::now();
    write.tx.commit().await?;
    tracing::trace!(
        size = batch.len(),
        ?mode,
        commit_us = committing.elapsed().as_micros(),
        run_us = started.elapsed().as_micros(),
        "batch committed"
    );
    broker.known.remember(learned);
    Ok(Some(outcomes))
}

/// The requests of a straight batch, with their keys looked up at once and their ledger
/// rows and answers written at once at the end, with the held credits (see
/// [`crate::deferred`]). `None` when one
/// of them was refused or failed, or the deferred writes failed: the transaction is then
/// to be rolled back.
async fn run_straight(
    broker: &Broker,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch: &[Job],
    held: &HeldCredits,
    learned: &Learned,
    shard: u32,
) -> Result<Option<Vec<Outcome>>, sqlx::Error> {
    let keys: Vec<_> = batch.iter().map(|job| &job.keyed.request).collect();
    let tokens: Vec<_> = batch
        .iter()
        .flat_map(|job| match &job.op {
            Operation::Redeem(body) => vec![body.claim.claim.token_id],
            Operation::RedeemBatch(body) => body.claims.iter().map(|c| c.claim.token_id).collect(),
            _ => Vec::new(),
        })
        .collect();
    let deferred = match Deferred::prefetch(tx, &keys, &tokens).await {
        Ok(deferred) => deferred,
        Err(ServiceError::Database(error)) => return Err(error),
        Err(error) => {
            tracing::debug!(%error, "a batch's tokens could not be read; running it with savepoints");
            return Ok(None);
        }
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let applied = broker
            .apply(tx, &job.keyed, &job.op, held, learned, Some(&deferred))
            .await;
        match applied {
            Ok(Applied::Done(stored)) => outcomes.push(Outcome::Answer(stored)),
            Ok(Applied::Refused(_)) | Err(_) => {
                tracing::debug!(
                    op = job.op.name(),
                    "a request was refused; running its batch with savepoints"
                );
                return Ok(None);
            }
        }
    }
    let flushed = deferred.flush(tx, broker.db.backend(), held, shard).await;
    if let Err(error) = flushed {
        tracing::debug!(%error, "a batch's deferred writes failed; running it with savepoints");
        return Ok(None);
    }
    Ok(Some(outcomes))
}

/// The requests of a careful batch, each in a savepoint of its own.
async fn run_careful(
    broker: &Broker,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    batch: &[Job],
    held: &HeldCredits,
    learned: &Learned,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let mut savepoint = tx.begin().await?;
        let outcome = match broker
            .apply(&mut savepoint, &job.keyed, &job.op, held, learned, None)
            .await
        {
            Ok(Applied::Done(stored)) => {
                savepoint.commit().await?;
                Outcome::Answer(stored)
            }
            Ok(Applied::Refused(stored)) => {
                savepoint.rollback().await?;
                record_refusal(broker, tx, job, stored).await?
            }
            Err(error) => {
                savepoint.rollback().await?;
                failed(job, error)
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Records a refusal under the request's key (Stripe keeps those too), in a savepoint of
/// its own so that a failure to record it touches no other request.
async fn record_refusal(
    broker: &Broker,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job: &Job,
    stored: Stored,
) -> Result<Outcome, sqlx::Error> {
    let mut savepoint = tx.begin().await?;
    let now = broker.clock.now();
    match idempotency::record(&mut savepoint, &job.keyed.request, &stored, now).await {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(Outcome::Answer(stored))
        }
        Err(error) => {
            savepoint.rollback().await?;
            Ok(failed(job, ServiceError::Database(error)))
        }
    }
}

/// The outcome of a request that failed without an answer of its own to keep.
fn failed(job: &Job, error: ServiceError) -> Outcome {
    match &error {
        ServiceError::Database(db) if is_retryable(db) && job.runs + 1 < MAX_ATTEMPTS => {
            tracing::debug!(op = job.op.name(), %db, "request lost a race; running it again");
            Outcome::Again
        }
        ServiceError::Database(_) | ServiceError::Corrupt(_) => {
            tracing::error!(op = job.op.name(), %error, source = ?std::error::Error::source(&error), "request failed");
            Outcome::Answer(error_answer(&error))
        }
        _ => Outcome::Answer(error_answer(&error)),
    }
}

#[cfg(test)]
#[path = "group_commit_tests.rs"]
mod tests;
