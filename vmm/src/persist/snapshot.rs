//! Snapshots on disk: a directory holding `state.bin` (the framed VM state) and `memory.bin`
//! (guest RAM, regions concatenated in address order, as a sparse file).
//!
//! Both directions cost in proportion to the data, not to RAM: writing reads only pages the
//! guest may have touched ([`guest_ram::untouched`]) and leaves zero pages as holes; restoring
//! maps `memory.bin` privately and lazily, so a page is read when the guest first touches it.
//! A VM restored that way reads its memory file for as long as it runs: replace a snapshot
//! (files are written aside and renamed into place, so that is safe), never edit it in place.
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use migrator::guest_ram;

use super::format::{self, FormatError};
use super::VmState;
use crate::vstate::memory::{self, Backing, GuestMemory, MemoryError};

pub const STATE_FILE: &str = "state.bin";
pub const MEMORY_FILE: &str = "memory.bin";
/// Unit of I/O: large enough for few syscalls.
const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot write snapshot file {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read snapshot file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot state {path} is invalid")]
    Format { path: PathBuf, source: FormatError },
    #[error("memory image {path} is {found} bytes but the VM has {expected} bytes of RAM")]
    MemorySize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("cannot copy guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot map the snapshot's memory")]
    Map(#[from] MemoryError),
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Write {
        path: path.into(),
        source,
    }
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Read {
        path: path.into(),
        source,
    }
}

/// Total bytes of guest RAM.
pub fn ram_bytes(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Writes `data` to `path` by way of a temporary file renamed into place, so a VM still
/// mapping the old file keeps reading the old contents.
fn replace_file(
    path: &Path,
    fill: impl FnOnce(&File) -> Result<u64, SnapshotError>,
) -> Result<u64, SnapshotError> {
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(write_err(&tmp))?;
    let n = fill(&file)?;
    file.sync_all().map_err(write_err(&tmp))?;
    fs::rename(&tmp, path).map_err(write_err(path))?;
    Ok(n)
}

/// Writes `state` and `mem` into `dir`, creating it if needed. Returns the memory bytes
/// actually written: only pages that may hold data are read, and zero pages become holes.
pub fn write(dir: &Path, state: &VmState, mem: &GuestMemory) -> Result<u64, SnapshotError> {
    fs::create_dir_all(dir).map_err(write_err(dir))?;
    let state_path = dir.join(STATE_FILE);
    let bytes = format::encode(state).map_err(|source| SnapshotError::Format {
        path: state_path.clone(),
        source,
    })?;
    replace_file(&state_path, |f| {
        f.write_all_at(&bytes, 0).map_err(write_err(&state_path))?;
        Ok(0)
    })?;
    let mem_path = dir.join(MEMORY_FILE);
    replace_file(&mem_path, |f| write_memory(f, &mem_path, mem))
}

fn write_memory(file: &File, path: &Path, mem: &GuestMemory) -> Result<u64, SnapshotError> {
    file.set_len(ram_bytes(mem)).map_err(write_err(path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let pages = (region.len() / PAGE as u64) as usize;
        let data: Vec<bool> = match guest_ram::untouched(mem, region.start_addr().0, pages, None) {
            Some(untouched) => untouched.iter().map(|&u| !u).collect(),
            None => vec![true; pages],
        };
        for (first, count) in runs(&data, CHUNK / PAGE) {
            let len = count * PAGE;
            let gpa = region.start_addr().0 + (first * PAGE) as u64;
            mem.read_slice(&mut buf[..len], GuestAddress(gpa))?;
            // Write the non-zero pages of the run, in stretches.
            let mut i = 0;
            while i < count {
                let zero = |k: usize| buf[k * PAGE..(k + 1) * PAGE].iter().all(|&b| b == 0);
                if zero(i) {
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < count && !zero(j) {
                    j += 1;
                }
                let at = file_offset + ((first + i) * PAGE) as u64;
                file.write_all_at(&buf[i * PAGE..j * PAGE], at)
                    .map_err(write_err(path))?;
                written += ((j - i) * PAGE) as u64;
                i = j;
            }
        }
        file_offset += region.len();
    }
    Ok(written)
}

/// Runs `(first, count)` of set entries of `pages`, each at most `max` long.
fn runs(pages: &[bool], max: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut next = 0;
    std::iter::from_fn(move || {
        let first = next + pages.get(next..)?.iter().position(|&p| p)?;
        let mut end = first;
        while end < pages.len() && pages[end] && end - first < max {
            end += 1;
        }
        next = end;
        Some((first, end - first))
    })
}

/// Reads and validates the state of the snapshot in `dir`.
pub fn read_state(dir: &Path) -> Result<VmState, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = fs::read(&path).map_err(read_err(&path))?;
    format::decode(&bytes).map_err(|source| SnapshotError::Format { path, source })
}

/// Opens the snapshot's memory image and checks it has `expected` bytes.
fn open_memory(dir: &Path, expected: u64) -> Result<(File, PathBuf), SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let file = File::open(&path).map_err(read_err(&path))?;
    let found = file.metadata().map_err(read_err(&path))?.len();
    if found != expected {
        return Err(SnapshotError::MemorySize {
            path,
            found,
            expected,
        });
    }
    Ok((file, path))
}

/// Guest memory of `mem_bytes` restored from the snapshot in `dir`. Anonymous memory maps the
/// image privately and lazily (nothing is read now); file-backed memory gets the image's data
/// copied in, holes skipped.
pub fn restore_memory(
    dir: &Path,
    backing: &Backing,
    mem_bytes: u64,
) -> Result<GuestMemory, SnapshotError> {
    match backing {
        Backing::Anonymous => {
            let (file, _) = open_memory(dir, mem_bytes)?;
            Ok(memory::map_private(&file, mem_bytes)?)
        }
        Backing::File(_) => {
            let mem = memory::create(mem_bytes, backing)?;
            load_memory(dir, &mem)?;
            Ok(mem)
        }
    }
}

/// Copies the data of the snapshot's memory image into `mem`; holes are skipped, so fresh
/// memory stays untouched where the guest had nothing.
pub fn load_memory(dir: &Path, mem: &GuestMemory) -> Result<(), SnapshotError> {
    let (file, path) = open_memory(dir, ram_bytes(mem))?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let mut data = vec![false; (region.len() / PAGE as u64) as usize];
        guest_ram::mark_file_data(&file, file_offset, region.len(), &mut data)
            .map_err(read_err(&path))?;
        for (first, count) in runs(&data, CHUNK / PAGE) {
            let len = count * PAGE;
            file.read_exact_at(&mut buf[..len], file_offset + (first * PAGE) as u64)
                .map_err(read_err(&path))?;
            let gpa = region.start_addr().0 + (first * PAGE) as u64;
            mem.write_slice(&buf[..len], GuestAddress(gpa))?;
        }
        file_offset += region.len();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BootMode;
    use crate::devices::serial::SerialSnapshot;
    use crate::persist::MachineState;
    use crate::vstate::memory::{self, Backing};

    fn state() -> VmState {
        VmState {
            machine: MachineState {
                boot: BootMode::Bench,
                mem_mib: 8,
                vcpus: 1,
                cmdline: String::new(),
                irqchip: false,
            },
            clock_ns: 5,
            vcpus: Vec::new(),
            irqchip: None,
            serial: SerialSnapshot::default(),
            boot_time_ns: Some(42),
            net: Vec::new(),
            disks: Vec::new(),
        }
    }

    #[test]
    fn memory_round_trips_and_zero_chunks_are_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mem = memory::create(8 << 20, &Backing::Anonymous).unwrap();
        mem.write_obj(0xabcdu32, GuestAddress(0x30_0000)).unwrap();
        // A resident page of zeros is not data either.
        mem.write_obj(0u32, GuestAddress(0x40_0000)).unwrap();
        let written = write(dir.path(), &state(), &mem).unwrap();
        assert_eq!(written, PAGE as u64);
        let again = memory::create(8 << 20, &Backing::Anonymous).unwrap();
        load_memory(dir.path(), &again).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x30_0000)).unwrap(),
            0xabcd
        );
        assert_eq!(read_state(dir.path()).unwrap().clock_ns, 5);
        let lazy = restore_memory(dir.path(), &Backing::Anonymous, 8 << 20).unwrap();
        assert_eq!(
            lazy.read_obj::<u32>(GuestAddress(0x30_0000)).unwrap(),
            0xabcd
        );
        // Writes to a lazily restored VM never reach the snapshot.
        lazy.write_obj(1u32, GuestAddress(0x30_0000)).unwrap();
        let fresh = restore_memory(dir.path(), &Backing::Anonymous, 8 << 20).unwrap();
        assert_eq!(
            fresh.read_obj::<u32>(GuestAddress(0x30_0000)).unwrap(),
            0xabcd
        );
        // Saving the restored VM again gives the same image.
        let dir2 = tempfile::tempdir().unwrap();
        write(dir2.path(), &state(), &fresh).unwrap();
        assert!(
            fs::read(dir.path().join(MEMORY_FILE)).unwrap()
                == fs::read(dir2.path().join(MEMORY_FILE)).unwrap()
        );
    }

    #[test]
    fn wrong_sized_memory_and_corrupt_state_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mem = memory::create(8 << 20, &Backing::Anonymous).unwrap();
        write(dir.path(), &state(), &mem).unwrap();
        let bigger = memory::create(16 << 20, &Backing::Anonymous).unwrap();
        assert!(matches!(
            load_memory(dir.path(), &bigger),
            Err(SnapshotError::MemorySize { .. })
        ));
        assert!(matches!(
            restore_memory(dir.path(), &Backing::Anonymous, 16 << 20),
            Err(SnapshotError::MemorySize { .. })
        ));
        let state_path = dir.path().join(STATE_FILE);
        let mut bytes = fs::read(&state_path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&state_path, bytes).unwrap();
        let err = read_state(dir.path()).unwrap_err();
        assert!(matches!(err, SnapshotError::Format { .. }));
    }
}
