//! What a migration request may tune.
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::MAX_LANES;

/// What to do when pre-copy runs out of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Give up; the source keeps running.
    #[default]
    Cancel,
    /// Switch over now, whatever the downtime.
    Force,
}

/// Compression of page data on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Zstd,
    Lz4,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateParams {
    /// `tcp://HOST:PORT` of the destination.
    pub url: String,
    /// This host's identity file (see [`crate::identity`]), read by the VMM that migrates.
    pub identity: PathBuf,
    /// The destination's public key, hex: the only host this migration will talk to.
    pub peer: String,
    /// Downtime target: a ceiling, not a goal (see [`crate::convergence`]).
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// Most pre-copy rounds after the first full pass.
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    /// Whole-migration time limit.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Throttle vCPUs while the dirty rate outruns the link.
    #[serde(default)]
    pub auto_converge: bool,
    /// TLS connections to use: memory is spread over all of them; state and control go on
    /// the first.
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// Only `none` is implemented: guest RAM is mostly incompressible or zero (and zero pages
    /// are skipped already).
    #[serde(default)]
    pub compress: Compression,
    /// Hold the switchover for up to this many seconds once the destination is ready, until
    /// the orchestrator says commit or cancel (the VM is paused meanwhile); no answer cancels.
    /// `None` commits at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_before_commit_s: Option<u64>,
}

/// The longest hold before `Commit`: well inside the destination's 60 s wait for its next
/// message, so a held migration is cancelled by the source, never timed out by the peer.
pub const MAX_HOLD_S: u64 = 30;

fn default_connections() -> u32 {
    1
}

fn default_downtime_ms() -> u64 {
    300
}
fn default_max_rounds() -> u32 {
    30
}
fn default_timeout_s() -> u64 {
    600
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("destination {0:?} is not tcp://HOST:PORT")]
    BadUrl(String),
    #[error("the downtime target must be between 1 ms and 60 s")]
    BadDowntime,
    #[error("the timeout must be at least 1 s")]
    BadTimeout,
    #[error("{0} connections requested; use 1 to {max}", max = MAX_LANES)]
    Connections(u32),
    #[error("{0:?} compression is not implemented; use none")]
    Compression(Compression),
    #[error("the hold before commit must be between 1 and {MAX_HOLD_S} s")]
    BadHold,
}

impl MigrateParams {
    pub fn new(
        url: impl Into<String>,
        identity: impl Into<PathBuf>,
        peer: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            identity: identity.into(),
            peer: peer.into(),
            downtime_ms: default_downtime_ms(),
            max_rounds: default_max_rounds(),
            timeout_s: default_timeout_s(),
            on_timeout: OnTimeout::Cancel,
            auto_converge: false,
            connections: 1,
            compress: Compression::None,
            hold_before_commit_s: None,
        }
    }

    /// The `HOST:PORT` part of the URL, checked.
    pub fn address(&self) -> Result<&str, ParamsError> {
        let bad = || ParamsError::BadUrl(self.url.clone());
        let addr = self.url.strip_prefix("tcp://").ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        Ok(addr)
    }

    pub fn validate(&self) -> Result<(), ParamsError> {
        self.address()?;
        if self.downtime_ms == 0 || self.downtime_ms > 60_000 {
            return Err(ParamsError::BadDowntime);
        }
        if self.timeout_s == 0 {
            return Err(ParamsError::BadTimeout);
        }
        if self.connections == 0 || self.connections > u32::from(MAX_LANES) {
            return Err(ParamsError::Connections(self.connections));
        }
        if self.compress != Compression::None {
            return Err(ParamsError::Compression(self.compress));
        }
        if self
            .hold_before_commit_s
            .is_some_and(|s| s == 0 || s > MAX_HOLD_S)
        {
            return Err(ParamsError::BadHold);
        }
        Ok(())
    }

    pub fn downtime(&self) -> Duration {
        Duration::from_millis(self.downtime_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            MigrateParams::new("tcp://10.0.0.2:4444", "id", "k").address(),
            Ok("10.0.0.2:4444")
        );
        assert_eq!(
            MigrateParams::new("tcp://[::1]:4444", "id", "k").address(),
            Ok("[::1]:4444")
        );
        for bad in [
            "10.0.0.2:4444",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "udp://h:1",
        ] {
            assert!(
                MigrateParams::new(bad, "id", "k").validate().is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn unimplemented_options_are_refused_by_name() {
        let mut p = MigrateParams::new("tcp://h:1", "id", "k");
        p.connections = 0;
        assert_eq!(p.validate(), Err(ParamsError::Connections(0)));
        p.connections = 17;
        assert_eq!(p.validate(), Err(ParamsError::Connections(17)));
        p.connections = 1;
        for bad in [0, MAX_HOLD_S + 1] {
            p.hold_before_commit_s = Some(bad);
            assert_eq!(p.validate(), Err(ParamsError::BadHold));
        }
        p.hold_before_commit_s = Some(MAX_HOLD_S);
        assert_eq!(p.validate(), Ok(()));
        p.compress = Compression::Zstd;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not implemented"));
    }

    #[test]
    fn defaults_follow_qemu() {
        let p: MigrateParams =
            serde_json::from_str(r#"{"url":"tcp://h:1","identity":"/id","peer":"00"}"#).unwrap();
        assert_eq!(p.downtime_ms, 300);
        assert_eq!(p.on_timeout, OnTimeout::Cancel);
        assert!(serde_json::from_str::<MigrateParams>(
            r#"{"url":"tcp://h:1","identity":"/id","peer":"00","x":1}"#
        )
        .is_err());
    }
}
