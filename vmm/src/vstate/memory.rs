//! Guest memory: anonymous by default, or a shared mapping of a file, with a VMM-side dirty
//! bitmap that records every write the VMM itself makes (device emulation, boot loaders).
use std::fs::{File, OpenOptions};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

use crate::arch::x86_64::layout;

/// Guest memory as the VMM sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot open memory file {path}")]
    OpenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot size memory file {path} to {size} bytes")]
    SizeFile {
        path: PathBuf,
        size: u64,
        source: std::io::Error,
    },
    #[error("cannot map {size} bytes of guest memory at {addr:#x}")]
    Map {
        addr: u64,
        size: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory regions overlap or are empty")]
    Regions(#[from] vm_memory::GuestRegionCollectionError),
    #[error("a {size}-byte region cannot be mapped on this host")]
    TooLarge { size: u64 },
}

/// Where guest RAM comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Private anonymous memory.
    Anonymous,
    /// `MAP_SHARED` over a file, so another process (or a second VMM) sees the same bytes.
    File(PathBuf),
}

fn open_backing_file(path: &Path, size: u64) -> Result<File, MemoryError> {
    // A jailed VM gets its memory file opened before privileges dropped.
    let preopened = crate::sandbox::preopened::take_file(path);
    let file = match preopened {
        Some(file) => file,
        None => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| MemoryError::OpenFile {
                path: path.into(),
                source,
            })?,
    };
    let len = file
        .metadata()
        .map_err(|source| MemoryError::OpenFile {
            path: path.into(),
            source,
        })?
        .len();
    // Grow a short file, but never shrink one: its tail may be another guest's memory.
    if len < size {
        file.set_len(size).map_err(|source| MemoryError::SizeFile {
            path: path.into(),
            size,
            source,
        })?;
    }
    Ok(file)
}

/// Maps `mem_bytes` of guest RAM laid out by [`layout::ram_ranges`].
pub fn create(mem_bytes: u64, backing: &Backing) -> Result<GuestMemory, MemoryError> {
    match backing {
        Backing::Anonymous => map_regions(
            mem_bytes,
            None,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        ),
        Backing::File(path) => {
            let file = open_backing_file(path, mem_bytes)?;
            map_regions(
                mem_bytes,
                Some(&file),
                libc::MAP_SHARED | libc::MAP_NORESERVE,
            )
        }
    }
}

/// Maps `file` (a RAM image at least `mem_bytes` long) privately and lazily as guest RAM, as
/// a snapshot restore does: a page is read from the file when the guest first touches it,
/// and guest writes stay in this process (copy on write), never reaching the file. Mapping
/// costs the same whatever the RAM size.
pub fn map_private(file: &File, mem_bytes: u64) -> Result<GuestMemory, MemoryError> {
    map_regions(
        mem_bytes,
        Some(file),
        libc::MAP_PRIVATE | libc::MAP_NORESERVE,
    )
}

fn map_regions(
    mem_bytes: u64,
    file: Option<&File>,
    flags: libc::c_int,
) -> Result<GuestMemory, MemoryError> {
    let page = NonZeroUsize::new(layout::PAGE_SIZE as usize).unwrap_or(NonZeroUsize::MIN);
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (addr, len) in layout::ram_ranges(mem_bytes) {
        let size = usize::try_from(len).map_err(|_| MemoryError::TooLarge { size: len })?;
        let mut builder = MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::new(size, page))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags);
        if let Some(f) = file {
            let clone = f.try_clone().map_err(|source| MemoryError::OpenFile {
                path: PathBuf::from("memory file"),
                source,
            })?;
            builder = builder.with_file_offset(FileOffset::new(clone, file_offset));
        }
        let mapping = builder.build().map_err(|source| MemoryError::Map {
            addr,
            size: len,
            source,
        })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(addr))
            .ok_or(MemoryError::TooLarge { size: len })?;
        regions.push(region);
        file_offset += len;
    }
    Ok(GuestMemory::from_regions(regions)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend as _};

    #[test]
    fn anonymous_memory_has_the_requested_size() {
        let mem = create(64 << 20, &Backing::Anonymous).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
    }

    #[test]
    fn file_backed_memory_is_shared_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let mem = create(8 << 20, &Backing::File(path.clone())).unwrap();
        mem.write_obj(0xfeed_f00d_u32, GuestAddress(0x1000))
            .unwrap();
        let again = create(8 << 20, &Backing::File(path)).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xfeed_f00d
        );
    }

    #[test]
    fn a_private_mapping_reads_the_file_and_never_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut image = vec![0u8; 8 << 20];
        image[0x2000] = 7;
        std::fs::write(&path, &image).unwrap();
        let mem = map_private(&File::open(&path).unwrap(), 8 << 20).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 7);
        mem.write_obj(9u8, GuestAddress(0x2000)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 9);
        assert_eq!(std::fs::read(&path).unwrap()[0x2000], 7);
    }

    #[test]
    fn vmm_writes_are_recorded_in_the_bitmap() {
        use vm_memory::bitmap::Bitmap;
        let mem = create(8 << 20, &Backing::Anonymous).unwrap();
        mem.write_obj(1u8, GuestAddress(0x5000)).unwrap();
        let region = mem.find_region(GuestAddress(0)).unwrap();
        assert!(region.bitmap().dirty_at(0x5000));
        assert!(!region.bitmap().dirty_at(0x6000));
    }
}
