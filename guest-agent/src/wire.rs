//! The wire format between agents: postcard, inside a small versioned frame.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, FutureId, HopId, ObjectId};
use crate::registry::TaskState;
use crate::task::Wait;

/// Bumped on any change to [`Message`] or what it carries.
pub const WIRE_VERSION: u16 = 2;
const MAGIC: u16 = 0x4741; // "GA"

/// A task in flight or at rest, with what the runtime needs to route and account for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Where its result is remembered.
    pub fut: FutureId,
    pub state: TaskState,
    /// What the next step needs (`None`: run it wherever the task is).
    pub wait: Option<Wait>,
    /// The epoch of the forwarding pointer that sent it here: the object is here or on its way.
    pub via_pointer: Option<u32>,
    /// Continuation transfers so far.
    pub hops: u32,
    /// The last objects it touched, for the co-access sketch (a few, newest last).
    pub touched: Vec<ObjectId>,
    /// Read-only copies fetched for its next step.
    pub copies: Vec<(ObjectId, Vec<u8>)>,
}

/// A finished task's value (postcard), or why it failed.
pub type TaskResult = Result<Vec<u8>, String>;

/// What a fetch found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fetched {
    /// A copy of the object.
    Copy(Vec<u8>),
    /// The object is bigger than the task that asked: move the task instead.
    TooBig { size: u32 },
    /// No such object exists.
    Missing,
}

/// What one hop carries. Every hop is applied exactly once by its receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// A continuation.
    Task(TaskRecord),
    /// A result going home to its future's origin (`remember`).
    Result { fut: FutureId, result: TaskResult },
    /// A request for a read-only copy, for tasks parked at `requester`.
    Fetch {
        object: ObjectId,
        requester: AgentId,
        limit: u32,
        epoch: Option<u32>,
    },
    /// The answer to a fetch, from the agent holding the object.
    Fetched {
        object: ObjectId,
        at: AgentId,
        epoch: u32,
        found: Fetched,
    },
    /// An object moving here (placement), with its new epoch.
    Object {
        id: ObjectId,
        epoch: u32,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A reliable transfer; acknowledged once applied.
    Hop { id: HopId, payload: Payload },
    /// Cumulative: every hop on link `to -> from` with `seq <= upto` is applied (and durable).
    Ack {
        from: AgentId,
        to: AgentId,
        upto: u64,
    },
    /// Best effort: `object` was at `at` with this epoch and size.
    Hint {
        object: ObjectId,
        at: AgentId,
        epoch: u32,
        size: u32,
    },
    /// Best effort: how many objects the sender holds (for the placement's balance limit).
    Load { from: AgentId, objects: u64 },
    /// Best effort: the sender's co-access pairs that involve objects held by the receiver
    /// (pair, weight), replacing what the sender reported before.
    Pairs {
        from: AgentId,
        pairs: Vec<(ObjectId, ObjectId, u32)>,
    },
    /// Best effort: the objects the sender holds, as (object, epoch, size), so that tasks and
    /// placement elsewhere stop routing by stale guesses after objects move.
    Directory {
        from: AgentId,
        held: Vec<(ObjectId, u32, u32)>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("the frame is {len} bytes, shorter than its 4-byte header")]
    Short { len: usize },
    #[error("the frame does not start with the agent protocol's magic number")]
    Magic,
    #[error("the peer speaks agent protocol version {theirs}; this agent speaks {ours}")]
    Version { ours: u16, theirs: u16 },
    #[error("the message does not decode: {0}")]
    Decode(postcard::Error),
    #[error("the message does not encode: {0}")]
    Encode(postcard::Error),
}

impl Message {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
        let body = postcard::to_allocvec(self).map_err(WireError::Encode)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        let (header, body) = frame
            .split_at_checked(4)
            .ok_or(WireError::Short { len: frame.len() })?;
        if header[..2] != MAGIC.to_le_bytes() {
            return Err(WireError::Magic);
        }
        let theirs = u16::from_le_bytes([header[2], header[3]]);
        if theirs != WIRE_VERSION {
            return Err(WireError::Version {
                ours: WIRE_VERSION,
                theirs,
            });
        }
        let (message, rest) = postcard::take_from_bytes(body).map_err(WireError::Decode)?;
        if !rest.is_empty() {
            return Err(WireError::Decode(postcard::Error::DeserializeBadEncoding));
        }
        Ok(message)
    }
}

/// The encoded size of a value, as it would cross the wire.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::experimental::serialized_size(value).unwrap_or(usize::MAX)
}
