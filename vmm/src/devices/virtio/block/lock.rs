//! Image locks: a disk opened read-write holds an exclusive `flock` on its image, a read-only
//! disk a shared one, for as long as the device lives. A second VM that would write an image
//! another VM uses, or read one that another VM writes, is refused when it starts instead of
//! corrupting the file system on it. `flock` locks belong to the open file, so two `--disk`
//! options naming one image conflict as well; on NFS Linux maps them to byte-range locks the
//! server enforces across hosts.
//!
//! A live migration on shared storage hands the lock over: the source lets go once its VM is
//! paused and its state captured ([`ImageLock::release`]), the destination takes it when it
//! opens its disk to apply that state, before it says `Ready`, so a destination that cannot
//! get the lock fails before `Commit` and the source carries on. A source that resumes takes
//! its lock back ([`ImageLock::retake`]).
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// The lock on one image file.
pub struct ImageLock {
    /// Shared for a read-only disk, exclusive for a read-write one.
    shared: bool,
    held: AtomicBool,
}

/// What came of trying to take a lock.
#[derive(Debug)]
pub enum Taken {
    Yes,
    /// Another open file (another VM) holds a conflicting lock.
    HeldElsewhere,
    Failed(io::Error),
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock only reads its arguments; the descriptor is valid while `file` lives.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

impl ImageLock {
    /// A lock on an image opened read-only (`shared`) or read-write; not taken yet.
    pub fn new(shared: bool) -> Self {
        Self {
            shared,
            held: AtomicBool::new(false),
        }
    }

    /// Takes the lock on `file` without waiting.
    pub fn take(&self, file: &File) -> Taken {
        let mode = if self.shared {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        match flock(file, mode | libc::LOCK_NB) {
            Ok(()) => {
                self.held.store(true, Ordering::Release);
                Taken::Yes
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Taken::HeldElsewhere,
            Err(e) => Taken::Failed(e),
        }
    }

    /// Lets go of the lock (the VM is paused and moving to another `vmm`).
    pub fn release(&self, file: &File) {
        if self.held.swap(false, Ordering::AcqRel) {
            if let Err(e) = flock(file, libc::LOCK_UN) {
                tracing::warn!("cannot release a disk image lock: {e}");
            }
        }
    }

    /// Takes the lock again after [`ImageLock::release`]; does nothing if it is held.
    pub fn retake(&self, file: &File) -> Taken {
        match self.held() {
            true => Taken::Yes,
            false => self.take(file),
        }
    }

    pub fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    pub fn shared(&self) -> bool {
        self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn writers_exclude_everyone_and_readers_share() {
        let image = tempfile::NamedTempFile::new().unwrap();
        let (a, b) = (open(image.path()), open(image.path()));
        let (rw, ro) = (ImageLock::new(false), ImageLock::new(true));
        assert!(matches!(rw.take(&a), Taken::Yes));
        assert!(matches!(ro.take(&b), Taken::HeldElsewhere));
        assert!(matches!(
            ImageLock::new(false).take(&b),
            Taken::HeldElsewhere
        ));
        assert!(!ro.held());

        // Handed over: released here, the other file takes it; then back.
        rw.release(&a);
        assert!(!rw.held());
        let other = ImageLock::new(false);
        assert!(matches!(other.take(&b), Taken::Yes));
        assert!(matches!(rw.retake(&a), Taken::HeldElsewhere));
        other.release(&b);
        assert!(matches!(rw.retake(&a), Taken::Yes));
        assert!(rw.held());
        rw.release(&a);

        // Two readers share the image; a writer is kept out.
        let c = open(image.path());
        assert!(matches!(ImageLock::new(true).take(&a), Taken::Yes));
        assert!(matches!(ImageLock::new(true).take(&b), Taken::Yes));
        assert!(matches!(
            ImageLock::new(false).take(&c),
            Taken::HeldElsewhere
        ));
    }
}
