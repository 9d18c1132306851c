//! Files for file-backed guest memory: a scratch directory removed on drop, a file of random
//! bytes (so that no page is a zero page a VMM could skip), and a page-by-page comparison of
//! two memory files after a migration.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process,
    time::{SystemTime, UNIX_EPOCH},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("cannot create the scratch directory {}", .0.display())]
    CreateDir(PathBuf, #[source] io::Error),
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] io::Error),
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
}

/// A directory made for one benchmark run, removed with everything in it when dropped.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Makes `PARENT/PREFIX-PID-NANOS`, a name no other run uses.
    pub fn new(parent: &Path, prefix: &str) -> Result<Self, FileError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let path = parent.join(format!("{prefix}-{}-{nanos}", process::id()));
        fs::create_dir_all(&path).map_err(|error| FileError::CreateDir(path.clone(), error))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a destructor cannot report, and a leftover directory is only litter.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// xoshiro256** (Blackman and Vigna): fast, and plenty random for memory contents.
pub struct Xoshiro256 {
    state: [u64; 4],
}

impl Xoshiro256 {
    /// Seeds the state with SplitMix64, as the authors recommend, so any seed works.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Xoshiro256 {
            state: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    pub fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

const BLOCK: usize = 1 << 20;
pub const PAGE: u64 = 4096;

/// Writes `size` random bytes to `path` in 1 MiB blocks.
pub fn write_random(path: &Path, size: u64, seed: u64) -> Result<(), FileError> {
    let error = |e| FileError::Write(path.to_owned(), e);
    let mut out = BufWriter::with_capacity(BLOCK, File::create(path).map_err(error)?);
    let mut random = Xoshiro256::new(seed);
    let mut block = vec![0; BLOCK];
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        random.fill(&mut block[..n]);
        out.write_all(&block[..n]).map_err(error)?;
        left -= n as u64;
    }
    out.flush().map_err(error)
}

/// How two memory files differ, page by page, in the bytes that were compared.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Comparison {
    pub pages_compared: u64,
    pub pages_differing: u64,
    /// Guest-physical address of the first page that differs.
    pub first_difference: Option<u64>,
}

/// Compares `a` and `b` page by page. `ignored(address)` says how many leading bytes of the
/// page at `address` to leave out (the whole page, or a word the guest keeps rewriting), so
/// that what the guest changes after a migration does not count. A file shorter than the other
/// counts as zeros past its end, as unwritten file-backed memory reads.
pub fn compare_pages(
    a: &Path,
    b: &Path,
    ignored: impl Fn(u64) -> usize,
) -> Result<Comparison, FileError> {
    let open = |path: &Path| File::open(path).map_err(|e| FileError::Read(path.to_owned(), e));
    let (mut file_a, mut file_b) = (open(a)?, open(b)?);
    let (mut block_a, mut block_b) = (vec![0; BLOCK], vec![0; BLOCK]);
    let mut comparison = Comparison::default();
    let mut offset = 0u64;
    loop {
        let read_a =
            read_block(&mut file_a, &mut block_a).map_err(|e| FileError::Read(a.into(), e))?;
        let read_b =
            read_block(&mut file_b, &mut block_b).map_err(|e| FileError::Read(b.into(), e))?;
        let read = read_a.max(read_b);
        if read == 0 {
            return Ok(comparison);
        }
        block_a[read_a..read].fill(0);
        block_b[read_b..read].fill(0);
        for (index, (page_a, page_b)) in block_a[..read]
            .chunks(PAGE as usize)
            .zip(block_b[..read].chunks(PAGE as usize))
            .enumerate()
        {
            let address = offset + index as u64 * PAGE;
            let skip = ignored(address);
            if skip >= page_a.len() {
                continue;
            }
            comparison.pages_compared += 1;
            if page_a[skip..] != page_b[skip..] {
                comparison.pages_differing += 1;
                comparison.first_difference.get_or_insert(address);
            }
        }
        offset += read as u64;
    }
}

/// Fills `buffer` as far as the file goes; returns how much was read (less only at the end).
fn read_block(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_the_reference_and_fills_partial_words() {
        // The reference implementation from state {1, 2, 3, 4} gives 11520, 0, 1509978240.
        let mut random = Xoshiro256 {
            state: [1, 2, 3, 4],
        };
        let first: Vec<u64> = (0..3).map(|_| random.next_u64()).collect();
        assert_eq!(first, [11520, 0, 1_509_978_240]);
        let mut odd = [0u8; 13];
        Xoshiro256::new(7).fill(&mut odd);
        assert_ne!(odd[8..], [0; 5]);
    }

    #[test]
    fn random_files_have_no_zero_pages_and_compare_by_page() {
        let dir = ScratchDir::new(&std::env::temp_dir(), "bench-files-test").expect("dir");
        let (a, b) = (dir.join("a"), dir.join("b"));
        write_random(&a, 5 * PAGE + 100, 1).expect("write a");
        let bytes = fs::read(&a).expect("read a");
        assert_eq!(bytes.len() as u64, 5 * PAGE + 100);
        assert!(bytes
            .chunks(PAGE as usize)
            .all(|page| page.iter().any(|&x| x != 0)));

        // b: page 1 changed; page 2 changed in its first word (ignored); page 3 changed past
        // its first word; page 4 changed (ignored whole); and no tail.
        let mut other = bytes.clone();
        other[PAGE as usize + 5] ^= 1;
        other[2 * PAGE as usize] ^= 1;
        other[3 * PAGE as usize + 4] ^= 1;
        other[4 * PAGE as usize + 9] ^= 1;
        other.truncate(5 * PAGE as usize);
        fs::write(&b, &other).expect("write b");
        let ignored = |address| match address / PAGE {
            2 | 3 => 4,
            4 => PAGE as usize,
            _ => 0,
        };
        let comparison = compare_pages(&a, &b, ignored).expect("compare");
        assert_eq!(
            comparison,
            Comparison {
                // Pages 0-3 and the 100-byte tail page (which b lacks: zeros there).
                pages_compared: 5,
                pages_differing: 3,
                first_difference: Some(PAGE),
            }
        );
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
