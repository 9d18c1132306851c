//! The daemon's durability: a snapshot plus a write-ahead log of the turns since it.
//!
//! The agent is deterministic: given the same state and the same inputs in the same order, a
//! turn (apply the inputs, run up to `steps` task steps) makes the same state again. Task steps
//! see nothing but their `Ctx` (no clock, no randomness, no I/O), so this holds for every task.
//! So the log records each turn's *inputs* (frames from peers and state-changing client
//! requests), not the state they produce: a few hundred bytes a turn where the whole state was
//! megabytes. Each turn's record is made durable before anything the turn produced (hops,
//! acknowledgements, client answers) leaves the process. Recovery loads the snapshot and
//! replays the log.
//!
//! Compaction bounds the log: once it passes `limit` bytes, the state goes to a new snapshot
//! that names the next log generation, and the old log is deleted. A crash anywhere in between
//! leaves either the old snapshot with its whole log, or the new snapshot with an empty one.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::persist::{PersistError, Saved, Store};
use crate::wal::{Wal, WalError};

/// One input that changed the agent's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Logged {
    /// A frame from a peer, as received.
    Frame(Vec<u8>),
    /// A state-changing client request (JSON, as the client interface speaks it).
    Client(Vec<u8>),
}

/// One turn of the event loop: its inputs in order, then `run(steps)`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Turn {
    pub inputs: Vec<Logged>,
    pub steps: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot list or remove old logs in {dir}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("record {index} of the log does not decode as a turn: {error}")]
    Decode {
        index: usize,
        error: postcard::Error,
    },
    #[error("a turn does not encode: {0}")]
    Encode(postcard::Error),
}

/// What recovery found.
pub struct Recovered {
    pub saved: Saved,
    pub turns: Vec<Turn>,
    /// Bytes of a torn last record that were dropped.
    pub torn: usize,
}

pub struct Journal {
    store: Store,
    wal: Wal,
    generation: u64,
    limit: u64,
    /// Snapshots written since start (compactions).
    pub compactions: u64,
}

fn wal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("wal-{generation}"))
}

/// Removes every log but generation `keep` (leftovers of a compaction cut short).
fn remove_other_logs(dir: &Path, keep: Option<u64>) -> Result<(), JournalError> {
    let fail = |source| JournalError::Dir {
        dir: dir.into(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        let Some(generation) = name.to_str().and_then(|n| n.strip_prefix("wal-")) else {
            continue;
        };
        if keep.is_none_or(|keep| generation != keep.to_string()) {
            fs::remove_file(entry.path()).map_err(fail)?;
        }
    }
    Ok(())
}

impl Journal {
    /// The journal in `dir` and what it holds, or `None` if the agent never started there.
    pub fn recover(dir: &Path, limit: u64) -> Result<Option<(Journal, Recovered)>, JournalError> {
        let store = Store::open(dir)?;
        let Some(saved) = store.load()? else {
            return Ok(None);
        };
        let generation = saved.generation;
        remove_other_logs(dir, Some(generation))?;
        let (wal, records, torn) = Wal::open(&wal_path(dir, generation))?;
        let turns = records
            .iter()
            .enumerate()
            .map(|(index, r)| {
                postcard::from_bytes(r).map_err(|error| JournalError::Decode { index, error })
            })
            .collect::<Result<_, _>>()?;
        let journal = Journal {
            store,
            wal,
            generation,
            limit,
            compactions: 0,
        };
        Ok(Some((journal, Recovered { saved, turns, torn })))
    }

    /// A fresh journal whose first snapshot is `saved`.
    pub fn create(dir: &Path, limit: u64, saved: &mut Saved) -> Result<Journal, JournalError> {
        let store = Store::open(dir)?;
        remove_other_logs(dir, None)?;
        saved.generation = 0;
        store.save(saved)?;
        let (wal, _, _) = Wal::open(&wal_path(dir, 0))?;
        Ok(Journal {
            store,
            wal,
            generation: 0,
            limit,
            compactions: 0,
        })
    }

    /// Makes a turn durable.
    pub fn commit(&mut self, turn: &Turn) -> Result<(), JournalError> {
        let body = postcard::to_stdvec(turn).map_err(JournalError::Encode)?;
        self.wal.append(&body)?;
        Ok(())
    }

    /// Whether the log has grown past its limit.
    pub fn wants_snapshot(&self) -> bool {
        self.wal.len() > self.limit
    }

    /// Bytes in the current log.
    pub fn log_bytes(&self) -> u64 {
        self.wal.len()
    }

    /// Writes `saved` (the state after every committed turn) as the new snapshot and starts an
    /// empty log.
    pub fn compact(&mut self, saved: &mut Saved) -> Result<(), JournalError> {
        let next = self.generation + 1;
        saved.generation = next;
        self.store.save(saved)?;
        // From here the new snapshot is the truth; a crash before the new log exists recovers
        // with an empty one.
        let (wal, _, _) = Wal::open(&wal_path(self.store.dir(), next))?;
        self.wal = wal;
        let old = wal_path(self.store.dir(), self.generation);
        self.generation = next;
        self.compactions += 1;
        fs::remove_file(&old).map_err(|source| JournalError::Dir {
            dir: self.store.dir().into(),
            source,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(n: u8) -> Turn {
        Turn {
            inputs: vec![Logged::Frame(vec![n; 3])],
            steps: 7,
        }
    }

    #[test]
    fn turns_survive_and_compaction_starts_a_new_generation() {
        let dir = std::env::temp_dir().join(format!("agentd-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(Journal::recover(&dir, 64).unwrap().is_none());
        let mut saved = Saved {
            agent: vec![1],
            ..Saved::default()
        };
        let mut journal = Journal::create(&dir, 64, &mut saved).unwrap();
        for n in 0..3 {
            journal.commit(&turn(n)).unwrap();
        }
        let (mut journal, found) = Journal::recover(&dir, 64).unwrap().unwrap();
        assert_eq!(found.turns.len(), 3);
        assert_eq!((found.saved.agent, found.torn), (vec![1], 0));
        while !journal.wants_snapshot() {
            journal.commit(&turn(9)).unwrap();
        }
        saved.agent = vec![2];
        journal.compact(&mut saved).unwrap();
        journal.commit(&turn(4)).unwrap();
        let (_, found) = Journal::recover(&dir, 64).unwrap().unwrap();
        assert_eq!(found.saved.generation, 1);
        assert_eq!(found.saved.agent, vec![2]);
        assert_eq!(found.turns.len(), 1);
        assert!(!wal_path(&dir, 0).exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
