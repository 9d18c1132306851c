//! The broker's HTTP API as its clients see it: the request and response bodies, the paths,
//! and the ed25519 signature every request that moves money carries.
//!
//! The broker, `hostd` and the tenant client `laundromat` share this crate, so that the three
//! agree on the wire without any of them depending on the broker's storage.
//!
//! - [`signing`]: how a request is signed and checked (method, path, body hash, timestamp,
//!   idempotency key; clock skew at most [`signing::MAX_SKEW_SECS`]).
//! - [`types`]: the JSON bodies.
//! - [`paths`]: the versioned paths.
//! - [`claims`]: how a host splits a large claim into steps the broker accepts.
//! - [`hostd`]: hostd's tenant-facing API (bodies and paths), which `laundromat` calls with
//!   the same signatures; [`hostd_client`] (feature `client`) calls it.

pub mod claims;
pub mod hostd;
#[cfg(feature = "client")]
pub mod hostd_client;
pub mod paths;
pub mod signing;
pub mod types;

pub use signing::{RequestSignature, SignatureError, SignedHeaders};
