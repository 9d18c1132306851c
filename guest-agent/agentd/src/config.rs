//! The daemon's configuration file (JSON): who it is, where it listens, its peers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use guest_agent::timeline::Params;
use guest_agent::{AgentId, Policy};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This agent's number.
    pub id: u16,
    /// Where it accepts peers and clients.
    pub listen: SocketAddr,
    /// Where its durable state lives.
    pub data_dir: PathBuf,
    /// Every other agent, by number.
    pub peers: BTreeMap<u16, SocketAddr>,
    /// The timeline data set this deployment serves (seeded on first start).
    #[serde(default)]
    pub timeline: Option<Params>,
    #[serde(default = "default_policy")]
    pub policy: Policy,
    #[serde(default = "default_rto")]
    pub rto_ms: u64,
    /// The write-ahead log is compacted into a new snapshot once it passes this many bytes.
    #[serde(default = "default_wal_limit")]
    pub wal_limit_bytes: u64,
}

fn default_policy() -> Policy {
    Policy::Move
}

fn default_rto() -> u64 {
    200
}

fn default_wal_limit() -> u64 {
    8 << 20
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the config names agent {0} as its own peer")]
    SelfPeer(u16),
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        if config.peers.contains_key(&config.id) {
            return Err(ConfigError::SelfPeer(config.id));
        }
        Ok(config)
    }

    pub fn agent_ids(&self) -> Vec<AgentId> {
        let mut ids: Vec<AgentId> = self.peers.keys().map(|&id| AgentId(id)).collect();
        ids.push(AgentId(self.id));
        ids
    }
}
