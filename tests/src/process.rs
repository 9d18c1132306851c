//! Child processes (VMMs) under a time bound. Their stdout (the guest console) and stderr are
//! read on threads as the bytes arrive, so arrival times are exact and a chatty child never
//! blocks on a full pipe; every wait has a deadline; a dropped child is killed and reaped.

use std::{
    env,
    io::{self, ErrorKind, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} did not print {what} within {timeout:?}{stderr}")]
    Timeout {
        name: String,
        what: String,
        timeout: Duration,
        stderr: StderrTail,
    },
    #[error("{name} closed its console ({status}) before printing {what}{stderr}")]
    Exited {
        name: String,
        what: String,
        status: String,
        stderr: StderrTail,
    },
    #[error("cannot check whether {name} is still running")]
    Wait {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// The last lines a child wrote to stderr, shown after an error message (empty if none).
#[derive(Debug)]
pub struct StderrTail(String);

impl std::fmt::Display for StderrTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.is_empty() {
            true => Ok(()),
            false => write!(f, "; its stderr ends with:\n{}", self.0),
        }
    }
}

/// How much of each stream is kept; older bytes are dropped first.
const KEEP_BYTES: usize = 1 << 20;
/// How many stderr lines an error shows.
const STDERR_LINES: usize = 20;

/// A running child process, killed and reaped when dropped.
pub struct BoundedChild {
    name: String,
    child: Child,
    spawned_at: Instant,
    console: Arc<Stream>,
    stderr: Arc<Stream>,
}

impl BoundedChild {
    /// Starts `command` with stdin closed and stdout and stderr captured. `name` appears in
    /// errors. The spawn time is taken just before the fork, so it includes all of the child's
    /// start-up.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<Self, ProcessError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned_at = Instant::now();
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            command: command_line(command),
            source,
        })?;
        let console = Stream::pump(child.stdout.take());
        let stderr = Stream::pump(child.stderr.take());
        Ok(BoundedChild {
            name: name.into(),
            child,
            spawned_at,
            console,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The time from spawning to the first byte on the console.
    pub fn first_byte(&mut self, timeout: Duration) -> Result<Duration, ProcessError> {
        let first = self.wait_console("anything", timeout, |state| state.first_at)?;
        Ok(first - self.spawned_at)
    }

    /// Waits until the console has shown `text`.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<(), ProcessError> {
        let needle = text.as_bytes();
        self.wait_console(&format!("{text:?}"), timeout, |state| {
            let shown = needle.is_empty() || state.bytes.windows(needle.len()).any(|w| w == needle);
            shown.then_some(())
        })
    }

    /// The console output so far (its last `KEEP_BYTES`), lossily decoded.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().bytes).into_owned()
    }

    /// The last lines the child wrote to stderr.
    pub fn stderr(&self) -> String {
        self.stderr_tail().0
    }

    /// Whether the child is still running (it is reaped if it is not).
    pub fn is_running(&mut self) -> Result<bool, ProcessError> {
        let status = self.child.try_wait().map_err(|source| ProcessError::Wait {
            name: self.name.clone(),
            source,
        })?;
        Ok(status.is_none())
    }

    /// Kills the child and reaps it.
    pub fn kill(mut self) -> io::Result<ExitStatus> {
        self.child.kill()?;
        self.child.wait()
    }

    fn wait_console<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&StreamState) -> Option<T>,
    ) -> Result<T, ProcessError> {
        let state = self.console.lock();
        let (state, _) = self
            .console
            .changed
            .wait_timeout_while(state, timeout, |state| {
                done(state).is_none() && !state.closed
            })
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = done(&state) {
            return Ok(found);
        }
        let closed = state.closed;
        drop(state);
        let (name, what, stderr) = (self.name.clone(), what.to_owned(), self.stderr_tail());
        if !closed {
            return Err(ProcessError::Timeout {
                name,
                what,
                timeout,
                stderr,
            });
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "still running".to_owned(),
            Err(error) => format!("status unknown: {error}"),
        };
        Err(ProcessError::Exited {
            name,
            what,
            status,
            stderr,
        })
    }

    fn stderr_tail(&self) -> StderrTail {
        let text = String::from_utf8_lossy(&self.stderr.lock().bytes).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        StderrTail(lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n"))
    }
}

impl Drop for BoundedChild {
    fn drop(&mut self) {
        // Best effort: the child may already be gone, and a destructor cannot report anything.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One output stream of a child, filled by a reader thread.
struct Stream {
    state: Mutex<StreamState>,
    changed: Condvar,
}

#[derive(Default)]
struct StreamState {
    /// When the first byte was read.
    first_at: Option<Instant>,
    bytes: Vec<u8>,
    /// End of file: the child exited or closed the stream.
    closed: bool,
}

impl Stream {
    /// Starts a thread that reads `from` until it closes. The thread is not joined: it ends by
    /// itself when the child dies and the pipe closes.
    fn pump(from: Option<impl Read + Send + 'static>) -> Arc<Self> {
        let stream = Arc::new(Stream {
            state: Mutex::default(),
            changed: Condvar::new(),
        });
        let Some(mut from) = from else {
            stream.lock().closed = true;
            return stream;
        };
        let writer = Arc::clone(&stream);
        thread::spawn(move || {
            let mut buffer = [0; 4096];
            loop {
                // A read returns as soon as any byte is available, so `first_at` is when the
                // first byte arrived, whatever the buffer size.
                let read = match from.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => read,
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let now = Instant::now();
                let mut state = writer.lock();
                state.first_at.get_or_insert(now);
                state.bytes.extend_from_slice(&buffer[..read]);
                let excess = state.bytes.len().saturating_sub(KEEP_BYTES);
                state.bytes.drain(..excess);
                drop(state);
                writer.changed.notify_all();
            }
            writer.lock().closed = true;
            writer.changed.notify_all();
        });
        stream
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // The state is plain data that stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `command` as a shell would take it: its explicitly set environment, program and arguments,
/// quoted where needed.
pub fn command_line(command: &Command) -> String {
    let envs = command.get_envs().filter_map(|(key, value)| {
        Some(format!(
            "{}={}",
            key.to_string_lossy(),
            shell_quote(&value?.to_string_lossy())
        ))
    });
    let words = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| shell_quote(&word.to_string_lossy()));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_=.,/:@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Finds `program` as a shell would: a path if it has a slash, else on `PATH`.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        let mut command = Command::new("/bin/vmm");
        command.args(["run", "--cmdline", "workload=idle report-ms=1000", "it's"]);
        command.env("VMM_LOG", "warn");
        assert_eq!(
            command_line(&command),
            r"VMM_LOG=warn /bin/vmm run --cmdline 'workload=idle report-ms=1000' 'it'\''s'"
        );
    }

    #[test]
    fn times_the_first_byte_and_waits_for_text() {
        let mut shell = Command::new("sh");
        shell.args(["-c", "printf 'hello '; sleep 0.1; echo world; sleep 30"]);
        let mut child = BoundedChild::spawn("sh", &mut shell).expect("sh runs");
        let first = child
            .first_byte(Duration::from_secs(10))
            .expect("a first byte");
        assert!(first < Duration::from_secs(10));
        child
            .wait_for("world", Duration::from_secs(10))
            .expect("the second word");
        assert!(child.is_running().expect("a status"));
        assert!(child.console().starts_with("hello world"));
    }

    #[test]
    fn reports_an_early_exit_with_its_stderr() {
        let mut shell = Command::new("sh");
        shell.args(["-c", "echo broken >&2; exit 3"]);
        let mut child = BoundedChild::spawn("sh", &mut shell).expect("sh runs");
        // The console closes at exit; stderr may still be in flight, so wait for its reader.
        thread::sleep(Duration::from_millis(200));
        let error = child
            .first_byte(Duration::from_secs(10))
            .expect_err("no output");
        let message = error.to_string();
        assert!(matches!(error, ProcessError::Exited { .. }), "{message}");
        assert!(message.contains("broken"), "{message}");
    }

    #[test]
    fn times_out() {
        let mut child =
            BoundedChild::spawn("sleep", Command::new("sleep").arg("30")).expect("sleep runs");
        let error = child
            .first_byte(Duration::from_millis(50))
            .expect_err("no output");
        assert!(matches!(error, ProcessError::Timeout { .. }), "{error}");
    }
}
