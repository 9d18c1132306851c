//! The device against a hand-built driver: reads, writes, flush and id, dirty tracking of
//! every byte the device writes, hostile requests and chains, and saved state.
use std::io::Write as _;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::chain::{
    self,
    tests::{mem, Driver, AVAIL, DESC, USED},
};

const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
/// Where requests put their header, data and status.
const HDR: u64 = 0x40_0000;
const DATA: u64 = 0x50_0000;
const STATUS: u64 = 0x60_0000;
const DISK_SECTORS: u64 = 64;

struct Rig {
    blk: Block,
    mem: GuestMemory,
    run: Arc<RunControl>,
    q: Driver,
    _file: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

fn reg(b: &Block, r: u32, v: u32) {
    b.mmio_write(u64::from(r), &v.to_le_bytes());
}

/// An image whose sector `s` is filled with the byte `s`.
fn image() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for s in 0..DISK_SECTORS {
        f.write_all(&[s as u8; SECTOR as usize]).unwrap();
    }
    f.flush().unwrap();
    f
}

fn rig_on(file: tempfile::NamedTempFile, readonly: bool) -> Rig {
    let m = mem();
    let run = Arc::new(RunControl::new(1, 0));
    run.resume();
    let path = file.path().to_owned();
    let cfg = DiskConfig {
        path: path.clone(),
        readonly,
    };
    let blk = Block::open(&cfg, m.clone(), run.clone()).unwrap();
    let q = Driver::new(16, 0);
    reg(&blk, VIRTIO_MMIO_STATUS, 3);
    reg(&blk, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    reg(&blk, VIRTIO_MMIO_DRIVER_FEATURES, 1); // VERSION_1
    reg(&blk, VIRTIO_MMIO_STATUS, 0xb);
    reg(&blk, VIRTIO_MMIO_QUEUE_SEL, 0);
    reg(&blk, VIRTIO_MMIO_QUEUE_NUM, 16);
    reg(&blk, VIRTIO_MMIO_QUEUE_DESC_LOW, DESC as u32);
    reg(&blk, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL as u32);
    reg(&blk, VIRTIO_MMIO_QUEUE_USED_LOW, USED as u32);
    reg(&blk, VIRTIO_MMIO_QUEUE_READY, 1);
    reg(&blk, VIRTIO_MMIO_STATUS, 0xf);
    blk.resume();
    blk.handle_fd(blk.wake.as_raw_fd());
    Rig {
        blk,
        mem: m,
        run,
        q,
        _file: file,
        path,
    }
}

fn rig() -> Rig {
    rig_on(image(), false)
}

impl Rig {
    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Offers header + one data buffer (`data_flags`) + status, kicks, and returns the used
    /// element (id, len) and the status byte.
    fn request(&mut self, kind: u32, sector: u64, len: u32, data_flags: u16) -> (u32, u32, u8) {
        self.header(kind, sector);
        self.q.set_desc(&self.mem, 0, HDR, 16, N, 1);
        self.q.set_desc(&self.mem, 1, DATA, len, data_flags | N, 2);
        self.q.set_desc(&self.mem, 2, STATUS, 1, W, 0);
        self.submit()
    }

    fn submit(&mut self) -> (u32, u32, u8) {
        let before = self.q.used_idx(&self.mem);
        self.q.offer(&self.mem, 0);
        let _ = self.blk.kick.write(1);
        self.blk.handle_fd(self.blk.kick.as_raw_fd());
        assert_eq!(self.q.used_idx(&self.mem), before.wrapping_add(1));
        let (id, len) = self.q.used(&self.mem, before);
        let status = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (id, len, status)
    }

    fn dirty(&self, addr: u64) -> bool {
        chain::tests::dirty(&self.mem, addr)
    }

    fn clear_dirty(&self) {
        chain::tests::clear_dirty(&self.mem);
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn config_space_holds_capacity_and_limits() {
    let r = rig();
    let mut id = [0u8; 4];
    r.blk.mmio_read(u64::from(VIRTIO_MMIO_DEVICE_ID), &mut id);
    assert_eq!(u32::from_le_bytes(id), VIRTIO_ID_BLOCK);
    let mut cap = [0u8; 8];
    r.blk.mmio_read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut seg = [0u8; 4];
    r.blk.mmio_read(0x10c, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    // Reads past the config space, even at the largest offsets, are zeros.
    let mut far = [0xffu8; 4];
    r.blk.mmio_read(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
}

#[test]
fn reads_land_in_guest_memory_and_every_written_byte_is_dirty() {
    let mut r = rig();
    r.header(VIRTIO_BLK_T_IN, 3);
    r.q.set_desc(&r.mem, 0, HDR, 16, N, 1);
    r.q.set_desc(&r.mem, 1, DATA, 2 * SECTOR as u32, W | N, 2);
    r.q.set_desc(&r.mem, 2, STATUS, 1, W, 0);
    r.clear_dirty();
    let (id, len, status) = r.submit();
    assert_eq!((id, len, status), (0, 2 * SECTOR as u32 + 1, OK));
    let mut got = vec![0u8; 2 * SECTOR as usize];
    r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got[..512].iter().all(|&b| b == 3) && got[512..].iter().all(|&b| b == 4));
    assert!(r.dirty(DATA) && r.dirty(STATUS) && r.dirty(r.q.used_ring_addr()));
    assert!(!r.dirty(HDR), "the device only reads the header");
    assert_eq!(r.blk.counters().requests, 1);
    assert_eq!(r.blk.counters().errors, 0);
}

#[test]
fn writes_reach_the_file_and_survive_a_flush_and_a_new_device() {
    let mut r = rig();
    r.mem
        .write_slice(&[0xab; 1024], GuestAddress(DATA))
        .unwrap();
    let (_, len, status) = r.request(VIRTIO_BLK_T_OUT, 10, 1024, 0);
    assert_eq!((len, status), (1, OK));
    let (_, len, status) = r.request(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
    assert_eq!((len, status), (1, OK));
    let on_disk = std::fs::read(&r.path).unwrap();
    assert!(on_disk[10 * 512..12 * 512].iter().all(|&b| b == 0xab));
    assert!(on_disk[12 * 512..13 * 512].iter().all(|&b| b == 12));
    // Not while this device lives: it holds the image's lock.
    let cfg = DiskConfig {
        path: r.path.clone(),
        readonly: true,
    };
    match Block::open(&cfg, r.mem.clone(), r.run.clone()) {
        Err(e @ BlockError::InUse { .. }) => assert_eq!(
            e.to_string(),
            format!(
                "disk image {} is in use by another VM, which holds its lock for writing",
                r.path.display()
            )
        ),
        other => panic!("{:?}", other.err()),
    }
    // A new device on the same image (a restarted VM) reads what was written.
    let file = std::mem::replace(&mut r._file, image());
    drop(r);
    let mut again = rig_on(file, false);
    let (_, _, status) = again.request(VIRTIO_BLK_T_IN, 11, 512, W);
    assert_eq!(status, OK);
    let b: u8 = again.mem.read_obj(GuestAddress(DATA + 511)).unwrap();
    assert_eq!(b, 0xab);
}

#[test]
fn get_id_returns_the_serial() {
    let mut r = rig();
    let (_, len, status) = r.request(VIRTIO_BLK_T_GET_ID, 0, 20, W);
    assert_eq!((len, status), (21, OK));
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert!(id.starts_with(b"lndr"), "{id:?}");
}

#[test]
fn hostile_requests_get_an_error_status_and_the_vm_runs_on() {
    let mut r = rig();
    let sector = SECTOR as u32;
    let cases: [(&str, u32, u64, u32, u16, u8); 8] = [
        (
            "past the end",
            VIRTIO_BLK_T_IN,
            DISK_SECTORS,
            sector,
            W,
            IOERR,
        ),
        (
            "straddling the end",
            VIRTIO_BLK_T_IN,
            DISK_SECTORS - 1,
            2 * sector,
            W,
            IOERR,
        ),
        (
            "a sector number that overflows",
            VIRTIO_BLK_T_IN,
            u64::MAX,
            sector,
            W,
            IOERR,
        ),
        (
            "a sector times 512 that overflows",
            VIRTIO_BLK_T_OUT,
            u64::MAX / 256,
            sector,
            0,
            IOERR,
        ),
        ("not whole sectors", VIRTIO_BLK_T_IN, 0, 100, W, IOERR),
        (
            "read data the device would have to read",
            VIRTIO_BLK_T_IN,
            0,
            sector,
            0,
            IOERR,
        ),
        (
            "write data in a writable buffer",
            VIRTIO_BLK_T_OUT,
            0,
            sector,
            W,
            IOERR,
        ),
        ("an unknown type", 77, 0, sector, W, UNSUPP),
    ];
    for (what, kind, sec, len, flags, want) in cases {
        let (_, used, status) = r.request(kind, sec, len, flags);
        assert_eq!(status, want, "{what}");
        assert_eq!(used, 1, "{what}: only the status is written");
    }
    // A header shorter than 16 bytes.
    r.header(VIRTIO_BLK_T_IN, 0);
    r.q.set_desc(&r.mem, 0, HDR, 8, N, 1);
    r.q.set_desc(&r.mem, 1, STATUS, 1, W, 0);
    assert_eq!(r.submit().2, IOERR, "short header");
    // No status byte at all: nothing is written, the chain comes back empty.
    r.header(VIRTIO_BLK_T_IN, 0);
    r.q.set_desc(&r.mem, 0, HDR, 16, 0, 0);
    let (_, used, status) = r.submit();
    assert_eq!((used, status), (0, 0xff));
    assert!(
        r.run.stop_reason().is_none(),
        "a bad request is not a device error"
    );
    assert_eq!(r.blk.counters().errors, 10);
    // The disk is untouched and the device still serves good requests.
    let (_, _, status) = r.request(VIRTIO_BLK_T_IN, 1, sector, W);
    assert_eq!(status, OK);
}

#[test]
fn a_read_only_disk_refuses_writes_and_says_so() {
    let mut r = rig_on(image(), true);
    let mut f = [0u8; 4];
    r.blk
        .mmio_read(u64::from(VIRTIO_MMIO_DEVICE_FEATURES), &mut f);
    assert_ne!(u32::from_le_bytes(f) & (1 << VIRTIO_BLK_F_RO), 0);
    r.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.request(VIRTIO_BLK_T_OUT, 0, 512, 0).2, IOERR);
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, 0, 0).2, OK);
    assert!(std::fs::read(&r.path).unwrap()[..512]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn a_malformed_chain_is_a_device_error_that_stops_the_vm() {
    let mut r = rig();
    let ram = 16u64 << 20;
    r.q.set_desc(&r.mem, 0, HDR, 16, N, 1);
    r.q.set_desc(&r.mem, 1, ram - 8, 512, W | N, 2);
    r.q.set_desc(&r.mem, 2, STATUS, 1, W, 0);
    r.q.offer(&r.mem, 0);
    r.blk.handle_fd(r.blk.kick.as_raw_fd());
    let reason = format!("{:?}", r.run.stop_reason());
    assert!(reason.contains("virtio-blk device error"), "{reason}");
    assert_eq!(r.q.used_idx(&r.mem), 0, "nothing used");
    let mut status = [0u8; 4];
    r.blk.mmio_read(u64::from(VIRTIO_MMIO_STATUS), &mut status);
    assert_ne!(status[0] & 0x40, 0, "NEEDS_RESET");
}

#[test]
fn state_round_trips_and_a_different_disk_is_refused() {
    let mut r = rig();
    r.request(VIRTIO_BLK_T_IN, 0, 512, W);
    let saved = r.blk.snapshot();
    assert_eq!(saved.queues[0].next_used, 1);
    let other = rig_on(image(), false);
    other.blk.restore(&saved).unwrap();
    assert_eq!(other.blk.snapshot(), saved);

    let mut small = tempfile::NamedTempFile::new().unwrap();
    small.write_all(&[0; 1024]).unwrap();
    let small = rig_on(small, false);
    let err = small.blk.restore(&saved).unwrap_err().to_string();
    assert!(err.contains("64 sectors"), "{err}");
    let ro = rig_on(image(), true);
    assert!(ro.blk.restore(&saved).is_err());
    let mut bad = saved.clone();
    bad.queues[0].desc_table = 1 << 40;
    assert!(other.blk.restore(&bad).is_err());
    assert_eq!(
        other.blk.snapshot(),
        saved,
        "a refused state changes nothing"
    );
}

#[test]
fn an_empty_or_missing_image_is_refused() {
    let m = mem();
    let run = Arc::new(RunControl::new(1, 0));
    let empty = tempfile::NamedTempFile::new().unwrap();
    let cfg = DiskConfig {
        path: empty.path().into(),
        readonly: false,
    };
    let e = Block::open(&cfg, m.clone(), run.clone()).err().unwrap();
    assert!(matches!(e, BlockError::Empty { .. }));
    let cfg = DiskConfig {
        path: "/nonexistent/disk.img".into(),
        readonly: true,
    };
    let e = Block::open(&cfg, m, run).err().unwrap();
    assert!(matches!(e, BlockError::Open { .. }));
}
