//! The snapshot: the whole state in one file of the data dir, replaced atomically.
//!
//! Written to a temporary file, `fsync`ed, renamed over the old one, and the directory
//! `fsync`ed, so after a crash or `kill -9` the file is either the old snapshot or the new one,
//! whole. Turns between snapshots go to the write-ahead log (`journal`); the snapshot names the
//! log generation that continues it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use guest_agent::client::ClientBook;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"GAGENT02";

/// What the daemon keeps: the agent's state and the client request keys it has answered.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    /// The log generation that continues this snapshot (`wal-<generation>`).
    pub generation: u64,
    pub agent: Vec<u8>,
    /// Client idempotency keys and what each submit's result is (postcard encodes the two
    /// maps as before they moved into the core, so older state files still load).
    pub clients: ClientBook,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot write the state file in {dir}")]
    Write {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the state file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is not an agent state file (bad magic)")]
    Magic { path: PathBuf },
    #[error("the state file {path} does not decode: {error}")]
    Decode {
        path: PathBuf,
        error: postcard::Error,
    },
    #[error("the state does not encode: {0}")]
    Encode(postcard::Error),
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, PersistError> {
        fs::create_dir_all(dir).map_err(|source| PersistError::Write {
            dir: dir.into(),
            source,
        })?;
        Ok(Store { dir: dir.into() })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn load(&self) -> Result<Option<Saved>, PersistError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PersistError::Read { path, source }),
        };
        let Some(body) = bytes.strip_prefix(MAGIC) else {
            return Err(PersistError::Magic { path });
        };
        let saved =
            postcard::from_bytes(body).map_err(|error| PersistError::Decode { path, error })?;
        Ok(Some(saved))
    }

    pub fn save(&self, saved: &Saved) -> Result<(), PersistError> {
        let body = postcard::to_stdvec(saved).map_err(PersistError::Encode)?;
        let write = |source| PersistError::Write {
            dir: self.dir.clone(),
            source,
        };
        let tmp = self.dir.join("state.tmp");
        let mut file = File::create(&tmp).map_err(write)?;
        file.write_all(MAGIC).map_err(write)?;
        file.write_all(&body).map_err(write)?;
        file.sync_all().map_err(write)?;
        fs::rename(&tmp, self.path()).map_err(write)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(write)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_corrupt_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("agentd-persist-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        assert!(store.load().unwrap().is_none());
        let mut saved = Saved {
            agent: vec![1, 2, 3],
            ..Saved::default()
        };
        saved.clients.keys.insert(
            9,
            guest_agent::FutureId {
                origin: guest_agent::AgentId(1),
                seq: 4,
            },
        );
        store.save(&saved).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(
            (back.agent, back.clients.keys),
            (saved.agent, saved.clients.keys)
        );
        fs::write(dir.join("state"), b"garbage!").unwrap();
        assert!(matches!(store.load(), Err(PersistError::Magic { .. })));
        fs::write(dir.join("state"), b"GAGENT02\xff\xff").unwrap();
        assert!(matches!(store.load(), Err(PersistError::Decode { .. })));
        fs::remove_dir_all(dir).unwrap();
    }
}
