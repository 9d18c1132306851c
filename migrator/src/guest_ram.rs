//! Reading guest RAM for the wire cheaply.
//!
//! Touching guest memory through the VMM's mapping costs a page fault per 4 KiB page the VMM
//! has not mapped yet, and on nested hosts a fault is expensive. So RAM mapped shared with a
//! file is read from the file with `pread` (straight from the page cache), and anonymous RAM
//! the guest never touched is recognised with `mincore` and skipped as zero without reading
//! it.
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::wire::PAGE_SIZE;
use crate::GuestMemory;

/// Copies `buf.len()` bytes of guest RAM at `gpa` into `buf`.
pub fn read(
    mem: &GuestMemory,
    gpa: u64,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    if let Some(region) = mem.find_region(GuestAddress(gpa)) {
        // Only a shared mapping writes through to its file; a private one (a lazily restored
        // snapshot) keeps the guest's writes in memory.
        let shared = std::ops::Deref::deref(region).flags() & libc::MAP_SHARED != 0;
        if let Some(fo) = region.file_offset().filter(|_| shared) {
            let offset = fo.start() + (gpa - region.start_addr().0);
            if offset.checked_add(buf.len() as u64).is_some()
                && gpa + buf.len() as u64 <= region.start_addr().0 + region.len()
            {
                return fo
                    .file()
                    .read_exact_at(buf, offset)
                    .map_err(vm_memory::GuestMemoryError::IOError);
            }
        }
    }
    mem.read_slice(buf, GuestAddress(gpa))
}

/// `MADV_POPULATE_WRITE` (Linux 5.14); the libc crate does not name it yet.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Faults in `[gpa, gpa + len)` for writing in one system call, just before a migration
/// destination copies received pages there: taking the faults one page at a time inside the
/// copy costs more than the copy itself on nested hosts. Only pages that arrive get populated,
/// so never-touched guest memory stays unpopulated here as on the source. Best effort: without
/// kernel support the copy faults as before.
pub fn populate(mem: &GuestMemory, gpa: u64, len: u64) {
    let Some(region) = mem.find_region(GuestAddress(gpa)) else {
        return;
    };
    if gpa.saturating_add(len) > region.start_addr().0 + region.len() {
        return;
    }
    let Ok(host) = mem.get_host_address(GuestAddress(gpa)) else {
        return;
    };
    // SAFETY: [host, host + len) lies inside one region's live mapping owned by `mem`
    // (checked above) and is page-aligned (gpa is, regions are); populating only allocates
    // and maps pages, it changes no contents.
    let rc = unsafe { libc::madvise(host.cast(), len as usize, MADV_POPULATE_WRITE) };
    if rc != 0 {
        tracing::trace!(
            "MADV_POPULATE_WRITE failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Pages of `mem` resident in this process, as `mincore` reports them (tests and statistics).
pub fn resident_pages(mem: &GuestMemory) -> u64 {
    mem.iter()
        .filter_map(|r| untouched_raw(mem, r.start_addr().0, (r.len() / PAGE_SIZE) as usize))
        .map(|u| u.iter().filter(|&&z| !z).count() as u64)
        .sum()
}

/// Whether the host has swap: a swapped-out anonymous page is not resident either, so the
/// untouched-page shortcut is only sound without swap.
fn host_has_swap() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |s| s.lines().count() > 1)
}

/// For `pages` pages at `gpa` in anonymous RAM, which were never touched and so read as zero;
/// `None` when that cannot be known (file-backed RAM, swap, or the query failed).
pub fn untouched(mem: &GuestMemory, gpa: u64, pages: usize) -> Option<Vec<bool>> {
    static NO_SWAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*NO_SWAP.get_or_init(|| !host_has_swap()) {
        return None;
    }
    let region = mem.find_region(GuestAddress(gpa))?;
    if region.file_offset().is_some() {
        return None;
    }
    untouched_raw(mem, gpa, pages)
}

/// Which of `pages` pages at `gpa` are not resident (`mincore`), whatever the backing.
fn untouched_raw(mem: &GuestMemory, gpa: u64, pages: usize) -> Option<Vec<bool>> {
    let region = mem.find_region(GuestAddress(gpa))?;
    if gpa + pages as u64 * PAGE_SIZE > region.start_addr().0 + region.len() {
        return None;
    }
    let host = mem.get_host_address(GuestAddress(gpa)).ok()?;
    let mut vec = vec![0u8; pages];
    // SAFETY: `host` is page-aligned (gpa is, and regions are mapped page-aligned) and the
    // `pages` pages after it lie inside one live mapping owned by `mem` (checked above);
    // `vec` has one byte per page, as mincore requires. mincore only reads page tables.
    let rc = unsafe { libc::mincore(host.cast(), pages * PAGE_SIZE as usize, vec.as_mut_ptr()) };
    (rc == 0).then(|| vec.iter().map(|&b| b & 1 == 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::bitmap::AtomicBitmap;
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{FileOffset, GuestRegionMmap};

    #[test]
    fn untouched_anonymous_pages_are_known_without_reading_them() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(1u8, GuestAddress(2 * PAGE_SIZE)).unwrap();
        if let Some(u) = untouched(&mem, 0, 4) {
            assert_eq!(u, vec![true, true, false, true]);
        }
        let mut buf = vec![0u8; 4096];
        read(&mem, 2 * PAGE_SIZE, &mut buf).unwrap();
        assert_eq!(buf[0], 1);
    }

    #[test]
    fn populating_a_range_makes_only_that_range_resident() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        assert_eq!(resident_pages(&mem), 0);
        populate(&mem, 8 * PAGE_SIZE, 4 * PAGE_SIZE);
        // Kernels before 5.14 lack MADV_POPULATE_WRITE: then nothing becomes resident.
        let n = resident_pages(&mem);
        assert!(n == 0 || n == 4, "{n} pages resident");
        mem.write_obj(1u8, GuestAddress(100 * PAGE_SIZE)).unwrap();
        assert_eq!(resident_pages(&mem), n + 1);
    }

    fn file_backed(flags: libc::c_int) -> GuestMemory {
        let mut f = tempfile_in_tmp();
        f.write_all(&vec![7u8; 1 << 16]).unwrap();
        let size = 1 << 16;
        let region = MmapRegionBuilder::new_with_bitmap(
            size,
            AtomicBitmap::new(size, std::num::NonZeroUsize::new(4096).unwrap()),
        )
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_file_offset(FileOffset::new(f, 0))
        .build()
        .unwrap();
        GuestMemory::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
            .unwrap()
    }

    #[test]
    fn file_backed_ram_is_read_from_the_file() {
        let mem = file_backed(libc::MAP_SHARED);
        mem.write_obj(9u8, GuestAddress(100)).unwrap();
        let mut buf = vec![0u8; 4096];
        read(&mem, 0, &mut buf).unwrap();
        assert_eq!((buf[0], buf[100]), (7, 9));
        assert!(untouched(&mem, 0, 1).is_none());
    }

    #[test]
    fn a_private_file_mapping_is_read_from_memory() {
        // The guest's writes to a privately mapped file never reach the file.
        let mem = file_backed(libc::MAP_PRIVATE);
        mem.write_obj(9u8, GuestAddress(100)).unwrap();
        let mut buf = vec![0u8; 4096];
        read(&mem, 0, &mut buf).unwrap();
        assert_eq!((buf[0], buf[100]), (7, 9));
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("guest-ram-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
