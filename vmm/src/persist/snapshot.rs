//! Snapshots on disk: a directory holding `state.bin` (the framed VM state) and `memory.bin`
//! (guest RAM, regions concatenated in address order, zero chunks left as holes).
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::format::{self, FormatError};
use super::VmState;
use crate::vstate::memory::GuestMemory;

pub const STATE_FILE: &str = "state.bin";
pub const MEMORY_FILE: &str = "memory.bin";
/// Unit of zero detection and I/O: large enough for few syscalls, small enough to find holes.
const CHUNK: usize = 1 << 20;

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

/// Writes `state` and `mem` into `dir`, creating it if needed. Returns the memory bytes
/// actually written (non-zero chunks).
pub fn write(dir: &Path, state: &VmState, mem: &GuestMemory) -> Result<u64, SnapshotError> {
    fs::create_dir_all(dir).map_err(write_err(dir))?;
    let state_path = dir.join(STATE_FILE);
    let bytes = format::encode(state).map_err(|source| SnapshotError::Format {
        path: state_path.clone(),
        source,
    })?;
    fs::write(&state_path, bytes).map_err(write_err(&state_path))?;

    let mem_path = dir.join(MEMORY_FILE);
    let mut file = File::create(&mem_path).map_err(write_err(&mem_path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    for region in mem.iter() {
        let mut off = 0u64;
        while off < region.len() {
            let n = (region.len() - off).min(CHUNK as u64) as usize;
            mem.read_slice(&mut buf[..n], GuestAddress(region.start_addr().0 + off))?;
            if buf[..n].iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(n as i64))
                    .map_err(write_err(&mem_path))?;
            } else {
                file.write_all(&buf[..n]).map_err(write_err(&mem_path))?;
                written += n as u64;
            }
            off += n as u64;
        }
    }
    file.set_len(ram_bytes(mem)).map_err(write_err(&mem_path))?;
    file.sync_all().map_err(write_err(&mem_path))?;
    Ok(written)
}

/// Reads and validates the state of the snapshot in `dir`.
pub fn read_state(dir: &Path) -> Result<VmState, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = fs::read(&path).map_err(read_err(&path))?;
    format::decode(&bytes).map_err(|source| SnapshotError::Format { path, source })
}

/// Fills `mem` from the snapshot's memory image; zero chunks are skipped so fresh memory
/// stays untouched.
pub fn load_memory(dir: &Path, mem: &GuestMemory) -> Result<(), SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let mut file = File::open(&path).map_err(read_err(&path))?;
    let found = file.metadata().map_err(read_err(&path))?.len();
    let expected = ram_bytes(mem);
    if found != expected {
        return Err(SnapshotError::MemorySize {
            path,
            found,
            expected,
        });
    }
    let mut buf = vec![0u8; CHUNK];
    for region in mem.iter() {
        let mut off = 0u64;
        while off < region.len() {
            let n = (region.len() - off).min(CHUNK as u64) as usize;
            file.read_exact(&mut buf[..n]).map_err(read_err(&path))?;
            if buf[..n].iter().any(|&b| b != 0) {
                mem.write_slice(&buf[..n], GuestAddress(region.start_addr().0 + off))?;
            }
            off += n as u64;
        }
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
        }
    }

    #[test]
    fn memory_round_trips_and_zero_chunks_are_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mem = memory::create(8 << 20, &Backing::Anonymous).unwrap();
        mem.write_obj(0xabcdu32, GuestAddress(0x30_0000)).unwrap();
        let written = write(dir.path(), &state(), &mem).unwrap();
        assert_eq!(written, CHUNK as u64);
        let again = memory::create(8 << 20, &Backing::Anonymous).unwrap();
        load_memory(dir.path(), &again).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x30_0000)).unwrap(),
            0xabcd
        );
        assert_eq!(read_state(dir.path()).unwrap().clock_ns, 5);
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
        let state_path = dir.path().join(STATE_FILE);
        let mut bytes = fs::read(&state_path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&state_path, bytes).unwrap();
        let err = read_state(dir.path()).unwrap_err();
        assert!(matches!(err, SnapshotError::Format { .. }));
    }
}
