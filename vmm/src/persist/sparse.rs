//! Which pages of guest RAM may hold data, found without reading the others: a page that is
//! neither mapped in this process (`mincore`) nor backed by data in the region's file
//! (`SEEK_DATA`) reads as zero. Snapshots use this to cost in proportion to what the guest
//! touched, never to its RAM size.
use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::vstate::memory::GuestMemory;

const PAGE: u64 = 4096;

/// Whether the host swaps: a swapped-out page is neither resident nor in the file, so the
/// shortcut is only sound without swap.
fn host_has_swap() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |s| s.lines().count() > 1)
}

/// For each page of region `index` of `mem`, whether it may hold data (all `true` when that
/// cannot be known).
pub fn pages_with_data(mem: &GuestMemory, index: usize) -> Vec<bool> {
    let Some(region) = mem.iter().nth(index) else {
        return Vec::new();
    };
    let pages = (region.len() / PAGE) as usize;
    let all = vec![true; pages];
    static SWAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *SWAP.get_or_init(host_has_swap) {
        return all;
    }
    let Ok(host) = mem.get_host_address(region.start_addr()) else {
        return all;
    };
    let mut resident = vec![0u8; pages];
    // SAFETY: `host` starts this region's live, page-aligned mapping, owned by `mem`, of
    // `pages` pages; `resident` has one byte per page, as mincore requires. mincore only reads
    // page tables.
    let rc = unsafe { libc::mincore(host.cast(), pages * PAGE as usize, resident.as_mut_ptr()) };
    if rc != 0 {
        return all;
    }
    let mut out: Vec<bool> = resident.iter().map(|&b| b & 1 == 1).collect();
    if let Some(fo) = region.file_offset() {
        if mark_file_data(fo.file(), fo.start(), region.len(), &mut out).is_err() {
            return all;
        }
    }
    out
}

/// Sets `out[i]` for every page `i` of `[start, start + len)` in `file` that holds data
/// (rather than a hole or the end of the file).
pub fn mark_file_data(file: &File, start: u64, len: u64, out: &mut [bool]) -> std::io::Result<()> {
    let end = start + len;
    let mut at = start;
    while at < end {
        let Some(data) = seek(file, at, libc::SEEK_DATA)? else {
            break; // no data after `at`
        };
        if data >= end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let first = ((data - start) / PAGE) as usize;
        let last = ((hole - start).div_ceil(PAGE) as usize).min(out.len());
        for page in out.iter_mut().take(last).skip(first) {
            *page = true;
        }
        at = hole.max(data + 1);
    }
    Ok(())
}

/// `lseek` with SEEK_DATA or SEEK_HOLE; `None` past the last data (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let offset = i64::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: lseek on a file descriptor we own; it only moves the file position, which
    // nothing here relies on (all I/O is positional).
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(rc as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn file_data_is_found_between_holes() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1; 10], 40 << 20).unwrap();
        let mut out = vec![false; (64 << 20) / PAGE as usize];
        mark_file_data(&f, 0, 64 << 20, &mut out).unwrap();
        let set: Vec<usize> = (0..out.len()).filter(|&i| out[i]).collect();
        // Filesystems allocate in blocks of a page or more; the data page is among them and
        // nothing far from it is.
        assert!(set.contains(&((40 << 20) / PAGE as usize)), "{set:?}");
        assert!(set.len() <= 512, "{} pages marked", set.len());
    }

    #[test]
    fn untouched_anonymous_memory_holds_no_data() {
        use vm_memory::{Bytes, GuestAddress};
        let mem =
            crate::vstate::memory::create(16 << 20, &crate::vstate::memory::Backing::Anonymous)
                .unwrap();
        mem.write_obj(5u8, GuestAddress(3 * PAGE)).unwrap();
        let pages = pages_with_data(&mem, 0);
        if !host_has_swap() {
            assert_eq!(pages.iter().filter(|&&p| p).count(), 1);
            assert!(pages[3]);
        }
    }
}
