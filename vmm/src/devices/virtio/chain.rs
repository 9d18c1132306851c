//! Descriptor chains from an untrusted guest, checked before the device touches a byte.
//!
//! `virtio-queue` bounds a chain's walk by the queue size and stops at a bad index, but it
//! stops silently. Here every way a chain can be wrong is an error the device reports: an
//! available index that jumps past the queue, an empty chain, a chain that does not end (a
//! loop, a next index outside the table, more descriptors than the queue holds), a buffer
//! outside guest RAM, a readable buffer after a writable one, and more bytes than the device
//! accepts for one request.
use vm_memory::{GuestAddress, GuestMemoryBackend};

use virtio_queue::{Queue, QueueOwnedT};

use crate::vstate::memory::GuestMemory;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("the available ring index moved by more than the queue size")]
    AvailIndex,
    #[error("descriptor chain {head} is empty or its head index is out of range")]
    Empty { head: u16 },
    #[error(
        "descriptor chain {head} does not end: a next index out of range, a loop, or more \
         descriptors than the queue holds"
    )]
    Unterminated { head: u16 },
    #[error("descriptor chain {head} has a {len}-byte buffer at {addr:#x}, outside guest RAM")]
    OutOfRange { head: u16, addr: u64, len: u32 },
    #[error("descriptor chain {head} has a device-readable buffer after a device-writable one")]
    Order { head: u16 },
    #[error("descriptor chain {head} holds more than {max} bytes")]
    TooLarge { head: u16, max: u64 },
    #[error("the queue cannot be read: {0}")]
    Queue(String),
}

/// A validated chain: its head (for the used ring) and its buffers, in order.
#[derive(Debug, Default)]
pub struct Chain {
    pub head: u16,
    /// Device-readable buffers (what the driver sends).
    pub readable: Vec<(GuestAddress, u32)>,
    /// Device-writable buffers (where the device may write).
    pub writable: Vec<(GuestAddress, u32)>,
}

impl Chain {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|&(_, l)| u64::from(l)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|&(_, l)| u64::from(l)).sum()
    }
}

/// Takes the next available chain off `queue`, checked against `mem`, holding at most
/// `max_bytes` in all. `Ok(None)`: the driver has made nothing available.
pub fn pop(
    queue: &mut Queue,
    mem: &GuestMemory,
    max_bytes: u64,
) -> Result<Option<Chain>, ChainError> {
    let mut iter = queue.iter(mem).map_err(|e| match e {
        virtio_queue::Error::InvalidAvailRingIndex => ChainError::AvailIndex,
        other => ChainError::Queue(other.to_string()),
    })?;
    let Some(descriptors) = iter.next() else {
        return Ok(None);
    };
    let head = descriptors.head_index();
    let mut chain = Chain {
        head,
        ..Chain::default()
    };
    let mut total = 0u64;
    let mut open = false;
    let mut count = 0usize;
    for desc in descriptors {
        count += 1;
        let (addr, len) = (desc.addr(), desc.len());
        if len > 0 && !GuestMemoryBackend::check_range(mem, addr, len as usize) {
            return Err(ChainError::OutOfRange {
                head,
                addr: addr.0,
                len,
            });
        }
        total += u64::from(len);
        if total > max_bytes {
            return Err(ChainError::TooLarge {
                head,
                max: max_bytes,
            });
        }
        if desc.is_write_only() {
            chain.writable.push((addr, len));
        } else if !chain.writable.is_empty() {
            return Err(ChainError::Order { head });
        } else {
            chain.readable.push((addr, len));
        }
        open = desc.has_next();
    }
    if count == 0 {
        return Err(ChainError::Empty { head });
    }
    if open {
        return Err(ChainError::Unterminated { head });
    }
    Ok(Some(chain))
}

#[cfg(test)]
pub mod tests {
    //! A hand-built split virtqueue in guest memory, the driver's side, for device tests.
    use super::*;
    use crate::vstate::memory::{self, Backing};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::QueueT;
    use vm_memory::Address;
    use vm_memory::Bytes;

    pub const DESC: u64 = 0x10_0000;
    pub const AVAIL: u64 = 0x11_0000;
    pub const USED: u64 = 0x12_0000;

    /// The driver side of one queue at fixed addresses.
    pub struct Driver {
        pub size: u16,
        pub avail_idx: u16,
        desc_base: u64,
        avail_base: u64,
        used_base: u64,
    }

    impl Driver {
        /// A driver whose queue lives at `DESC`/`AVAIL`/`USED` plus `offset`.
        pub fn new(size: u16, offset: u64) -> Self {
            Self {
                size,
                avail_idx: 0,
                desc_base: DESC + offset,
                avail_base: AVAIL + offset,
                used_base: USED + offset,
            }
        }

        pub fn queue(&self, max: u16) -> Queue {
            let mut q = Queue::new(max).unwrap();
            q.set_size(self.size);
            q.set_desc_table_address(Some(self.desc_base as u32), Some(0));
            q.set_avail_ring_address(Some(self.avail_base as u32), Some(0));
            q.set_used_ring_address(Some(self.used_base as u32), Some(0));
            q.set_ready(true);
            q
        }

        pub fn set_desc(
            &self,
            mem: &GuestMemory,
            i: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            let at = GuestAddress(self.desc_base + u64::from(i) * 16);
            mem.write_obj(addr, at).unwrap();
            mem.write_obj(len, at.unchecked_add(8)).unwrap();
            mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            mem.write_obj(next, at.unchecked_add(14)).unwrap();
        }

        /// Makes the chain starting at descriptor `head` available.
        pub fn offer(&mut self, mem: &GuestMemory, head: u16) {
            let slot = u64::from(self.avail_idx % self.size);
            mem.write_obj(head, GuestAddress(self.avail_base + 4 + slot * 2))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, GuestAddress(self.avail_base + 2))
                .unwrap();
        }

        pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
            mem.read_obj(GuestAddress(self.used_base + 2)).unwrap()
        }

        /// The used element at position `i`: (id, len).
        pub fn used(&self, mem: &GuestMemory, i: u16) -> (u32, u32) {
            let at = self.used_base + 4 + u64::from(i % self.size) * 8;
            (
                mem.read_obj(GuestAddress(at)).unwrap(),
                mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        pub fn used_ring_addr(&self) -> u64 {
            self.used_base
        }
    }

    pub fn mem() -> GuestMemory {
        memory::create(16 << 20, &Backing::Anonymous).unwrap()
    }

    /// Whether the VMM-side bitmap has the page of `addr` dirty.
    pub fn dirty(mem: &GuestMemory, addr: u64) -> bool {
        use vm_memory::bitmap::Bitmap;
        let region = mem.find_region(GuestAddress(addr)).unwrap();
        region.bitmap().dirty_at(addr as usize)
    }

    /// Forgets every recorded write.
    pub fn clear_dirty(mem: &GuestMemory) {
        for r in mem.iter() {
            r.bitmap().reset();
        }
    }

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;

    #[test]
    fn a_good_chain_is_split_into_readable_and_writable_buffers() {
        let m = mem();
        let mut d = Driver::new(8, 0);
        let mut q = d.queue(8);
        assert!(pop(&mut q, &m, 1 << 20).unwrap().is_none());
        d.set_desc(&m, 0, 0x20_0000, 100, N, 1);
        d.set_desc(&m, 1, 0x20_1000, 200, W | N, 2);
        d.set_desc(&m, 2, 0x20_2000, 300, W, 0);
        d.offer(&m, 0);
        let c = pop(&mut q, &m, 1 << 20).unwrap().unwrap();
        assert_eq!(c.head, 0);
        assert_eq!(c.readable_len(), 100);
        assert_eq!(c.writable_len(), 500);
        assert_eq!(c.writable[1], (GuestAddress(0x20_2000), 300));
    }

    #[test]
    fn malformed_chains_are_errors() {
        let m = mem();
        let ram = 16u64 << 20;
        type Case<'a> = (&'a str, Box<dyn Fn(&Driver) + 'a>, ChainError);
        let cases: Vec<Case> = vec![
            (
                "past the end of RAM",
                Box::new(|d: &Driver| d.set_desc(&m, 0, ram - 10, 100, 0, 0)),
                ChainError::OutOfRange {
                    head: 0,
                    addr: ram - 10,
                    len: 100,
                },
            ),
            (
                "in the MMIO hole",
                Box::new(|d: &Driver| d.set_desc(&m, 0, 0xd000_0000, 8, W, 0)),
                ChainError::OutOfRange {
                    head: 0,
                    addr: 0xd000_0000,
                    len: 8,
                },
            ),
            (
                "wrapping the address space",
                Box::new(|d: &Driver| d.set_desc(&m, 0, u64::MAX - 4, 100, 0, 0)),
                ChainError::OutOfRange {
                    head: 0,
                    addr: u64::MAX - 4,
                    len: 100,
                },
            ),
            (
                "a loop",
                Box::new(|d: &Driver| {
                    d.set_desc(&m, 0, 0x20_0000, 10, N, 1);
                    d.set_desc(&m, 1, 0x20_0000, 10, N, 0);
                }),
                ChainError::Unterminated { head: 0 },
            ),
            (
                "a self loop",
                Box::new(|d: &Driver| d.set_desc(&m, 0, 0x20_0000, 10, N, 0)),
                ChainError::Unterminated { head: 0 },
            ),
            (
                "a next index past the table",
                Box::new(|d: &Driver| d.set_desc(&m, 0, 0x20_0000, 10, N, 999)),
                ChainError::Unterminated { head: 0 },
            ),
            (
                "more bytes than allowed",
                Box::new(|d: &Driver| {
                    d.set_desc(&m, 0, 0x20_0000, 60_000, N, 1);
                    d.set_desc(&m, 1, 0x30_0000, 60_000, 0, 0);
                }),
                ChainError::TooLarge {
                    head: 0,
                    max: 100_000,
                },
            ),
            (
                "a huge length",
                Box::new(|d: &Driver| d.set_desc(&m, 0, 0x20_0000, u32::MAX, 0, 0)),
                ChainError::OutOfRange {
                    head: 0,
                    addr: 0x20_0000,
                    len: u32::MAX,
                },
            ),
            (
                "readable after writable",
                Box::new(|d: &Driver| {
                    d.set_desc(&m, 0, 0x20_0000, 10, W | N, 1);
                    d.set_desc(&m, 1, 0x20_0000, 10, 0, 0);
                }),
                ChainError::Order { head: 0 },
            ),
        ];
        for (what, build, want) in cases {
            let mut d = Driver::new(8, 0);
            let mut q = d.queue(8);
            build(&d);
            d.offer(&m, 0);
            assert_eq!(pop(&mut q, &m, 100_000).unwrap_err(), want, "{what}");
        }
    }

    #[test]
    fn a_bad_head_or_a_runaway_avail_index_is_an_error() {
        let m = mem();
        let mut d = Driver::new(8, 0);
        let mut q = d.queue(8);
        d.offer(&m, 200);
        assert_eq!(
            pop(&mut q, &m, 1000).unwrap_err(),
            ChainError::Empty { head: 200 }
        );
        let d2 = Driver::new(8, 0x1000);
        let mut q2 = d2.queue(8);
        m.write_obj(100u16, GuestAddress(AVAIL + 0x1000 + 2))
            .unwrap();
        assert_eq!(pop(&mut q2, &m, 1000).unwrap_err(), ChainError::AvailIndex);
    }

    #[test]
    fn the_longest_legal_chain_is_accepted_and_one_more_is_not() {
        let m = mem();
        let mut d = Driver::new(8, 0);
        let mut q = d.queue(8);
        for i in 0..8 {
            let last = i == 7;
            d.set_desc(&m, i, 0x20_0000, 10, if last { 0 } else { N }, i + 1);
        }
        d.offer(&m, 0);
        assert_eq!(pop(&mut q, &m, 1000).unwrap().unwrap().readable.len(), 8);
        // The same table with the last descriptor chaining on: nine would be needed.
        d.set_desc(&m, 7, 0x20_0000, 10, N, 0);
        d.offer(&m, 0);
        assert_eq!(
            pop(&mut q, &m, 1000).unwrap_err(),
            ChainError::Unterminated { head: 0 }
        );
    }
}
