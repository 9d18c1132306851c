//! The client interface: JSON requests and answers, one frame each, on the agent's port. The
//! requests, answers and how they are answered live in `guest_agent::client`, shared with the
//! bench unikernel's agent.
//!
//! A connection starts with one byte: `C` for a client, `P` (then the peer's id, u16 LE) for an
//! agent.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub use guest_agent::client::{self, Request};

use crate::frame::{read_frame, write_frame};

pub const HELLO_CLIENT: u8 = b'C';
pub const HELLO_PEER: u8 = b'P';

/// What a client reads back: a finished task's value is any JSON (the daemon and a VM agent
/// both answer with `guest_agent::client::Value`).
pub type Response = client::Response<serde_json::Value>;

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
