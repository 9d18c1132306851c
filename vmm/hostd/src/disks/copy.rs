//! A writable VM's own copy of a disk blob: a reflink where the file system can share blocks
//! (`FICLONE`: btrfs, XFS), else a sparse copy that keeps the blob's holes. A plain
//! `std::io::copy` would write every zero block out and turn a mostly empty image into a
//! full-size file.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes copied at a time; a piece that is all zeros is skipped (left as a hole).
const PIECE: usize = 1 << 20;

/// Copies `src` to the new file `dst` (which must not exist) and syncs it. On failure `dst` is
/// removed, so no half-made copy is ever taken for a VM's disk.
pub fn clone_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    let from = File::open(src)?;
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    let result = reflink(&from, &to)
        .or_else(|_| copy_sparse(&from, &to))
        .and_then(|()| to.sync_all());
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    result
}

/// Shares `from`'s blocks with `to`, where the file system supports it.
fn reflink(from: &File, to: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open
    // for as long as the call runs.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The next data region at or after `offset` as `(start, end)`, or `None` past the last one.
/// A file system without `SEEK_DATA` support reports the whole file as data, which is still
/// right (the zero-piece check below then finds the holes).
fn next_data(file: &File, offset: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let seek = |whence| {
        // SAFETY: lseek on an open descriptor with a valid whence; it only moves the offset.
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset_i64(offset)?, whence) };
        match at {
            -1 => Err(io::Error::last_os_error()),
            at => Ok(at as u64),
        }
    };
    let start = match seek(libc::SEEK_DATA) {
        Ok(start) => start,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => offset,
        Err(e) => return Err(e),
    };
    if start >= len {
        return Ok(None);
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(file.as_raw_fd(), offset_i64(start)?, libc::SEEK_HOLE) };
    let end = if end < 0 { len } else { (end as u64).min(len) };
    Ok(Some((start, end)))
}

fn offset_i64(offset: u64) -> io::Result<i64> {
    i64::try_from(offset).map_err(|_| io::Error::other("file offset beyond i64"))
}

fn copy_sparse(from: &File, to: &File) -> io::Result<()> {
    let len = from.metadata()?.len();
    to.set_len(0)?;
    to.set_len(len)?;
    let mut buf = vec![0u8; PIECE];
    let mut offset = 0;
    while let Some((start, end)) = next_data(from, offset, len)? {
        let mut at = start;
        while at < end {
            let n = usize::try_from(end - at).map_or(PIECE, |left| left.min(PIECE));
            from.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                to.write_all_at(&buf[..n], at)?;
            }
            at += n as u64;
        }
        offset = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_sparse_copy_has_the_same_bytes_and_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("blob"), dir.path().join("copy"));
        // 64 MiB, data only at the start, in the middle and at the very end.
        let file = File::create(&src).unwrap();
        file.set_len(64 << 20).unwrap();
        for (at, bytes) in [
            (0, &b"boot"[..]),
            (30 << 20, b"middle"),
            ((64 << 20) - 3, b"end"),
        ] {
            file.write_all_at(bytes, at).unwrap();
        }
        drop(file);
        let from = File::open(&src).unwrap();
        let to = File::create(&dst).unwrap();
        copy_sparse(&from, &to).unwrap();
        drop(to);
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        // At most the three data pieces are allocated, not 64 MiB.
        let allocated = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(allocated <= 3 * PIECE as u64, "{allocated} bytes allocated");

        // The public entry point makes the same copy (by reflink or sparse copy), refuses to
        // overwrite, and leaves nothing behind when the source is missing.
        let cloned = dir.path().join("clone");
        clone_or_copy(&src, &cloned).unwrap();
        assert_eq!(
            std::fs::read(&src).unwrap(),
            std::fs::read(&cloned).unwrap()
        );
        assert!(clone_or_copy(&src, &cloned).is_err());
        let missing = dir.path().join("none");
        assert!(clone_or_copy(&missing, &dir.path().join("x")).is_err());
        assert!(!dir.path().join("x").exists());
    }
}
