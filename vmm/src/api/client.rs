//! The client side of the control socket, used by `vmm ctl` and by tests.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::Request;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to control socket {path}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("the VMM closed the connection without answering")]
    NoAnswer,
    #[error("the VMM answered with invalid JSON")]
    BadAnswer(#[from] serde_json::Error),
}

/// Sends a request whose answer is a stream: every `{"event":...}` line goes to `on_event`,
/// and the first other line is the final answer.
pub fn call_streaming(
    path: &Path,
    req: &Request,
    timeout: Duration,
    on_event: &mut dyn FnMut(&serde_json::Value),
) -> Result<serde_json::Value, ClientError> {
    let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.into(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    writer.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::NoAnswer);
        }
        let v: serde_json::Value = serde_json::from_str(&answer)?;
        if v.get("event").is_some() {
            on_event(&v);
        } else {
            return Ok(v);
        }
    }
}

/// Sends one request and returns the JSON response.
pub fn call(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    // A plain answer is a stream with no events.
    call_streaming(path, req, timeout, &mut |_| {})
}
