//! One virtio-blk request (virtio 1.2, 5.2.6) against the disk file.
//!
//! The chain has already been checked against guest RAM (see `chain`). What remains can be
//! wrong in a hostile guest's request is answered with a status, never a panic: a header shorter
//! than 16 bytes, data that is not whole sectors, sectors past the end of the disk (with the
//! arithmetic checked), data buffers of the wrong direction, a write to a read-only disk
//! (`IOERR`), an unknown request type (`UNSUPP`). A chain without room for the status byte
//! gets nothing written and is returned with length 0.
use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::chain::Chain;
use crate::vstate::memory::GuestMemory;

pub const SECTOR: u64 = 512;
/// `struct virtio_blk_outhdr`: type, reserved, sector.
pub const HEADER: u64 = 16;
/// Bytes moved between the file and guest memory per system call.
const CHUNK: usize = 64 << 10;

/// The backing file and what the guest may do with it.
pub struct Disk {
    pub file: File,
    /// Whole sectors of the file; a trailing partial sector is out of the guest's reach.
    pub sectors: u64,
    pub readonly: bool,
    /// The serial number `GET_ID` returns (NUL-padded).
    pub id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

/// What the device puts in the used ring for a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// The status written, or `None` if the chain had no room for it.
    pub status: Option<u8>,
    /// Bytes written into the chain's writable buffers, status included.
    pub len: u32,
}

/// A run of guest memory.
type Seg = (GuestAddress, u64);

/// The byte range `[skip, skip + take)` of the concatenated buffers `bufs`, as segments.
fn range(bufs: &[(GuestAddress, u32)], mut skip: u64, mut take: u64) -> Vec<Seg> {
    let mut out = Vec::new();
    for &(addr, len) in bufs {
        let len = u64::from(len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(take);
        if n > 0 {
            // In RAM (checked by `chain::pop`), so the sum cannot wrap.
            out.push((GuestAddress(addr.0 + skip), n));
        }
        take -= n;
        skip = 0;
        if take == 0 {
            break;
        }
    }
    out
}

fn read_bytes(mem: &GuestMemory, segs: &[Seg]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for &(addr, len) in segs {
        let start = out.len();
        out.resize(start + len as usize, 0);
        mem.read_slice(&mut out[start..], addr).ok()?;
    }
    Some(out)
}

struct Header {
    kind: u32,
    sector: u64,
}

fn header(mem: &GuestMemory, c: &Chain) -> Option<Header> {
    let bytes = read_bytes(mem, &range(&c.readable, 0, HEADER))?;
    if bytes.len() as u64 != HEADER {
        return None;
    }
    let kind: [u8; 4] = bytes.get(0..4)?.try_into().ok()?;
    let sector: [u8; 8] = bytes.get(8..16)?.try_into().ok()?;
    Some(Header {
        kind: u32::from_le_bytes(kind),
        sector: u64::from_le_bytes(sector),
    })
}

/// Whether `len` bytes from `sector` are whole sectors inside the disk.
fn in_bounds(disk: &Disk, sector: u64, len: u64) -> bool {
    let end = sector.checked_add(len / SECTOR);
    len.is_multiple_of(SECTOR) && end.is_some_and(|e| e <= disk.sectors)
}

/// Reads the disk at byte `offset` into the segments.
fn disk_to_guest(disk: &Disk, mem: &GuestMemory, segs: &[Seg], mut offset: u64) -> bool {
    let mut buf = vec![0u8; CHUNK];
    for &(addr, len) in segs {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            if disk.file.read_exact_at(&mut buf[..n], offset).is_err() {
                return false;
            }
            if mem
                .write_slice(&buf[..n], GuestAddress(addr.0 + done))
                .is_err()
            {
                return false;
            }
            done += n as u64;
            offset += n as u64;
        }
    }
    true
}

/// Writes the segments to the disk at byte `offset`.
fn guest_to_disk(disk: &Disk, mem: &GuestMemory, segs: &[Seg], mut offset: u64) -> bool {
    let mut buf = vec![0u8; CHUNK];
    for &(addr, len) in segs {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            if mem
                .read_slice(&mut buf[..n], GuestAddress(addr.0 + done))
                .is_err()
            {
                return false;
            }
            if let Err(e) = disk.file.write_all_at(&buf[..n], offset) {
                tracing::warn!("virtio-blk: write at byte {offset} failed: {e}");
                return false;
            }
            done += n as u64;
            offset += n as u64;
        }
    }
    true
}

/// Carries out the request in `c` and writes its status; returns what the used ring gets.
pub fn execute(disk: &Disk, mem: &GuestMemory, c: &Chain) -> Completion {
    let writable = c.writable_len();
    // The status is the chain's last writable byte; data for the guest comes before it.
    let Some(status_at) = writable
        .checked_sub(1)
        .and_then(|last| range(&c.writable, last, 1).first().map(|s| s.0))
    else {
        tracing::debug!(head = c.head, "virtio-blk: a request without a status byte");
        return Completion {
            status: None,
            len: 0,
        };
    };
    let data_in = writable - 1;
    let (status, written) = match header(mem, c) {
        None => (VIRTIO_BLK_S_IOERR, 0),
        Some(h) => run(disk, mem, c, &h, data_in),
    };
    let status = status as u8;
    if mem.write_obj(status, status_at).is_err() {
        return Completion {
            status: None,
            len: 0,
        };
    }
    Completion {
        status: Some(status),
        len: written + 1,
    }
}

/// The request's status and the data bytes it wrote into the guest.
fn run(disk: &Disk, mem: &GuestMemory, c: &Chain, h: &Header, data_in: u64) -> (u32, u32) {
    let data_out = c.readable_len().saturating_sub(HEADER);
    match h.kind {
        VIRTIO_BLK_T_IN => {
            if data_out != 0 || !in_bounds(disk, h.sector, data_in) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let segs = range(&c.writable, 0, data_in);
            match disk_to_guest(disk, mem, &segs, h.sector * SECTOR) {
                // `data_in` fits in u32: a chain holds at most MAX_CHAIN_BYTES.
                true => (VIRTIO_BLK_S_OK, data_in as u32),
                false => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        VIRTIO_BLK_T_OUT => {
            if disk.readonly || data_in != 0 || !in_bounds(disk, h.sector, data_out) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let segs = range(&c.readable, HEADER, data_out);
            match guest_to_disk(disk, mem, &segs, h.sector * SECTOR) {
                true => (VIRTIO_BLK_S_OK, 0),
                false => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        VIRTIO_BLK_T_FLUSH => match disk.readonly || disk.file.sync_data().is_ok() {
            true => (VIRTIO_BLK_S_OK, 0),
            false => (VIRTIO_BLK_S_IOERR, 0),
        },
        VIRTIO_BLK_T_GET_ID => {
            let n = data_in.min(disk.id.len() as u64);
            let segs = range(&c.writable, 0, n);
            let mut src = &disk.id[..];
            for (addr, len) in segs {
                let (now, rest) = src.split_at(len as usize);
                if mem.write_slice(now, addr).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                src = rest;
            }
            (VIRTIO_BLK_S_OK, n as u32)
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_span_buffers_and_stop_at_the_end() {
        let bufs = [(GuestAddress(0x1000), 10), (GuestAddress(0x2000), 20)];
        assert_eq!(range(&bufs, 0, 5), vec![(GuestAddress(0x1000), 5)]);
        assert_eq!(
            range(&bufs, 8, 10),
            vec![(GuestAddress(0x1008), 2), (GuestAddress(0x2000), 8)]
        );
        assert_eq!(range(&bufs, 29, 1), vec![(GuestAddress(0x2013), 1)]);
        assert_eq!(range(&bufs, 30, 1), vec![]);
        assert_eq!(range(&bufs, 25, 100), vec![(GuestAddress(0x200f), 5)]);
    }
}
