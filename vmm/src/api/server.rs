//! Serves the control socket: a listener thread, and one thread per connection.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::protocol::{response, Request, MAX_REQUEST_BYTES};
use crate::controller::VmController;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on control socket {path}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the control socket thread")]
    Thread(#[source] std::io::Error),
}

/// Removes the socket file when the server is dropped.
pub struct ApiServer {
    path: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn dispatch(vm: &VmController, req: Request) -> Result<serde_json::Value, String> {
    let status = |vm: &VmController| serde_json::to_value(vm.status()).map_err(|e| e.to_string());
    match req {
        Request::Pause {} => {
            vm.pause().map_err(|e| e.to_string())?;
            status(vm)
        }
        Request::Resume {} => {
            vm.resume().map_err(|e| e.to_string())?;
            status(vm)
        }
        Request::Status {} => status(vm),
        Request::Shutdown {} => {
            vm.shutdown();
            Ok(serde_json::json!({ "state": "stopped" }))
        }
    }
}

/// Answers requests on one connection until the peer hangs up.
fn serve_connection(vm: &VmController, stream: UnixStream) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if n > MAX_REQUEST_BYTES {
            response(Err(format!(
                "request longer than {MAX_REQUEST_BYTES} bytes"
            )))
        } else {
            match Request::parse(line.trim()) {
                Ok(req) => response(dispatch(vm, req)),
                Err(e) => response(Err(e.to_string())),
            }
        };
        writer.write_all(reply.as_bytes())?;
        writer.write_all(b"\n")?;
        if n > MAX_REQUEST_BYTES {
            // The rest of an oversized line cannot be resynchronised; drop the connection.
            return Ok(());
        }
    }
}

/// Starts serving `vm` on a Unix socket at `path`, replacing a stale socket file.
pub fn start(path: &Path, vm: Arc<VmController>) -> Result<ApiServer, ServerError> {
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.into(),
        source,
    })?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let vm = vm.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("api-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve_connection(&vm, stream) {
                                tracing::debug!("control connection ended: {e}");
                            }
                        });
                if let Err(e) = spawned {
                    tracing::warn!("cannot serve a control connection: {e}");
                }
            }
        })
        .map_err(ServerError::Thread)?;
    Ok(ApiServer { path: path.into() })
}
