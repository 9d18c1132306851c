//! Serves the control socket: a listener thread, and one thread per connection.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use migrator::source::CommitDecision;

use super::hold::CommitGate;
use super::protocol::{response, Request, MAX_REQUEST_BYTES};
use crate::controller::VmController;
use crate::persist::snapshot;
use crate::vstate::run_control::Requested;

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

/// Removes the socket file when dropped, after letting requests in flight write their
/// answers (a `shutdown` or `snapshot --stop` ends the process right after it is handled).
pub struct ApiServer {
    path: PathBuf,
    in_flight: Arc<AtomicUsize>,
}

/// How long the process waits at exit for answers still being written.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

impl Drop for ApiServer {
    fn drop(&mut self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the socket serves: a VM, or (while `vmm run --incoming` waits for it) a migration
/// that is not a VM yet; and the hold of an outgoing migration.
#[derive(Default)]
pub struct Served {
    vm: OnceLock<Arc<VmController>>,
    incoming: Mutex<&'static str>,
    gate: CommitGate,
}

impl Served {
    fn with_vm(vm: Arc<VmController>) -> Self {
        let served = Self::default();
        let _ = served.vm.set(vm);
        served
    }

    /// From now on requests go to `vm` (the incoming migration is committed and runs).
    pub fn attach(&self, vm: Arc<VmController>) {
        if self.vm.set(vm).is_err() {
            tracing::warn!("the control socket already serves a VM");
        }
    }

    /// What `status` says before a VM is attached: `listening`, `ready` (everything
    /// received, waiting for the source's commit).
    pub fn set_incoming_phase(&self, phase: &'static str) {
        *self.incoming.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }
}

/// The answer to a request while the VM is still arriving: only `status` is served.
fn incoming_answer(served: &Served, req: &Request) -> Result<serde_json::Value, String> {
    match req {
        Request::Status {} => Ok(serde_json::json!({
            "state": "incoming",
            "phase": *served.incoming.lock().unwrap_or_else(|e| e.into_inner()),
        })),
        _ => Err(
            "the VM is still arriving by migration: only status is served until it runs here"
                .into(),
        ),
    }
}

/// Carries out one request and returns its answer line. `migrate` also streams progress
/// lines to `writer` before its answer.
fn dispatch(served: &Served, req: Request, writer: &mut UnixStream) -> String {
    let Some(vm) = served.vm.get() else {
        return response(incoming_answer(served, &req));
    };
    let decide = |decision| {
        served
            .gate
            .decide(decision)
            .map(|()| serde_json::json!({}))
            .map_err(|e| e.to_string())
    };
    let status = |vm: &VmController| serde_json::to_value(vm.status()).map_err(|e| e.to_string());
    let result = match req {
        Request::Pause {} => vm
            .pause()
            .map_err(|e| e.to_string())
            .and_then(|_| status(vm)),
        Request::Resume {} => vm
            .resume()
            .map_err(|e| e.to_string())
            .and_then(|_| status(vm)),
        Request::Status {} => status(vm),
        Request::Shutdown {} => {
            vm.shutdown();
            Ok(serde_json::json!({ "state": "stopped" }))
        }
        Request::Snapshot { dir, stop } => snapshot(vm, &dir, stop),
        Request::Migrate(params) => return migrate(vm, &served.gate, &params, writer),
        Request::Commit {} => decide(CommitDecision::Commit),
        Request::Cancel { reason } => decide(CommitDecision::Cancel(
            reason.unwrap_or_else(|| "cancelled over the control socket".into()),
        )),
    };
    response(result)
}

/// Pauses the VM, writes its state and memory into `dir`, then resumes or stops it.
fn snapshot(vm: &VmController, dir: &Path, stop: bool) -> Result<serde_json::Value, String> {
    let started = std::time::Instant::now();
    let was_running = vm.run_control().requested() == Requested::Running;
    vm.pause().map_err(|e| e.to_string())?;
    let result = vm
        .save_state()
        .map_err(|e| error_chain(&e))
        .and_then(|state| snapshot::write(dir, &state, vm.memory()).map_err(|e| error_chain(&e)));
    let paused_ms = started.elapsed().as_secs_f64() * 1e3;
    // Whatever happened, the VM goes on as asked: a failed snapshot must not stop a guest.
    if stop && result.is_ok() {
        vm.shutdown();
    } else if was_running {
        vm.resume().map_err(|e| e.to_string())?;
    }
    let memory_bytes = result?;
    Ok(serde_json::json!({
        "dir": dir,
        "memory_bytes_written": memory_bytes,
        "paused_ms": paused_ms,
        "state": if stop { "stopped" } else { "running" },
    }))
}

/// An error and its sources, one sentence each.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Answers requests on one connection until the peer hangs up.
fn serve_connection(
    vm: &Served,
    stream: UnixStream,
    in_flight: &AtomicUsize,
) -> std::io::Result<()> {
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
        in_flight.fetch_add(1, Ordering::AcqRel);
        let result = answer(vm, &line, n, &mut writer);
        in_flight.fetch_sub(1, Ordering::AcqRel);
        result?;
        if n > MAX_REQUEST_BYTES {
            // The rest of an oversized line cannot be resynchronised; drop the connection.
            return Ok(());
        }
    }
}

/// Writes one `{"event": NAME, ...fields}` line; a client that went away must not stop the
/// migration, so a failed write is ignored.
fn event(writer: &mut UnixStream, name: &str, fields: &impl serde::Serialize) {
    let mut line = serde_json::json!({ "event": name });
    if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
        (line.as_object_mut(), serde_json::to_value(fields))
    {
        obj.extend(fields);
    }
    let _ = writer.write_all(format!("{line}\n").as_bytes());
}

/// Migrates the VM, streaming progress lines to `writer`; returns the final answer. With a
/// hold, a `ready_to_commit` event announces it and `gate` brings the decision.
fn migrate(
    vm: &Arc<VmController>,
    gate: &CommitGate,
    params: &migrator::MigrateParams,
    writer: &mut UnixStream,
) -> String {
    let source = crate::migration::Source(vm.clone());
    let mut events = writer.try_clone().ok();
    let mut report = |p: &migrator::Progress| event(writer, "progress", p);
    let mut hold = |ready: &migrator::source::ReadyToCommit| match params.hold_before_commit_s {
        None => CommitDecision::Commit,
        Some(seconds) => {
            if let Some(w) = events.as_mut() {
                event(w, "ready_to_commit", ready);
            }
            tracing::info!(seconds, "migration held before commit");
            gate.wait(Duration::from_secs(seconds))
        }
    };
    let stats = migrator::source::migrate_with_hold(&source, params, &mut report, &mut hold);
    match stats.status {
        migrator::Status::Completed => {
            tracing::info!(downtime_ms = stats.downtime_ms, total_ms = stats.total_time_ms, "migration completed");
            vm.stop(crate::vstate::run_control::StopReason::Migrated);
        }
        migrator::Status::Unknown => tracing::error!(
            "migration outcome unknown: the VM stays paused here; check the destination before resuming"
        ),
        _ => tracing::warn!(error = ?stats.error, status = ?stats.status, "migration did not complete"),
    }
    let value = serde_json::to_value(&stats).map_err(|e| e.to_string());
    match (stats.status, value) {
        (migrator::Status::Completed, Ok(v)) => response(Ok(v)),
        (_, Ok(v)) => {
            let mut v = v;
            v["ok"] = false.into();
            v.to_string()
        }
        (_, Err(e)) => response(Err(e)),
    }
}

/// Handles one request line and writes its answer.
fn answer(vm: &Served, line: &str, n: usize, writer: &mut UnixStream) -> std::io::Result<()> {
    let reply = if n > MAX_REQUEST_BYTES {
        response(Err(format!(
            "request longer than {MAX_REQUEST_BYTES} bytes"
        )))
    } else {
        match Request::parse(line.trim()) {
            Ok(req) => dispatch(vm, req, writer),
            Err(e) => response(Err(e.to_string())),
        }
    };
    writer.write_all(format!("{reply}\n").as_bytes())
}

/// Starts serving `vm` on a Unix socket at `path`, replacing a stale socket file.
pub fn start(path: &Path, vm: Arc<VmController>) -> Result<ApiServer, ServerError> {
    serve(path, Arc::new(Served::with_vm(vm)))
}

/// Starts serving an incoming migration at `path`: `status` answers `incoming` until
/// [`Served::attach`] gives it the VM.
pub fn start_incoming(path: &Path) -> Result<(ApiServer, Arc<Served>), ServerError> {
    let served = Arc::new(Served::default());
    served.set_incoming_phase("listening");
    Ok((serve(path, served.clone())?, served))
}

fn serve(path: &Path, vm: Arc<Served>) -> Result<ApiServer, ServerError> {
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = in_flight.clone();
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
                let counter = counter.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("api-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve_connection(&vm, stream, &counter) {
                                tracing::debug!("control connection ended: {e}");
                            }
                        });
                if let Err(e) = spawned {
                    tracing::warn!("cannot serve a control connection: {e}");
                }
            }
        })
        .map_err(ServerError::Thread)?;
    Ok(ApiServer {
        path: path.into(),
        in_flight,
    })
}
