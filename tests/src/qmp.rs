//! A small client for QEMU's machine protocol (QMP) over a Unix socket, enough to drive a
//! live migration: the greeting, `qmp_capabilities`, commands and their replies, and the
//! fields of `query-migrate`.
//!
//! QMP is one JSON object per line. After the greeting the server answers each command with
//! `{"return": ...}` or `{"error": {"class", "desc"}}`, and may interleave asynchronous
//! `{"event": ...}` lines, which this client skips.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {}", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("QMP socket I/O failed")]
    Io(#[from] io::Error),
    #[error("QEMU closed the QMP socket")]
    Closed,
    #[error("QMP sent a line that is not JSON: {line:?}")]
    NotJson {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("QMP sent a line that is neither a greeting, a reply nor an event: {0:?}")]
    Unexpected(String),
    #[error("QMP greeted with {0:?} instead of its banner")]
    Greeting(String),
    #[error("QEMU refused `{command}`: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
    #[error("`query-migrate` returned an unexpected shape")]
    MigrateInfo(#[source] serde_json::Error),
}

/// One line from the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// `{"QMP": {...}}`, the first line.
    Greeting(Value),
    /// A command succeeded.
    Return(Value),
    /// A command failed.
    Error { class: String, desc: String },
    /// An asynchronous event, by name.
    Event(String),
}

/// Parses one line of QMP output.
pub fn parse_line(line: &str) -> Result<Message, QmpError> {
    let value: Value = serde_json::from_str(line).map_err(|source| QmpError::NotJson {
        line: line.to_owned(),
        source,
    })?;
    let unexpected = || QmpError::Unexpected(line.to_owned());
    let object = value.as_object().ok_or_else(unexpected)?;
    if let Some(greeting) = object.get("QMP") {
        return Ok(Message::Greeting(greeting.clone()));
    }
    if let Some(value) = object.get("return") {
        return Ok(Message::Return(value.clone()));
    }
    if let Some(error) = object.get("error") {
        let text = |key| error.get(key).and_then(Value::as_str).unwrap_or_default();
        return Ok(Message::Error {
            class: text("class").to_owned(),
            desc: text("desc").to_owned(),
        });
    }
    match object.get("event").and_then(Value::as_str) {
        Some(event) => Ok(Message::Event(event.to_owned())),
        None => Err(unexpected()),
    }
}

/// The line that runs `command`, with `arguments` unless they are null.
pub fn command_line(command: &str, arguments: &Value) -> String {
    let message = match arguments {
        Value::Null => json!({ "execute": command }),
        arguments => json!({ "execute": command, "arguments": arguments }),
    };
    message.to_string()
}

/// A connected QMP session, past the capabilities negotiation.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// How long to wait for any one reply. QEMU answers in milliseconds on a quiet host, but a
/// TLS destination's `migrate-incoming` once took over 10 s on a host at load average 20.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

impl Qmp {
    /// Connects to the socket QEMU serves with `-qmp unix:PATH,server=on,wait=off`, retrying
    /// until `timeout` because QEMU creates it only some time after it starts.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        match qmp.read()? {
            Message::Greeting(_) => {}
            other => return Err(QmpError::Greeting(format!("{other:?}"))),
        }
        qmp.execute("qmp_capabilities", &Value::Null)?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: &Value) -> Result<Value, QmpError> {
        let mut line = command_line(command, arguments);
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        loop {
            match self.read()? {
                Message::Return(value) => return Ok(value),
                Message::Error { class, desc } => {
                    return Err(QmpError::Refused {
                        command: command.to_owned(),
                        class,
                        desc,
                    })
                }
                // Events (STOP, RESUME, MIGRATION...) arrive whenever they happen.
                Message::Event(_) => {}
                Message::Greeting(_) => {
                    return Err(QmpError::Unexpected("a second greeting".into()))
                }
            }
        }
    }

    /// `query-migrate`.
    pub fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        let value = self.execute("query-migrate", &Value::Null)?;
        serde_json::from_value(value).map_err(QmpError::MigrateInfo)
    }

    fn read(&mut self) -> Result<Message, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        parse_line(line.trim_end())
    }
}

/// The arguments of `migrate-set-capabilities` that turn each named capability on or off.
pub fn capabilities(states: &[(&str, bool)]) -> Value {
    let list: Vec<Value> = states
        .iter()
        .map(|(capability, state)| json!({ "capability": capability, "state": state }))
        .collect();
    json!({ "capabilities": list })
}

/// What `query-migrate` says, in QEMU's units (milliseconds, bytes, Mbit/s). Every field is
/// optional: QEMU includes each one only in some states (none at all before a migration).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    pub status: Option<String>,
    pub total_time: Option<u64>,
    pub setup_time: Option<u64>,
    pub downtime: Option<u64>,
    pub expected_downtime: Option<u64>,
    pub ram: Option<RamInfo>,
    pub cpu_throttle_percentage: Option<u64>,
    pub error_desc: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct RamInfo {
    #[serde(default)]
    pub transferred: u64,
    #[serde(default)]
    pub remaining: u64,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub duplicate: u64,
    #[serde(default)]
    pub normal: u64,
    #[serde(default)]
    pub dirty_sync_count: u64,
    #[serde(default)]
    pub dirty_pages_rate: u64,
    #[serde(default)]
    pub mbps: f64,
}

impl MigrationInfo {
    /// Completed, failed or cancelled: nothing will change any more.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.as_deref(),
            Some("completed" | "failed" | "cancelled")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_line() {
        let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}"#;
        assert!(matches!(parse_line(greeting), Ok(Message::Greeting(_))));
        assert_eq!(
            parse_line(r#"{"return": {}}"#).ok(),
            Some(Message::Return(json!({})))
        );
        assert_eq!(
            parse_line(
                r#"{"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}"#
            )
            .ok(),
            Some(Message::Error {
                class: "GenericError".into(),
                desc: "Parameter 'x' is unexpected".into()
            })
        );
        let event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#;
        assert_eq!(parse_line(event).ok(), Some(Message::Event("STOP".into())));
    }

    #[test]
    fn rejects_what_is_not_qmp() {
        assert!(matches!(
            parse_line("pvh-dirty: up"),
            Err(QmpError::NotJson { .. })
        ));
        assert!(matches!(parse_line("[1, 2]"), Err(QmpError::Unexpected(_))));
        assert!(matches!(
            parse_line(r#"{"id": 3}"#),
            Err(QmpError::Unexpected(_))
        ));
    }

    #[test]
    fn builds_command_lines() {
        assert_eq!(
            command_line("qmp_capabilities", &Value::Null),
            r#"{"execute":"qmp_capabilities"}"#
        );
        let line = command_line(
            "migrate-set-capabilities",
            &capabilities(&[("multifd", true)]),
        );
        let parsed: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(parsed["execute"], "migrate-set-capabilities");
        assert_eq!(
            parsed["arguments"]["capabilities"],
            json!([{ "capability": "multifd", "state": true }])
        );
    }

    #[test]
    fn reads_query_migrate_in_every_state() {
        // Before any migration QEMU returns an empty object.
        let idle: MigrationInfo = serde_json::from_value(json!({})).expect("empty");
        assert_eq!(idle, MigrationInfo::default());
        assert!(!idle.is_finished());

        // QEMU 7.2, a completed migration (trimmed).
        let completed = json!({
            "blocked": false, "status": "completed", "setup-time": 3, "downtime": 41,
            "total-time": 1520, "expected-downtime": 300,
            "ram": {"total": 1074003968u64, "postcopy-requests": 0, "dirty-sync-count": 3,
                    "multifd-bytes": 1073901000u64, "pages-per-second": 262144,
                    "downtime-bytes": 0, "page-size": 4096, "remaining": 0,
                    "postcopy-bytes": 0, "mbps": 5689.5, "transferred": 1075000000u64,
                    "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 1000,
                    "duplicate": 250, "dirty-pages-rate": 12, "skipped": 0,
                    "normal-bytes": 1072000000u64, "normal": 261719}
        });
        let info: MigrationInfo = serde_json::from_value(completed).expect("completed");
        assert!(info.is_finished());
        assert_eq!(info.status.as_deref(), Some("completed"));
        assert_eq!(
            (info.total_time, info.downtime, info.setup_time),
            (Some(1520), Some(41), Some(3))
        );
        let ram = info.ram.expect("ram");
        assert_eq!((ram.transferred, ram.dirty_sync_count), (1_075_000_000, 3));
        assert!((ram.mbps - 5689.5).abs() < 1e-9);

        let failed: MigrationInfo =
            serde_json::from_value(json!({"status": "failed", "error-desc": "Unable to write"}))
                .expect("failed");
        assert!(failed.is_finished());
        assert_eq!(failed.error_desc.as_deref(), Some("Unable to write"));
        let active: MigrationInfo =
            serde_json::from_value(json!({"status": "active", "ram": {"mbps": 1000}}))
                .expect("active");
        assert!(!active.is_finished());
    }
}
