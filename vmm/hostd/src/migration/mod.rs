//! Moving a VM to another host, driven by the hostds of both ends.
//!
//! - [`outgoing`]: the source. On a request signed by the VM's tenant or the operator, it
//!   asks the destination to prepare, drives its `vmm`'s migration (held before `Commit`),
//!   and at the hold freezes payments, sends the final payment state to the destination and
//!   prepares the lease handover with its final claim; then commits, or cancels.
//! - [`incoming`]: the destination. It checks the token and payment state, starts
//!   `vmm run --incoming` pinned to the source's registered key, and owns the VM (and
//!   confirms the handover) once that `vmm` runs it.
//! - [`drain`]: every VM of this host to other hosts, by free capacity.
//!
//! Progress goes to the requester as JSON lines ([`Events`]).

pub mod drain;
pub mod incoming;
pub mod messages;
pub mod outgoing;

/// Where a migration's progress lines go (the HTTP answer, streamed).
pub type Events = tokio::sync::mpsc::UnboundedSender<serde_json::Value>;

/// Sends one line; a requester that went away does not stop the migration.
pub(crate) fn emit(events: &Events, line: serde_json::Value) {
    let _ = events.send(line);
}
