//! `workload=blk`: the virtio-blk device, driven by `virtio-drivers`' polling driver on vCPU 0
//! (the other vCPUs finish at once). Every sector it writes carries a header (magic,
//! generation, sector number) and a body derived from them, so a read can tell where its data
//! came from. A run:
//! 1. reads sector 0: if it holds our magic, verifies every sector of that generation (what the
//!    previous run wrote and flushed, e.g. before a restart of the VM);
//! 2. writes generation + 1 over `wss` MiB (or the whole disk if smaller), flushes, reads it
//!    all back and verifies it.
//!
//! It prints `bench: blk previous gen=<g> sectors=<n> errors=<e>` and `bench: done gen=<g+1>
//! errors=<e>` and exits 0 without errors, 3 with.

use alloc::vec;
use core::ptr::{with_exposed_provenance_mut, NonNull};

use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use super::{add_errors, finish, Shared};
use crate::control;
use crate::netdev::IdentityHal;
use bench_core::{exit_code, MIB};

const SECTOR: usize = 512;
const MAGIC: u64 = u64::from_le_bytes(*b"LNDRBLK1");
/// Sectors per request.
const BATCH: usize = 64;

pub(super) type Blk = VirtIOBlk<IdentityHal, MmioTransport<'static>>;

/// The first virtio-blk device among `devices`.
fn open(devices: &[bench_abi::VirtioDevice]) -> Option<Blk> {
    for d in devices {
        let header = NonNull::new(with_exposed_provenance_mut::<VirtIOHeader>(d.base as usize))?;
        // SAFETY: the boot-info page lists this window as a virtio-mmio device; the VMM
        // emulates it for the life of the VM and nothing else maps it.
        let Ok(t) = (unsafe { MmioTransport::new(header, d.len as usize) }) else {
            continue;
        };
        if t.device_type() == DeviceType::Block {
            return VirtIOBlk::new(t).ok();
        }
    }
    None
}

fn fill(sector: u64, gen: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&gen.to_le_bytes());
    out[16..24].copy_from_slice(&sector.to_le_bytes());
    for (i, b) in out[24..].iter_mut().enumerate() {
        *b = (sector.wrapping_mul(31) ^ gen.wrapping_mul(7)).wrapping_add(i as u64) as u8;
    }
}

/// Reads `sectors` sectors and counts those that are not generation `gen`'s.
fn verify(blk: &mut Blk, sectors: u64, gen: u64) -> u64 {
    let mut buf = vec![0u8; BATCH * SECTOR];
    let mut want = [0u8; SECTOR];
    let mut errors = 0;
    let mut first = 0;
    while first < sectors {
        let n = (sectors - first).min(BATCH as u64) as usize;
        if blk
            .read_blocks(first as usize, &mut buf[..n * SECTOR])
            .is_err()
        {
            println!("bench: blk: reading sector {first} failed");
            return errors + n as u64;
        }
        for (i, got) in buf[..n * SECTOR].chunks(SECTOR).enumerate() {
            let s = first + i as u64;
            fill(s, gen, &mut want);
            if got != want {
                if errors < 8 {
                    println!("bench: blk: sector {s} does not hold generation {gen}");
                }
                errors += 1;
            }
        }
        first += n as u64;
    }
    errors
}

/// The disk workloads' start: vCPU 0 gets the driver of the first virtio-blk device, the
/// other vCPUs finish at once. A VM without one ends (`BAD_CMDLINE`), saying so as `workload`.
pub(super) fn driver(
    devices: &[bench_abi::VirtioDevice],
    shared: &Shared,
    vcpu: u32,
    workload: &str,
) -> Blk {
    if vcpu != 0 {
        finish(shared, vcpu, || 0);
    }
    let Some(blk) = open(devices) else {
        println!("bench: {workload}: no virtio-blk device");
        control::exit(exit_code::BAD_CMDLINE);
    };
    blk
}

pub fn run(devices: &[bench_abi::VirtioDevice], shared: &'static Shared, vcpu: u32) -> ! {
    let mut blk = driver(devices, shared, vcpu, "blk");
    let capacity = blk.capacity();
    let sectors = (shared.config.wss_mib * MIB / SECTOR as u64).min(capacity);
    // What the previous run left: its generation and how far it wrote.
    let mut head = [0u8; SECTOR];
    let mut previous = 0;
    if blk.read_blocks(0, &mut head).is_ok() && head[..8] == MAGIC.to_le_bytes() {
        let mut g = [0u8; 8];
        g.copy_from_slice(&head[8..16]);
        previous = u64::from_le_bytes(g);
        let errors = verify(&mut blk, sectors, previous);
        println!("bench: blk previous gen={previous} sectors={sectors} errors={errors}");
        add_errors(errors);
    }
    let gen = previous + 1;
    let mut buf = vec![0u8; BATCH * SECTOR];
    let mut first = 0;
    while first < sectors {
        let n = (sectors - first).min(BATCH as u64) as usize;
        for (i, s) in buf[..n * SECTOR].chunks_mut(SECTOR).enumerate() {
            fill(first + i as u64, gen, s);
        }
        if blk
            .write_blocks(first as usize, &buf[..n * SECTOR])
            .is_err()
        {
            println!("bench: blk: writing sector {first} failed");
            add_errors(n as u64);
        }
        first += n as u64;
    }
    if blk.flush().is_err() {
        println!("bench: blk: flush failed");
        add_errors(1);
    }
    add_errors(verify(&mut blk, sectors, gen));
    println!("bench: blk capacity={capacity} sectors={sectors}");
    finish(shared, vcpu, || gen)
}
