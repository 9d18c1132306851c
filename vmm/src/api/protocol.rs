//! Requests and responses on the control socket.
//!
//! A request is a JSON object with a `cmd` field, e.g. `{"cmd":"pause"}`. A response is
//! `{"ok":true, ...}` with command-specific fields, or `{"ok":false,"error":"..."}`. To add a
//! command, add a variant here and a match arm in `server::dispatch`.
use serde::{Deserialize, Serialize};

/// Longest request line accepted; anything longer is a protocol error, not a memory hog.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Struct variants, so `deny_unknown_fields` rejects stray arguments.
    Pause {},
    Resume {},
    Status {},
    Shutdown {},
    /// Live-migrate to another `vmm --incoming`. The answer is a stream: one
    /// `{"event":"progress",...}` line per pre-copy round, then the final statistics.
    Migrate(migrator::MigrateParams),
    /// Let a migration held before commit (`hold_before_commit_s`) switch over.
    Commit {},
    /// Call a migration held before commit off: the VM resumes here, unchanged.
    Cancel {
        #[serde(default)]
        reason: Option<String>,
    },
    /// Pause, write state and memory into `dir`, then resume (or stop if `stop`).
    Snapshot {
        dir: std::path::PathBuf,
        #[serde(default)]
        stop: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("request is not valid JSON or names an unknown command: {0}")]
    Json(#[from] serde_json::Error),
}

impl Request {
    pub fn parse(line: &str) -> Result<Self, ParseError> {
        Ok(serde_json::from_str(line)?)
    }
}

/// Builds the one-line JSON response for a result.
pub fn response(result: Result<serde_json::Value, String>) -> String {
    let value = match result {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("ok".into(), true.into());
            serde_json::Value::Object(fields)
        }
        Ok(other) => serde_json::json!({ "ok": true, "result": other }),
        Err(error) => serde_json::json!({ "ok": false, "error": error }),
    };
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_rejects_junk() {
        assert_eq!(
            Request::parse(r#"{"cmd":"pause"}"#).unwrap(),
            Request::Pause {}
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status {}
        );
        for bad in [
            "",
            "{",
            "null",
            r#"{"cmd":"explode"}"#,
            r#"{"cmd":"pause","x":1}"#,
            r#"{"cmd":"commit","now":true}"#,
            "[1]",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn requests_round_trip_through_json() {
        for req in [
            Request::Resume {},
            Request::Commit {},
            Request::Cancel {
                reason: Some("lease".into()),
            },
            Request::Snapshot {
                dir: "/tmp/s".into(),
                stop: true,
            },
        ] {
            let line = serde_json::to_string(&req).unwrap();
            assert_eq!(Request::parse(&line).unwrap(), req);
        }
        let defaulted = Request::parse(r#"{"cmd":"snapshot","dir":"/x"}"#).unwrap();
        assert_eq!(
            defaulted,
            Request::Snapshot {
                dir: "/x".into(),
                stop: false
            }
        );
    }

    #[test]
    fn responses_carry_ok() {
        let ok: serde_json::Value =
            serde_json::from_str(&response(Ok(serde_json::json!({"state":"paused"})))).unwrap();
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["state"], "paused");
        let err: serde_json::Value = serde_json::from_str(&response(Err("nope".into()))).unwrap();
        assert_eq!(err["ok"], false);
        assert_eq!(err["error"], "nope");
    }
}
