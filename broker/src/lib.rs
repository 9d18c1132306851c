//! Laundromat's broker: tenant accounts, the host registry, token sales with escrow, token
//! leases, redemption and refunds, on a double-entry ledger in SQLite or PostgreSQL.
//!
//! - [`db`]: the database and its write transactions; [`ledger`]: accounts and transfers;
//!   [`store`]: rows to values.
//! - [`rules`]: the lease and settlement rules, pure; [`ops`]: the operations on the ledger;
//!   [`redemption`]: claims, one or many per request.
//! - [`idempotency`], [`service`]: one path for every request that moves money;
//!   [`group_commit`]: the single writer that commits many of them at once; [`known`]: the
//!   registered signers it has seen; [`deferred`]: what a batch writes once, at its end;
//!   [`batch_tokens`]: its multi-row statements on tokens and escrows; [`pg_flush`]: its
//!   writes as one PostgreSQL statement.
//! - [`http`], [`server`]: the axum service; [`client`]: a signing client.
//! - [`directory`]: the host directory, from the hosts' signed adverts.
//! - [`check`]: the invariants, proved from the rows.
//! - [`scratch_pg`]: a throwaway PostgreSQL cluster for the tests and the benchmark.

pub mod batch_tokens;
pub mod check;
pub mod client;
pub mod clock;
pub mod db;
pub mod deferred;
pub mod directory;
pub mod error;
pub mod group_commit;
pub mod http;
pub mod idempotency;
pub mod keys;
pub mod known;
pub mod ledger;
pub mod metrics;
pub mod ops;
pub mod pg_flush;
pub mod redemption;
pub mod rules;
pub mod scratch_pg;
pub mod server;
pub mod service;
pub mod store;

pub use laundromat_api as api;
