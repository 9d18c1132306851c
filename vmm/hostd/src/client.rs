//! The HTTP client for hostd's API lives in the shared `laundromat-api` crate, so that the
//! `laundromat` CLI uses it without depending on hostd; re-exported here for hostd's tests.

pub use laundromat_api::hostd_client::{ClientError, ConsoleChunk, ConsoleFollow, HostdClient};
