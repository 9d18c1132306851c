//! The guest agent's core: portable continuations that move to their data.
//!
//! This is Swarm's model ("move the computation, not the data") built as a library without I/O,
//! clock or threads, so the same code runs in the Linux daemon `guest-agentd` and inside the
//! bench unikernel:
//!
//! - [`Ref<T>`] names an object anywhere in the swarm (a global id and a location hint that
//!   forwarding pointers keep right);
//! - a [`Task`] is a serde state machine; each [`Step`] continues, waits for an object (the
//!   next step runs where it lives, or on a fetched copy), moves to an agent, or finishes;
//!   [`Ctx::spawn`] starts a child whose result is remembered at the spawner (its future's
//!   origin) and taken with [`Ctx::result`];
//! - [`Agent`] runs tasks and moves them between agents with exactly-once hops;
//! - [`Registry`] names task types on the wire (name, version, schema hash);
//! - [`RefMap`] spreads a map's entries over agents;
//! - [`placement`] moves objects toward the objects they are used with.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod agent;
pub mod client;
pub mod context;
pub mod ids;
pub mod link;
pub mod placement;
pub mod reference;
pub mod refmap;
pub mod registry;
pub mod sim;
pub mod sketch;
pub mod stats;
pub mod store;
pub mod task;
pub mod timeline;
pub mod wire;

pub use agent::{Agent, AgentError, Config, Event, Policy, Transport};
pub use context::Ctx;
pub use ids::{AgentId, FutureId, HopId, ObjectId};
pub use reference::{AnyRef, Ref};
pub use refmap::RefMap;
pub use registry::{task_type, Registry, RegistryError, TaskState, TaskType};
pub use stats::Stats;
pub use task::{Access, Step, Task, Wait};
pub use wire::{Message, Payload, TaskResult, WireError};

/// The schema derive tasks and the objects they hold need.
pub use postcard_schema::Schema;
