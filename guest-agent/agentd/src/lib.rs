//! `guest-agentd`: the guest agent's Linux runtime.
//!
//! One agent per process: TCP links to the peers named in its config file, its state made
//! durable in its data dir before anything it contains is acknowledged, and a small JSON client
//! interface (`guest-agentd timeline|publish|feed|result|stats|policy|place`, the requests in
//! `guest_agent::client`) to submit tasks and read results.

pub mod api;
pub mod config;
pub mod frame;
pub mod journal;
pub mod node;
pub mod persist;
pub mod wal;
