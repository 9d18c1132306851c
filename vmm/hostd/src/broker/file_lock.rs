//! An exclusive `flock` beside a file, so that several hostd processes (and tests) can share
//! one file-kept broker: each change reads, edits and writes the file under the lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// An exclusive `flock` on `PATH.lock`, released when dropped (with the descriptor).
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for and takes the lock that guards `path`.
    pub fn exclusive(path: &Path) -> io::Result<Self> {
        let mut name = path.as_os_str().to_os_string();
        name.push(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(name)?;
        // SAFETY: flock takes an open descriptor and plain flags; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }
}
