//! hostd, the Laundromat host daemon: admits VMs on broker-signed boot tokens, runs each in
//! its own supervised `vmm` process driven through its control socket, meters hash-chain
//! payments, reclaims VMs whose paid time has run out, and settles with the broker.
//!
//! - [`admission`], [`payments`], [`lifecycle`] (reclaim, redemption), [`recovery`]
//!   (re-adopting `vmm` processes after a restart): what the host does.
//! - [`network`]: a tap per VM on the operator's bridge (`--bridge`), MACs per VM.
//! - [`host`]: its VMs and capacity. [`vmm_process`]: one `vmm`. [`record`]: what is on disk.
//! - [`broker`]: the [`broker::BrokerClient`] trait and an in-process fake.
//! - [`migration`]: moving a VM to another host (both sides) and draining; [`peer`]: the
//!   signed requests between hosts.
//! - [`http`]: the API; [`auth`]: tenant-signed requests (the product's one signing scheme,
//!   `laundromat_api::signing`); [`client`]: an HTTP client for it (from `laundromat-api`).

pub mod admission;
pub mod auth;
pub mod broker;
pub mod client;
pub mod config;
pub mod console;
pub mod daemon;
pub mod disks;
pub mod durable;
pub mod host;
pub mod http;
pub mod identity;
pub mod images;
pub mod launch;
pub mod lifecycle;
pub mod metrics;
pub mod migration;
pub mod migration_key;
pub mod network;
pub mod payments;
pub mod peer;
pub mod record;
pub mod recovery;
pub mod vmm_process;
