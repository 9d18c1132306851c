//! Reading guest RAM for the wire cheaply.
//!
//! Touching guest memory through the VMM's mapping costs a page fault per 4 KiB page the VMM
//! has not mapped yet, and on nested hosts a fault is expensive. So RAM mapped shared with a
//! file is read from the file with `pread` (straight from the page cache), and anonymous RAM
//! the guest never touched is recognised with `mincore` and skipped as zero without reading
//! it.
use std::fs::File;
use std::os::fd::AsRawFd;
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
    match shared_file(mem, gpa, buf.len() as u64) {
        Some((file, offset)) => file
            .read_exact_at(buf, offset)
            .map_err(vm_memory::GuestMemoryError::IOError),
        None => mem.read_slice(buf, GuestAddress(gpa)),
    }
}

/// The file and offset of `[gpa, gpa + len)` when it lies in one region of RAM mapped shared
/// with a file. Only a shared mapping writes through to its file; a private one (a lazily
/// restored snapshot) keeps the guest's writes in memory.
pub fn shared_file(mem: &GuestMemory, gpa: u64, len: u64) -> Option<(&File, u64)> {
    let region = mem.find_region(GuestAddress(gpa))?;
    let shared = std::ops::Deref::deref(region).flags() & libc::MAP_SHARED != 0;
    let fo = region.file_offset().filter(|_| shared)?;
    let offset = fo.start().checked_add(gpa - region.start_addr().0)?;
    let inside = gpa
        .checked_add(len)
        .is_some_and(|end| end <= region.start_addr().0 + region.len());
    (inside && offset.checked_add(len).is_some()).then_some((fo.file(), offset))
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

/// Zeroes `[gpa, gpa + len)` of private anonymous RAM by dropping its pages
/// (`MADV_DONTNEED`: they read as zero and take no memory until written again). Returns
/// false, having done nothing, for other memory or on failure: the caller then writes zeros.
pub fn discard(mem: &GuestMemory, gpa: u64, len: u64) -> bool {
    let Some(region) = mem.find_region(GuestAddress(gpa)) else {
        return false;
    };
    let private = std::ops::Deref::deref(region).flags() & libc::MAP_PRIVATE != 0;
    if !private
        || region.file_offset().is_some()
        || gpa.saturating_add(len) > region.start_addr().0 + region.len()
    {
        return false;
    }
    let Ok(host) = mem.get_host_address(GuestAddress(gpa)) else {
        return false;
    };
    // SAFETY: [host, host + len) lies inside one private anonymous mapping owned by `mem`
    // (checked above) and is page-aligned; dropping its pages makes them read as zero, which
    // is the content the caller asks for. No reference into that range is held.
    unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) == 0 }
}

/// Pages of `mem` resident in this process, as `mincore` reports them.
pub fn resident_pages(mem: &GuestMemory) -> u64 {
    mem.iter()
        .filter_map(|r| resident(mem, r.start_addr().0, (r.len() / PAGE_SIZE) as usize))
        .map(|u| u.iter().filter(|&&r| r).count() as u64)
        .sum()
}

/// Whether the host has swap: a swapped-out anonymous page is not resident either, so the
/// untouched-page shortcut is only sound without swap.
fn host_has_swap() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |s| s.lines().count() > 1)
}

/// Which pages of a file-backed region hold data in its file, found in one walk.
pub struct FileData {
    /// Guest address of the region.
    start: u64,
    pages: Vec<bool>,
}

impl FileData {
    /// Walks the file of the region at `gpa` once (`SEEK_DATA`/`SEEK_HOLE`); `None` for
    /// anonymous RAM or when the file cannot say.
    ///
    /// A sender asks once per region and pass, not per run: on tmpfs `SEEK_HOLE` walks the
    /// page cache to the end of the data it starts in, so asking per run (up to 8 MiB) walked the rest
    /// of a dense file every time (a third of the sender's CPU time for a 1 GiB file of random
    /// data, and quadratic in RAM). The answer may go stale while the guest runs, safely: a page
    /// written since is resident (shared mappings) or a private copy (private ones), which
    /// [`untouched`] checks afresh each time.
    pub fn of_region(mem: &GuestMemory, gpa: u64) -> Option<Self> {
        let region = mem.find_region(GuestAddress(gpa))?;
        let fo = region.file_offset()?;
        let mut pages = vec![false; (region.len() / PAGE_SIZE) as usize];
        mark_file_data(fo.file(), fo.start(), region.len(), &mut pages).ok()?;
        Some(FileData {
            start: region.start_addr().0,
            pages,
        })
    }

    /// The `pages` entries from `gpa`, if they lie in this region.
    fn range(&self, gpa: u64, pages: usize) -> Option<&[bool]> {
        let first = usize::try_from(gpa.checked_sub(self.start)? / PAGE_SIZE).ok()?;
        self.pages.get(first..first.checked_add(pages)?)
    }
}

/// For `pages` pages at `gpa`, which are known to read as zero without reading them: pages
/// not resident in this process (`mincore`) and, for file-backed RAM, in a hole of the file
/// (`SEEK_DATA`; from `file` when the caller walked the file already). `None` when that cannot
/// be known (swap, or a query failed).
pub fn untouched(
    mem: &GuestMemory,
    gpa: u64,
    pages: usize,
    file: Option<&FileData>,
) -> Option<Vec<bool>> {
    static NO_SWAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*NO_SWAP.get_or_init(|| !host_has_swap()) {
        return None;
    }
    let region = mem.find_region(GuestAddress(gpa))?;
    let shared = std::ops::Deref::deref(region).flags() & libc::MAP_SHARED != 0;
    let mut data = match region.file_offset() {
        // A private file mapping reads the file where the guest has not written: the page
        // cache says nothing about the guest's data there, only its own copies do.
        Some(_) if !shared => private_copies(mem, gpa, pages)?,
        _ => resident(mem, gpa, pages)?,
    };
    if let Some(fo) = region.file_offset() {
        match file.and_then(|f| f.range(gpa, pages)) {
            Some(known) => data.iter_mut().zip(known).for_each(|(d, &k)| *d |= k),
            None => {
                let start = fo.start() + (gpa - region.start_addr().0);
                mark_file_data(fo.file(), start, pages as u64 * PAGE_SIZE, &mut data).ok()?;
            }
        }
    }
    Some(data.iter().map(|&d| !d).collect())
}

/// Which of `pages` pages at `gpa` are resident in this process (`mincore`).
fn resident(mem: &GuestMemory, gpa: u64, pages: usize) -> Option<Vec<bool>> {
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
    (rc == 0).then(|| vec.iter().map(|&b| b & 1 == 1).collect())
}

/// Which of `pages` pages at `gpa` this process has its own (copy-on-write) copy of, from
/// `/proc/self/pagemap`: present and not a page of a file.
fn private_copies(mem: &GuestMemory, gpa: u64, pages: usize) -> Option<Vec<bool>> {
    const PRESENT: u64 = 1 << 63;
    const FILE_OR_SHARED: u64 = 1 << 61;
    let region = mem.find_region(GuestAddress(gpa))?;
    if gpa + pages as u64 * PAGE_SIZE > region.start_addr().0 + region.len() {
        return None;
    }
    let host = mem.get_host_address(GuestAddress(gpa)).ok()? as u64;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let mut raw = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut raw, host / PAGE_SIZE * 8).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let e = u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]));
                e & PRESENT != 0 && e & FILE_OR_SHARED == 0
            })
            .collect(),
    )
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
        let first = ((data - start) / PAGE_SIZE) as usize;
        let last = ((hole - start).div_ceil(PAGE_SIZE) as usize).min(out.len());
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
    // nothing relies on (all guest-RAM file I/O is positional).
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
    use std::io::Write;
    use vm_memory::bitmap::AtomicBitmap;
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{FileOffset, GuestRegionMmap};

    #[test]
    fn untouched_anonymous_pages_are_known_without_reading_them() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(1u8, GuestAddress(2 * PAGE_SIZE)).unwrap();
        if let Some(u) = untouched(&mem, 0, 4, None) {
            assert_eq!(u, vec![true, true, false, true]);
        }
        let mut buf = vec![0u8; 4096];
        read(&mem, 2 * PAGE_SIZE, &mut buf).unwrap();
        assert_eq!(buf[0], 1);
    }

    #[test]
    fn discarded_anonymous_pages_read_as_zero_and_are_not_resident() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_obj(5u8, GuestAddress(3 * PAGE_SIZE)).unwrap();
        assert!(discard(&mem, 3 * PAGE_SIZE, PAGE_SIZE));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(3 * PAGE_SIZE)).unwrap(), 0);
        assert!(!discard(&file_backed(libc::MAP_SHARED), 0, PAGE_SIZE));
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
        map_file(f, 1 << 16, flags)
    }

    fn map_file(f: std::fs::File, size: usize, flags: libc::c_int) -> GuestMemory {
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
        // The file holds data there: not untouched.
        assert_ne!(untouched(&mem, 0, 1, None), Some(vec![true]));
    }

    #[test]
    fn file_data_is_found_between_holes() {
        let f = tempfile_in_tmp();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1; 10], 40 << 20).unwrap();
        let mut out = vec![false; (64 << 20) / PAGE_SIZE as usize];
        mark_file_data(&f, 0, 64 << 20, &mut out).unwrap();
        let set: Vec<usize> = (0..out.len()).filter(|&i| out[i]).collect();
        // Filesystems allocate in blocks of a page or more; the data page is among them and
        // nothing far from it is.
        assert!(set.contains(&((40 << 20) / PAGE_SIZE as usize)), "{set:?}");
        assert!(set.len() <= 512, "{} pages marked", set.len());
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

    #[test]
    fn a_private_mapping_of_a_sparse_file_knows_its_zero_pages() {
        // Data in the file at page 1, a guest write at page 6, holes elsewhere (even where
        // the guest read them, which puts zero pages in the page cache).
        let f = tempfile_in_tmp();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[3; 8], PAGE_SIZE).unwrap();
        let mem = map_file(f, 1 << 20, libc::MAP_PRIVATE);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(4 * PAGE_SIZE)).unwrap(), 0);
        mem.write_obj(9u8, GuestAddress(6 * PAGE_SIZE)).unwrap();
        if let Some(u) = untouched(&mem, 0, 8, None) {
            let data: Vec<usize> = (0..8).filter(|&i| !u[i]).collect();
            assert!(data.contains(&1) && data.contains(&6), "{data:?}");
            assert!(!data.contains(&4), "{data:?}");
        }
    }

    #[test]
    fn one_walk_of_the_file_answers_as_walks_per_run_do_and_sees_later_writes() {
        for flags in [libc::MAP_SHARED, libc::MAP_PRIVATE] {
            let f = tempfile_in_tmp();
            f.set_len(1 << 20).unwrap();
            f.write_all_at(&[3; 8], 5 * PAGE_SIZE).unwrap();
            f.write_all_at(&[4; 8], 130 * PAGE_SIZE).unwrap();
            let mem = map_file(f, 1 << 20, flags);
            let walked = FileData::of_region(&mem, 0).unwrap();
            // The guest writes after the walk, as it does while a pass runs.
            mem.write_obj(9u8, GuestAddress(200 * PAGE_SIZE)).unwrap();
            for (gpa, pages) in [(0, 256), (4 * PAGE_SIZE, 8), (128 * PAGE_SIZE, 128)] {
                let (Some(once), Some(per_run)) = (
                    untouched(&mem, gpa, pages, Some(&walked)),
                    untouched(&mem, gpa, pages, None),
                ) else {
                    continue; // swap on this host: nothing is known without reading
                };
                assert_eq!(once, per_run, "flags {flags} at {gpa:#x}");
            }
            if let Some(u) = untouched(&mem, 0, 256, Some(&walked)) {
                assert!(!u[5] && !u[130] && !u[200], "data seen as untouched");
            }
        }
    }

    fn tempfile_in_tmp() -> std::fs::File {
        // Tests run in parallel: each gets its own file.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("guest-ram-test-{}-{n}", std::process::id()));
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
