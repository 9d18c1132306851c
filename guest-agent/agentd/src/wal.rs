//! An append-only log of records, each made durable (`fdatasync`) before `append` returns.
//!
//! A record on disk is its length (u32 LE), the CRC-32 of its body (u32 LE), then the body.
//! A crash can leave the last record half written: its header cut short, its body cut short,
//! or (on file systems that allocate before they write) its bytes zeroed. Such a torn tail was
//! never acknowledged, because nothing leaves the daemon before its record is durable, so
//! recovery drops it and truncates the file there. A bad record *followed by* good data is not a
//! torn write but damage to acknowledged state, and recovery refuses it instead of guessing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A record larger than this is garbage (a torn or damaged length).
pub const MAX_RECORD: usize = 64 << 20;
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot open the log {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the log {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot append to the log {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the log {path} is damaged at byte {offset}: a bad record is followed by more data, \
         so acknowledged state would be lost by dropping it"
    )]
    Corrupt { path: PathBuf, offset: usize },
    #[error("a log record of {len} bytes is larger than the {MAX_RECORD}-byte limit")]
    TooLarge { len: usize },
}

/// What `scan` found in a log's bytes.
#[derive(Debug, PartialEq)]
pub struct Scan<'a> {
    pub records: Vec<&'a [u8]>,
    /// Where the good records end (the file is truncated here).
    pub end: usize,
    /// Bytes of a torn last record that were dropped.
    pub torn: usize,
}

/// Splits a log's bytes into records. `Err(offset)` when a bad record is followed by data.
pub fn scan(bytes: &[u8]) -> Result<Scan<'_>, usize> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = Scan {
            records: Vec::new(),
            end: at,
            torn: rest.len(),
        };
        let Some((header, body)) = rest.split_at_checked(HEADER) else {
            return Ok(Scan { records, ..torn });
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(body) = body.get(..len) else {
            // The length runs past the end: the write was cut short.
            return Ok(Scan { records, ..torn });
        };
        if len == 0 || len > MAX_RECORD || crc32fast::hash(body) != crc {
            // Torn if nothing but zeros follows (an unwritten, preallocated tail); damage if
            // real data does.
            let after = rest.get(HEADER + len..).unwrap_or_default();
            if after.iter().all(|&b| b == 0) {
                return Ok(Scan { records, ..torn });
            }
            return Err(at);
        }
        records.push(body);
        at += HEADER + len;
    }
    Ok(Scan {
        records,
        end: at,
        torn: 0,
    })
}

pub struct Wal {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Wal {
    /// Opens (or creates) the log, returns it with its records; a torn tail is cut off.
    pub fn open(path: &Path) -> Result<(Wal, Vec<Vec<u8>>, usize), WalError> {
        let open = |source| WalError::Open {
            path: path.into(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(open)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|source| WalError::Read {
                path: path.into(),
                source,
            })?;
        let found = scan(&bytes).map_err(|offset| WalError::Corrupt {
            path: path.into(),
            offset,
        })?;
        let records = found.records.iter().map(|r| r.to_vec()).collect();
        let end = found.end as u64;
        if found.torn > 0 {
            file.set_len(end)
                .and_then(|()| file.sync_all())
                .map_err(open)?;
        }
        file.seek(SeekFrom::End(0)).map_err(open)?;
        let wal = Wal {
            path: path.into(),
            file,
            len: end,
        };
        Ok((wal, records, found.torn))
    }

    /// Appends one record and makes it durable.
    pub fn append(&mut self, body: &[u8]) -> Result<(), WalError> {
        if body.is_empty() || body.len() > MAX_RECORD {
            return Err(WalError::TooLarge { len: body.len() });
        }
        let mut record = Vec::with_capacity(HEADER + body.len());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        record.extend_from_slice(body);
        let write = |source| WalError::Write {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&record).map_err(write)?;
        self.file.sync_data().map_err(write)?;
        self.len += record.len() as u64;
        Ok(())
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &[u8]) -> Vec<u8> {
        let mut r = (body.len() as u32).to_le_bytes().to_vec();
        r.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn whole_records_scan_back() {
        let mut log = record(b"one");
        log.extend(record(b"two"));
        let found = scan(&log).unwrap();
        assert_eq!(found.records, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!((found.end, found.torn), (log.len(), 0));
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let mut log = record(b"first record");
        let good = log.len();
        log.extend(record(b"second record, cut short"));
        for cut in good + 1..log.len() {
            let found = scan(&log[..cut]).unwrap();
            assert_eq!(found.records, vec![&b"first record"[..]], "cut at {cut}");
            assert_eq!((found.end, found.torn), (good, cut - good));
        }
    }

    #[test]
    fn a_zeroed_or_flipped_last_record_is_torn_but_damage_before_data_is_refused() {
        let mut log = record(b"first");
        let good = log.len();
        log.extend(vec![0u8; 40]);
        assert_eq!(scan(&log).unwrap().end, good);

        let mut log = record(b"first");
        log.extend(record(b"second"));
        let last = log.len() - 1;
        log[last] ^= 0xff;
        assert_eq!(scan(&log).unwrap().records.len(), 1);

        let mut log = record(b"first");
        log[HEADER] ^= 0xff;
        log.extend(record(b"second"));
        assert_eq!(scan(&log), Err(0));
    }

    #[test]
    fn appends_survive_reopen_and_a_torn_tail_is_truncated() {
        let dir = std::env::temp_dir().join(format!("agentd-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wal");
        let _ = std::fs::remove_file(&path);
        let (mut wal, records, torn) = Wal::open(&path).unwrap();
        assert!(records.is_empty() && torn == 0 && wal.is_empty());
        wal.append(b"alpha").unwrap();
        wal.append(b"beta").unwrap();
        assert!(matches!(wal.append(b""), Err(WalError::TooLarge { .. })));
        let whole = wal.len();
        drop(wal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&record(b"gamma")[..7]).unwrap();
        drop(file);
        let (mut wal, records, torn) = Wal::open(&path).unwrap();
        assert_eq!(records, vec![b"alpha".to_vec(), b"beta".to_vec()]);
        assert_eq!((torn, wal.len()), (7, whole));
        wal.append(b"delta").unwrap();
        drop(wal);
        let (_, records, torn) = Wal::open(&path).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(torn, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
