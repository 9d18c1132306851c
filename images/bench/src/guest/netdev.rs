//! The guest's network device: `virtio-drivers`' virtio-net driver on the MMIO transport, as a
//! `smoltcp` device. Guest memory is identity-mapped, so physical and virtual addresses are the
//! same and "DMA" memory is ordinary heap memory.
//!
//! Nothing here allocates after setup (the allocator never reuses memory): receive buffers are
//! a fixed pool handed back to the device as soon as a frame is copied out, and frames to send
//! are built in a buffer on the stack.

use alloc::vec;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::cell::RefCell;
use core::ptr::{with_exposed_provenance_mut, NonNull};

use smoltcp::iface::{Config, Interface};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// Descriptors per queue (at most what the device offers).
const QUEUE: usize = 64;
/// One receive buffer: the 12-byte virtio-net header and a full Ethernet frame, rounded up.
const RX_BUF: usize = 2048;
/// The largest frame we send: 1500 bytes of IP and the 14-byte Ethernet header.
pub const MTU: usize = 1514;

/// The VM clock as `smoltcp` counts time.
pub fn now() -> Instant {
    Instant::from_micros((crate::control::clock_ns() / 1000) as i64)
}

/// The guest's IP interface on `dev`, configured from the command line (`ip=`, `gw=`, `mac=`;
/// the device's own MAC if none is given). Returns it with the MAC it sends from.
pub fn interface(dev: &mut NetDev, cfg: &bench_core::cmdline::Config) -> (Interface, [u8; 6]) {
    let mac = cfg.mac.unwrap_or(dev.mac());
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = crate::control::clock_ns() ^ 0x9e37_79b9_7f4a_7c15;
    let mut iface = Interface::new(config, dev, now());
    if let Some(ip) = cfg.ip {
        let [a, b, c, d] = ip.addr;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), ip.prefix));
        });
    }
    if let Some([a, b, c, d]) = cfg.gw {
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
    }
    (iface, mac)
}

/// DMA for an identity-mapped guest: heap pages, physical address = pointer.
pub struct IdentityHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned memory that stays allocated until
// `dma_dealloc`; every address handed to the device is the buffer's own address, which is its
// guest-physical address because the VMM identity-maps all guest RAM.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Ok(layout) = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) else {
            panic!("a DMA allocation of {pages} pages is too large");
        };
        // SAFETY: the layout has a nonzero size (virtio-drivers asks for at least one page).
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let Some(nn) = NonNull::new(ptr) else {
            panic!("out of memory for {pages} DMA pages");
        };
        (ptr.expose_provenance() as PhysAddr, nn)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if let Ok(layout) = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) {
            // SAFETY: `vaddr` came from `dma_alloc` with this same layout.
            unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout) };
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        match NonNull::new(with_exposed_provenance_mut(paddr as usize)) {
            Some(p) => p,
            None => panic!("MMIO at address 0"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>().expose_provenance() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

type Raw = VirtIONetRaw<IdentityHal, MmioTransport<'static>, QUEUE>;

struct Inner {
    raw: Raw,
    bufs: Vec<[u8; RX_BUF]>,
    /// The receive buffer each descriptor token is using.
    slot_of: [usize; QUEUE],
}

/// The virtio-net device as `smoltcp` sees it.
pub struct NetDev {
    inner: RefCell<Inner>,
    mac: [u8; 6],
}

#[derive(Debug)]
pub enum InitError {
    Transport,
    Driver,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            InitError::Transport => "the virtio-mmio window holds no virtio device",
            InitError::Driver => "the virtio-net device refused the driver",
        })
    }
}

impl NetDev {
    /// Drives the virtio-net device at `base` (a window of `len` bytes in the MMIO gap).
    pub fn new(base: u64, len: u64) -> Result<Self, InitError> {
        let Some(header) = NonNull::new(with_exposed_provenance_mut::<VirtIOHeader>(base as usize))
        else {
            return Err(InitError::Transport);
        };
        // SAFETY: the boot-info page lists this window as a virtio-mmio device; the VMM emulates
        // it for the life of the VM and nothing else maps it.
        let transport = unsafe { MmioTransport::new(header, len as usize) }
            .map_err(|_| InitError::Transport)?;
        let mut raw = Raw::new(transport).map_err(|_| InitError::Driver)?;
        let mac = raw.mac_address();
        let mut bufs = vec![[0u8; RX_BUF]; QUEUE];
        let mut slot_of = [0usize; QUEUE];
        for (i, buf) in bufs.iter_mut().enumerate() {
            // SAFETY: the buffers live in `Inner` as long as the queue, never move (the Vec is
            // never resized) and are read only after the device returns them.
            let token = unsafe { raw.receive_begin(buf) }.map_err(|_| InitError::Driver)?;
            slot_of[usize::from(token) % QUEUE] = i;
        }
        Ok(Self {
            inner: RefCell::new(Inner { raw, bufs, slot_of }),
            mac,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether a received frame is waiting (a read of guest memory, no exit).
    pub fn can_recv(&self) -> bool {
        self.inner.borrow().raw.poll_receive().is_some()
    }
}

pub struct RxToken {
    frame: [u8; RX_BUF],
    len: usize,
}

pub struct TxToken<'a> {
    dev: &'a RefCell<Inner>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.frame[..self.len])
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = [0u8; MTU];
        let len = len.min(MTU);
        let r = f(&mut frame[..len]);
        // A send error means the device is broken; the VMM has stopped the VM by then.
        let _ = self.dev.borrow_mut().raw.send(&frame[..len]);
        r
    }
}

impl phy::Device for NetDev {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let mut guard = self.inner.borrow_mut();
        let Inner { raw, bufs, slot_of } = &mut *guard;
        let token = raw.poll_receive()?;
        let slot = slot_of[usize::from(token) % QUEUE];
        let buf = &mut bufs[slot];
        // SAFETY: `buf` is the buffer this token was given in `receive_begin`.
        let got = unsafe { raw.receive_complete(token, buf) };
        let mut rx = RxToken {
            frame: [0u8; RX_BUF],
            len: 0,
        };
        if let Ok((hdr, len)) = got {
            let len = len.min(RX_BUF - hdr);
            rx.frame[..len].copy_from_slice(&buf[hdr..hdr + len]);
            rx.len = len;
        }
        // SAFETY: as in `new`: the buffer outlives the queue's use of it.
        if let Ok(t) = unsafe { raw.receive_begin(buf) } {
            slot_of[usize::from(t) % QUEUE] = slot;
        }
        drop(guard);
        Some((rx, TxToken { dev: &self.inner }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.inner
            .borrow()
            .raw
            .can_send()
            .then_some(TxToken { dev: &self.inner })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps
    }
}
