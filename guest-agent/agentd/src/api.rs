//! The client interface: JSON requests and answers, one frame each, on the agent's port.
//!
//! A connection starts with one byte: `C` for a client, `P` (then the peer's id, u16 LE) for an
//! agent.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use guest_agent::{FutureId, Policy, Stats};
use serde::{Deserialize, Serialize};

use crate::frame::{read_frame, write_frame};

pub const HELLO_CLIENT: u8 = b'C';
pub const HELLO_PEER: u8 = b'P';

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Start a timeline read for `user`. `key` makes a retried submit idempotent.
    Timeline {
        user: u32,
        limit: u32,
        key: u64,
    },
    /// Append post `post` (a unique id) to `user`'s feed.
    Publish {
        user: u32,
        post: u64,
        key: u64,
    },
    /// Read the post ids of `user`'s feed.
    Feed {
        user: u32,
        key: u64,
    },
    /// A task's result, if it has arrived here (its origin).
    Result {
        future: FutureId,
    },
    Stats,
    /// How reads of remote objects are served from now on.
    SetPolicy {
        policy: Policy,
    },
    /// Run one placement pass now.
    Place,
}

impl Request {
    /// Whether answering it changes the agent's state (so it goes into the write-ahead log).
    pub fn changes_state(&self) -> bool {
        !matches!(self, Request::Result { .. } | Request::Stats)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Submitted {
        future: FutureId,
    },
    Pending,
    Done {
        value: serde_json::Value,
    },
    Failed {
        reason: String,
    },
    Stats {
        stats: Stats,
        objects: u64,
        unacked: u64,
        moved: u64,
    },
    Ok,
    Error {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {addr}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("the connection to the agent broke")]
    Io(#[from] io::Error),
    #[error("the agent closed the connection without answering")]
    Closed,
    #[error("the agent's answer is not valid JSON")]
    Json(#[from] serde_json::Error),
}

/// One client connection to an agent.
pub struct Client {
    stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let connect = |source| ClientError::Connect { addr, source };
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
        stream.set_read_timeout(Some(timeout)).map_err(connect)?;
        stream.set_nodelay(true).map_err(connect)?;
        io::Write::write_all(&mut stream, &[HELLO_CLIENT]).map_err(connect)?;
        Ok(Client { stream })
    }

    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        write_frame(&mut self.stream, &serde_json::to_vec(request)?)?;
        let frame = read_frame(&mut self.stream)?.ok_or(ClientError::Closed)?;
        Ok(serde_json::from_slice(&frame)?)
    }
}
