//! The device against a hand-built driver: data in both directions, dirty tracking of every
//! byte the device writes, and malformed chains from a hostile guest.
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::Bytes;

use super::*;
use crate::devices::virtio::chain::{
    self,
    tests::{mem, Driver},
};

const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const RX_OFF: u64 = 0;
const TX_OFF: u64 = 0x4000;

struct Rig {
    net: Net,
    mem: GuestMemory,
    run: Arc<RunControl>,
    /// The host's end of the "tap".
    host: UnixDatagram,
    rx: Driver,
    tx: Driver,
}

fn reg(net: &Net, r: u32, v: u32) {
    net.mmio_write(u64::from(r), &v.to_le_bytes());
}

fn setup_queue(net: &Net, index: u32, d: &Driver, off: u64) {
    use crate::devices::virtio::chain::tests::{AVAIL, DESC, USED};
    reg(net, VIRTIO_MMIO_QUEUE_SEL, index);
    reg(net, VIRTIO_MMIO_QUEUE_NUM, u32::from(d.size));
    reg(net, VIRTIO_MMIO_QUEUE_DESC_LOW, (DESC + off) as u32);
    reg(net, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (AVAIL + off) as u32);
    reg(net, VIRTIO_MMIO_QUEUE_USED_LOW, (USED + off) as u32);
    reg(net, VIRTIO_MMIO_QUEUE_READY, 1);
}

/// A device driven through its registers to DRIVER_OK, on a datagram socket pair.
fn rig() -> Rig {
    let m = mem();
    let run = Arc::new(RunControl::new(1, 0));
    run.resume();
    let (ours, host) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    // SAFETY: `into_raw_fd` hands over sole ownership of an open socket descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(ours)) };
    let tap = Tap::from_file(File::from(fd), "test");
    let net = Net::new(tap, Mac([0x52, 0x54, 0, 0, 0, 1]), m.clone(), run.clone()).unwrap();
    let (rx, tx) = (Driver::new(16, RX_OFF), Driver::new(16, TX_OFF));
    reg(&net, VIRTIO_MMIO_STATUS, 3);
    reg(&net, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    reg(&net, VIRTIO_MMIO_DRIVER_FEATURES, 1); // VERSION_1
    reg(&net, VIRTIO_MMIO_STATUS, 0xb);
    setup_queue(&net, 0, &rx, RX_OFF);
    setup_queue(&net, 1, &tx, TX_OFF);
    reg(&net, VIRTIO_MMIO_STATUS, 0xf);
    net.resume();
    net.handle(net.wake.as_raw_fd());
    Rig {
        net,
        mem: m,
        run,
        host,
        rx,
        tx,
    }
}

impl Rig {
    fn tap_ready(&self) {
        self.net.handle(self.net.tap.as_raw_fd());
    }

    fn kick(&self, q: usize) {
        let _ = self.net.kicks[q].write(1);
        self.net.handle(self.net.kicks[q].as_raw_fd());
    }

    fn dirty(&self, addr: u64) -> bool {
        chain::tests::dirty(&self.mem, addr)
    }

    fn clear_dirty(&self) {
        chain::tests::clear_dirty(&self.mem);
    }

    /// The stop reason's text, if the VM was stopped.
    fn stopped(&self) -> Option<String> {
        self.run.stop_reason().map(|r| format!("{r:?}"))
    }
}

#[test]
fn config_space_holds_the_mac_and_link_up() {
    let r = rig();
    let mut b = [0u8; 8];
    r.net.mmio_read(0x100, &mut b);
    assert_eq!(&b[..6], &[0x52, 0x54, 0, 0, 0, 1]);
    assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1);
    let mut one = [0u8; 1];
    r.net.mmio_read(0x105, &mut one);
    assert_eq!(one[0], 1);
    let mut id = [0u8; 4];
    r.net.mmio_read(u64::from(VIRTIO_MMIO_DEVICE_ID), &mut id);
    assert_eq!(u32::from_le_bytes(id), 1);
}

#[test]
fn received_frames_land_in_guest_buffers_and_every_written_page_is_dirty() {
    let mut r = rig();
    // Two buffers of one chain: the header and the frame span both.
    r.rx.set_desc(&r.mem, 0, 0x40_0000, 20, W | N, 1);
    r.rx.set_desc(&r.mem, 1, 0x41_0000, 2000, W, 0);
    r.rx.offer(&r.mem, 0);
    r.kick(RX);
    r.clear_dirty();
    let frame: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    r.host.send(&frame).unwrap();
    r.tap_ready();
    assert_eq!(r.rx.used_idx(&r.mem), 1);
    assert_eq!(r.rx.used(&r.mem, 0), (0, (HDR_LEN + 1000) as u32));
    let mut got = vec![0u8; HDR_LEN + 1000];
    r.mem
        .read_slice(&mut got[..20], GuestAddress(0x40_0000))
        .unwrap();
    r.mem
        .read_slice(&mut got[20..], GuestAddress(0x41_0000))
        .unwrap();
    assert_eq!(&got[10..12], &[1, 0], "num_buffers");
    assert_eq!(&got[HDR_LEN..], &frame[..]);
    // Everything the device wrote is in the VMM bitmap: both buffers and the used ring.
    assert!(r.dirty(0x40_0000));
    assert!(r.dirty(0x41_0000));
    assert!(r.dirty(r.rx.used_ring_addr()));
    assert!(!r.dirty(0x42_0000));
    assert!(r.stopped().is_none());
    assert_eq!(r.net.counters().rx_frames, 1);
}

#[test]
fn a_frame_waits_for_a_buffer_and_goes_in_when_the_driver_adds_one() {
    let mut r = rig();
    r.host.send(&[7u8; 60]).unwrap();
    r.tap_ready();
    assert_eq!(r.rx.used_idx(&r.mem), 0);
    r.rx.set_desc(&r.mem, 3, 0x40_0000, 2048, W, 0);
    r.rx.offer(&r.mem, 3);
    r.kick(RX);
    assert_eq!(r.rx.used(&r.mem, 0), (3, (HDR_LEN + 60) as u32));
}

#[test]
fn transmitted_chains_reach_the_tap_without_their_header() {
    let mut r = rig();
    let frame = [0xabu8; 300];
    r.mem
        .write_slice(&[0u8; HDR_LEN], GuestAddress(0x50_0000))
        .unwrap();
    r.mem.write_slice(&frame, GuestAddress(0x50_1000)).unwrap();
    r.tx.set_desc(&r.mem, 0, 0x50_0000, HDR_LEN as u32, N, 1);
    r.tx.set_desc(&r.mem, 1, 0x50_1000, 300, 0, 0);
    r.tx.offer(&r.mem, 0);
    r.clear_dirty();
    r.kick(TX);
    let mut buf = [0u8; 2000];
    let n = r.host.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &frame[..]);
    assert_eq!(r.tx.used_idx(&r.mem), 1);
    assert!(r.dirty(r.tx.used_ring_addr()));
    assert_eq!(r.net.counters().tx_frames, 1);
}

#[test]
fn a_paused_device_leaves_guest_memory_alone() {
    let mut r = rig();
    r.rx.set_desc(&r.mem, 0, 0x40_0000, 2048, W, 0);
    r.rx.offer(&r.mem, 0);
    r.net.pause();
    r.host.send(&[1u8; 100]).unwrap();
    r.tap_ready();
    r.kick(RX);
    assert_eq!(r.rx.used_idx(&r.mem), 0);
    r.net.resume();
    r.net.handle(r.net.wake.as_raw_fd());
    assert_eq!(r.rx.used_idx(&r.mem), 1);
}

/// Each malformed chain stops the VM with a device error, leaves RAM outside the guest's
/// buffers untouched and never panics.
#[test]
fn malformed_chains_stop_the_vm_with_a_device_error() {
    let ram = 16u64 << 20;
    type Build = fn(&Driver, &GuestMemory);
    let cases: [(&str, usize, Build); 6] = [
        ("tx out of range", TX, |d, m| {
            d.set_desc(m, 0, (16 << 20) - 8, 64, 0, 0)
        }),
        ("rx out of range", RX, |d, m| {
            d.set_desc(m, 0, 0xffff_ffff_ffff_f000, 4096, W, 0)
        }),
        ("tx loop", TX, |d, m| {
            d.set_desc(m, 0, 0x50_0000, 64, N, 1);
            d.set_desc(m, 1, 0x50_0000, 64, N, 0);
        }),
        ("rx loop", RX, |d, m| {
            d.set_desc(m, 0, 0x40_0000, 64, W | N, 0)
        }),
        ("tx oversized", TX, |d, m| {
            for i in 0..3 {
                d.set_desc(m, i, 0x50_0000, 40_000, if i < 2 { N } else { 0 }, i + 1);
            }
        }),
        ("rx bad next", RX, |d, m| {
            d.set_desc(m, 0, 0x40_0000, 64, W | N, 0x7fff)
        }),
    ];
    for (what, q, build) in cases {
        let mut r = rig();
        let d = if q == RX { &mut r.rx } else { &mut r.tx };
        build(d, &r.mem);
        d.offer(&r.mem, 0);
        if q == RX {
            r.host.send(&[9u8; 64]).unwrap();
        }
        r.kick(q);
        r.tap_ready();
        let why = r
            .stopped()
            .unwrap_or_else(|| panic!("{what}: the VM kept running"));
        assert!(why.contains("virtio-net device error"), "{what}: {why}");
        let mut status = [0u8; 4];
        r.net.mmio_read(u64::from(VIRTIO_MMIO_STATUS), &mut status);
        assert_ne!(u32::from_le_bytes(status) & 64, 0, "{what}: NEEDS_RESET");
        // Nothing was used and the device does nothing more.
        let d = if q == RX { &r.rx } else { &r.tx };
        assert_eq!(d.used_idx(&r.mem), 0, "{what}");
        r.kick(q);
        assert_eq!(d.used_idx(&r.mem), 0, "{what}");
        assert!(ram > 0);
    }
}

#[test]
fn state_round_trips_and_a_foreign_state_is_refused() {
    let mut r = rig();
    r.rx.set_desc(&r.mem, 0, 0x40_0000, 2048, W, 0);
    r.rx.offer(&r.mem, 0);
    r.host.send(&[1u8; 100]).unwrap();
    r.tap_ready();
    let saved = r.net.snapshot();
    assert_eq!(saved.queues[RX].next_used, 1);
    let other = rig();
    other.net.restore(&saved).unwrap();
    assert_eq!(other.net.snapshot(), saved);
    let mut bad = saved.clone();
    bad.queues.pop();
    assert!(other.net.restore(&bad).is_err());
    let mut bad = saved.clone();
    bad.driver_features |= 1 << 40;
    assert!(other.net.restore(&bad).is_err());
    let mut bad = saved;
    bad.queues[0].used_ring = 0xffff_ffff_0000;
    assert!(other.net.restore(&bad).is_err());
}

/// The paravirtual idle ends as soon as the device puts a received frame in the used ring.
#[test]
fn a_received_frame_wakes_a_vcpu_parked_in_the_idle() {
    let mut r = rig();
    r.rx.set_desc(&r.mem, 0, 0x40_0000, 2048, W, 0);
    r.rx.offer(&r.mem, 0);
    let run = r.run.clone();
    let t0 = std::time::Instant::now();
    let deadline = run.clock_ns() + 60_000_000_000;
    let idler = std::thread::spawn(move || run.idle_until(deadline));
    // Long enough for the idler to be parked (a wake before it parks is not what we test).
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !idler.is_finished(),
        "the idle ended before any device work"
    );
    r.host.send(&[5u8; 64]).unwrap();
    r.tap_ready();
    idler.join().unwrap();
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(r.rx.used_idx(&r.mem), 1);
}

/// A completed transmission wakes an idle vCPU too.
#[test]
fn a_completed_transmission_wakes_a_vcpu_parked_in_the_idle() {
    let mut r = rig();
    r.tx.set_desc(&r.mem, 0, 0x50_0000, 100, 0, 0);
    r.tx.offer(&r.mem, 0);
    let run = r.run.clone();
    let deadline = run.clock_ns() + 60_000_000_000;
    let idler = std::thread::spawn(move || run.idle_until(deadline));
    // Long enough for the idler to be parked (a wake before it parks is not what we test).
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!idler.is_finished());
    let t0 = std::time::Instant::now();
    r.kick(TX);
    idler.join().unwrap();
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(r.tx.used_idx(&r.mem), 1);
}

#[test]
fn the_first_announce_goes_out_on_the_callers_thread() {
    let (ours, host) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    // SAFETY: `into_raw_fd` hands over sole ownership of an open socket descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(ours)) };
    let tap = Tap::from_file(File::from(fd), "test");
    let mac = Mac([0x52, 0x54, 0, 0, 0, 9]);
    let run = Arc::new(RunControl::new(1, 0));
    let net = Arc::new(Net::new(tap, mac, mem(), run).unwrap());
    announce::first(&net);
    // No thread involved: the first frame went out on this one.
    host.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 128];
    let n = host
        .recv(&mut buf)
        .expect("the first announce is already sent");
    assert_eq!(&buf[..n], &announce::rarp_frame(mac));
    // The thread sends the repeats.
    announce::repeat(net);
    host.set_nonblocking(false).unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let n = host.recv(&mut buf).expect("the second round");
    assert_eq!(&buf[..n], &announce::rarp_frame(mac));
}
