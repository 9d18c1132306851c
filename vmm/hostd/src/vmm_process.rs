//! One `vmm` process per VM: starting it, finding it again after hostd restarts, talking to
//! its control socket, noticing its exit and stopping it.
//!
//! The process is not tied to hostd's life: it runs in its own process group (a Ctrl-C for
//! hostd does not reach it) and without a parent-death signal, so that a restarted hostd can
//! re-adopt it. Its console and its log go to FIFOs in the VM's directory rather than to pipes
//! hostd holds, and a restarted hostd reopens them and reads on. The `vmm` gets the FIFOs open
//! for reading and writing, so they always have a reader: while no hostd reads, its writes
//! fill the pipe buffer (1 MiB where the system allows) and then wait, instead of failing
//! (a `vmm` whose console fails loses its vCPU thread) or filling a disk.
//!
//! Exit is watched with a pidfd, which works for adopted processes (not hostd's children) as
//! well as for its own, and makes signals immune to pid reuse.
//!
//! Every `vmm` runs jailed by default (`vmm jail`: its own namespaces and minimal root, a
//! per-VM uid without capabilities, a cgroup; see the README's sandbox section). The process
//! hostd watches is then the jail's supervisor. When it has exited, hostd removes what a
//! `kill -9` of the supervisor would leave (the VM's cgroup, and any task still in it).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use vmm::api::protocol::Request;

use crate::console::ConsoleRing;
pub use crate::launch::Launch;
use crate::launch::{jail_id, next_jail_uid};

pub const CONSOLE_FIFO: &str = "console.fifo";
pub const LOG_FIFO: &str = "vmm-log.fifo";
/// In a directory of its own: a jailed `vmm` gets read-write access to the socket's directory,
/// and must not reach the VM's record or FIFOs.
pub const SOCKET_DIR: &str = "ctl";
pub const API_SOCKET: &str = "ctl/api.sock";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot set up the VM's console and log FIFOs or its socket directory")]
    Fifo(#[source] std::io::Error),
    #[error("cannot start {vmm}")]
    Spawn {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch process {pid}")]
    Pidfd {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the vmm process exited before its control socket answered; its log ends with: {log}")]
    DiedAtStart { log: String },
    #[error("the vmm control socket did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the vmm control socket failed")]
    Control(#[source] std::io::Error),
    #[error("the vmm refused the command: {0}")]
    Refused(String),
}

/// What hostd records about a running `vmm` to find it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, it names
    /// one process even after the pid is reused.
    pub start_ticks: u64,
}

/// A live `vmm` process.
#[derive(Debug)]
pub struct VmmProcess {
    pub id: ProcessId,
    pub socket: PathBuf,
    pidfd: AsyncFd<OwnedFd>,
    /// Names the VM's jail (cgroup, root), whether or not it was started jailed: removing a
    /// jail that does not exist does nothing.
    jail_id: String,
    /// How it ended, once reaped; unknown for adopted processes (not hostd's children).
    end: OnceLock<End>,
}

/// How a `vmm` process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    Killed(i32),
}

impl End {
    /// A seccomp violation: the VM's `vmm` made a forbidden system call (a guest attacking
    /// the VMM, or a VMM bug) and was stopped.
    pub fn is_seccomp_violation(self) -> bool {
        self == End::Exited(vmm::sandbox::seccomp::EXIT_SECCOMP_VIOLATION)
    }

    /// Whether the VM crashed rather than ended: a seccomp violation, a VMM error or guest
    /// crash exit code, or a signal.
    pub fn is_crash(self) -> bool {
        match self {
            End::Exited(code) => code != 0,
            End::Killed(_) => true,
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Exited(code) if self.is_seccomp_violation() => {
                write!(f, "stopped by a seccomp violation (exit code {code})")
            }
            End::Exited(code) => write!(f, "exit code {code}"),
            End::Killed(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// The parent of `pid`, or `None` if there is no such process.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// The start time of `pid`, or `None` if there is no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Registers a pidfd with the runtime so that its exit can be awaited.
fn watch(pidfd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd` and stays open, as the same
    // descriptor, until the `AsyncFd` drops it.
    unsafe { AsyncFd::register(pidfd) }.map_err(|e| e.into_parts().1)
}

fn make_fifo(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The pipe buffer asked for the `vmm`'s output: at an idle guest's few hundred bytes a
/// second, an hour of output while no hostd reads.
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Opens a FIFO for the `vmm` to write to, read-write so that it never lacks a reader, with a
/// larger buffer where the system allows it.
fn open_for_vmm(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    // SAFETY: F_SETPIPE_SZ reads only its integer argument; the descriptor is open. A refusal
    // (above the system's pipe-max-size) leaves the default buffer, which also works.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    Ok(file)
}

/// Opens a FIFO's read end without waiting for a writer.
fn open_reader(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)
}

/// Reads a FIFO into `ring` until every writer has closed it (the vmm exited). Start it only
/// once the vmm's end is open: a FIFO that never had a writer reads as ended.
fn pump(mut receiver: tokio::net::unix::pipe::Receiver, ring: Arc<ConsoleRing>) {
    tokio::spawn(async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            match receiver.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => ring.push(&buf[..n]),
            }
        }
    });
}

impl VmmProcess {
    /// Starts `vmm` with `args` (`run ...`; the control socket is added here) as `launch`
    /// says, its output going into `console` and `log`. Returns once the control socket
    /// answers.
    pub async fn spawn(
        launch: &Launch,
        args: &[String],
        dir: &Path,
        console: Arc<ConsoleRing>,
        log: Arc<ConsoleRing>,
        start_timeout: Duration,
    ) -> Result<Self, ProcessError> {
        let console_fifo = dir.join(CONSOLE_FIFO);
        let log_fifo = dir.join(LOG_FIFO);
        let socket = dir.join(API_SOCKET);
        make_fifo(&console_fifo).map_err(ProcessError::Fifo)?;
        make_fifo(&log_fifo).map_err(ProcessError::Fifo)?;
        let stdout = open_for_vmm(&console_fifo).map_err(ProcessError::Fifo)?;
        let stderr = open_for_vmm(&log_fifo).map_err(ProcessError::Fifo)?;
        let console_reader = open_reader(&console_fifo).map_err(ProcessError::Fifo)?;
        let log_reader = open_reader(&log_fifo).map_err(ProcessError::Fifo)?;
        pump(console_reader, console);
        pump(log_reader, log.clone());
        std::fs::create_dir_all(dir.join(SOCKET_DIR)).map_err(ProcessError::Fifo)?;
        let jail_id = jail_id(dir);
        let args = launch.args(args, &jail_id, next_jail_uid);
        let child = Command::new(&launch.vmm)
            .args(&args)
            .arg("--api-sock")
            .arg(&socket)
            .env("VMM_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                vmm: launch.vmm.clone(),
                source,
            })?;
        let pid = child.id();
        // `child` is dropped without waiting: the exit watcher reaps it.
        drop(child);
        let pidfd = pidfd_open(pid).map_err(|source| ProcessError::Pidfd { pid, source })?;
        let process = Self {
            id: ProcessId {
                pid,
                start_ticks: start_ticks(pid).unwrap_or(0),
            },
            socket,
            pidfd: watch(pidfd).map_err(|source| ProcessError::Pidfd { pid, source })?,
            jail_id,
            end: OnceLock::new(),
        };
        let ready = tokio::time::timeout(start_timeout, async {
            loop {
                if process
                    .call(&Request::Status {}, Duration::from_secs(5))
                    .await
                    .is_ok()
                {
                    return true;
                }
                if process.has_exited() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        match ready {
            Ok(true) => Ok(process),
            Ok(false) => {
                process.reap();
                process.remove_jail().await;
                // Let the log pump take in the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(ProcessError::DiedAtStart {
                    log: log.tail_text(2000),
                })
            }
            Err(_) => {
                process.kill_and_wait(Duration::from_secs(5)).await;
                Err(ProcessError::NoAnswer(start_timeout))
            }
        }
    }

    /// Finds the `vmm` recorded as `id` again after a hostd restart, and reopens its output.
    /// `None` if that process no longer exists.
    pub fn adopt(
        id: ProcessId,
        dir: &Path,
        console: Arc<ConsoleRing>,
        log: Arc<ConsoleRing>,
    ) -> Result<Option<Self>, ProcessError> {
        let Ok(pidfd) = pidfd_open(id.pid) else {
            return Ok(None);
        };
        // Checked after opening the pidfd: if the pid is reused later, the pidfd still refers
        // to the process whose start time matched.
        if start_ticks(id.pid) != Some(id.start_ticks) {
            return Ok(None);
        }
        let process = Self {
            id,
            socket: dir.join(API_SOCKET),
            pidfd: watch(pidfd).map_err(|source| ProcessError::Pidfd {
                pid: id.pid,
                source,
            })?,
            jail_id: jail_id(dir),
            end: OnceLock::new(),
        };
        if process.has_exited() {
            process.reap();
            vmm::sandbox::jail::cleanup(&process.jail_id);
            return Ok(None);
        }
        pump(
            open_reader(&dir.join(CONSOLE_FIFO)).map_err(ProcessError::Fifo)?,
            console,
        );
        pump(
            open_reader(&dir.join(LOG_FIFO)).map_err(ProcessError::Fifo)?,
            log,
        );
        Ok(Some(process))
    }

    /// Sends one request on the control socket and returns the answer's fields.
    pub async fn call(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<serde_json::Value, ProcessError> {
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket).await?;
            let (read, mut write) = stream.into_split();
            let mut line = serde_json::to_string(request)?;
            line.push('\n');
            write.write_all(line.as_bytes()).await?;
            let mut reader = BufReader::new(read.take(1 << 20));
            loop {
                let mut answer = String::new();
                if reader.read_line(&mut answer).await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the vmm closed the connection without answering",
                    ));
                }
                let value: serde_json::Value = serde_json::from_str(&answer)?;
                // Progress events of streaming commands are not needed here.
                if value.get("event").is_none() {
                    return Ok(value);
                }
            }
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ProcessError::NoAnswer(timeout))?
            .map_err(ProcessError::Control)?;
        if answer["ok"] == true {
            Ok(answer)
        } else {
            Err(ProcessError::Refused(
                answer["error"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string(),
            ))
        }
    }

    /// Sends a streaming request (`migrate`) and returns its answer lines: `{"event": ...}`
    /// lines while it runs, then the answer.
    pub async fn stream(
        &self,
        request: &Request,
    ) -> Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>, ProcessError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(ProcessError::Control)?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request)
            .map_err(|e| ProcessError::Control(std::io::Error::other(e)))?;
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .map_err(ProcessError::Control)?;
        Ok(BufReader::new(read).lines())
    }

    /// Whether the process has exited (a pidfd becomes readable at exit).
    pub fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.pidfd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `poll` is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready > 0
    }

    /// Waits until the process exits, then reaps it if it is hostd's child and removes what
    /// is left of its jail.
    pub async fn exited(&self) {
        loop {
            match self.pidfd.readable().await {
                Ok(mut guard) => {
                    if self.has_exited() {
                        break;
                    }
                    guard.clear_ready();
                }
                // The pidfd cannot fail on a live process; fall back to polling.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.reap();
        self.remove_jail().await;
    }

    /// How the process ended, if it has and hostd could see it (its own child).
    pub fn end(&self) -> Option<End> {
        self.end.get().copied()
    }

    /// Removes the VM's cgroup, killing what is still in it: after a `kill -9` of the jail's
    /// supervisor its VM may linger. Blocking (it waits for the tasks to die), so off the
    /// runtime's threads.
    async fn remove_jail(&self) {
        let id = self.jail_id.clone();
        let removed = tokio::task::spawn_blocking(move || vmm::sandbox::jail::cleanup(&id)).await;
        if !matches!(removed, Ok(true)) {
            tracing::warn!(jail = %self.jail_id, "cannot remove all of the VM's jail");
        }
    }

    /// Collects the exit status of hostd's own child so it does not stay a zombie. Adopted
    /// processes are reaped by their new parent; for them this does nothing.
    fn reap(&self) {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`, a valid i32; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(self.id.pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if rc == self.id.pid as libc::pid_t {
            let end = if libc::WIFEXITED(status) {
                End::Exited(libc::WEXITSTATUS(status))
            } else {
                End::Killed(libc::WTERMSIG(status))
            };
            let _ = self.end.set(end);
        }
    }

    fn kill(&self) {
        // SAFETY: pidfd_send_signal reads only its integer arguments (a null siginfo means a
        // plain kill); the pidfd names exactly our process even if its pid was reused.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Kills the process and waits up to `timeout` for it to be gone.
    pub async fn kill_and_wait(&self, timeout: Duration) {
        self.kill();
        let _ = tokio::time::timeout(timeout, self.exited()).await;
    }

    /// Asks the VM to shut down; kills it if it has not exited within `timeout`.
    pub async fn stop(&self, timeout: Duration) {
        if !self.has_exited() {
            let asked = self.call(&Request::Shutdown {}, timeout).await;
            if asked.is_ok() && tokio::time::timeout(timeout, self.exited()).await.is_ok() {
                return;
            }
            tracing::warn!(
                pid = self.id.pid,
                "vmm did not shut down when asked; killing it"
            );
        }
        self.kill_and_wait(timeout).await;
    }
}

/// Removes what `spawn` made in a VM directory: FIFOs and the socket.
pub fn remove_files(dir: &Path) {
    for name in [CONSOLE_FIFO, LOG_FIFO, API_SOCKET] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir.join(SOCKET_DIR));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seccomp_kill_is_a_crash_and_a_clean_exit_is_not() {
        let seccomp = End::Exited(vmm::sandbox::seccomp::EXIT_SECCOMP_VIOLATION);
        assert!(seccomp.is_seccomp_violation() && seccomp.is_crash());
        assert!(seccomp.to_string().contains("seccomp violation"));
        assert!(!End::Exited(0).is_crash());
        assert!(End::Exited(vmm::EXIT_VMM_ERROR).is_crash());
        assert!(End::Killed(libc::SIGKILL).is_crash());
        assert!(!End::Killed(libc::SIGKILL).is_seccomp_violation());
    }
}
