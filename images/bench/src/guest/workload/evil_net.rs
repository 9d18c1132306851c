//! `workload=evil-net`: a hostile virtio-net driver. It sets the device up by hand, then offers
//! one malformed transmit chain and kicks: `evil=1` a buffer outside guest RAM, `evil=2` a
//! descriptor loop, `evil=3` a chain of more bytes than any frame. The VMM must stop the VM
//! with a device error; if it does not within a second, the guest exits with code 5.

use core::ptr::{with_exposed_provenance_mut, write_volatile};

use super::Shared;
use crate::control;
use bench_core::NS_PER_MS;

/// Exit code when the device accepted the bad chain.
const ACCEPTED: u8 = 5;
const SIZE: u16 = 8;

/// The queue's memory: descriptor table, available ring, used ring, page-aligned.
#[repr(C, align(4096))]
struct Ring {
    desc: [[u64; 2]; SIZE as usize],
    avail: [u16; 3 + SIZE as usize],
    _pad: [u8; 4096 - 16 * SIZE as usize - 2 * (3 + SIZE as usize)],
    used: [u32; 2 + 2 * SIZE as usize],
}

static mut RING: Ring = Ring {
    desc: [[0; 2]; SIZE as usize],
    avail: [0; 3 + SIZE as usize],
    _pad: [0; 4096 - 16 * SIZE as usize - 2 * (3 + SIZE as usize)],
    used: [0; 2 + 2 * SIZE as usize],
};

fn reg(base: u64, off: u64, v: u32) {
    // SAFETY: `base` is a virtio-mmio window from the boot-info page, emulated by the VMM.
    unsafe { write_volatile(with_exposed_provenance_mut::<u32>((base + off) as usize), v) }
}

/// Descriptor `i`: address, length, flags, next.
fn desc(i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let second = u64::from(len) | u64::from(flags) << 32 | u64::from(next) << 48;
    // SAFETY: only vCPU 0 runs this workload; the ring is ours until the device reads it.
    unsafe { RING.desc[i] = [addr, second] };
}

pub fn run(base: u64, shared: &Shared, vcpu: u32) -> ! {
    if vcpu != 0 {
        loop {
            control::idle_until(u64::MAX);
        }
    }
    const NEXT: u16 = 1;
    let data = 0x20_0000u64;
    match shared.config.evil {
        1 => desc(0, 0xffff_ffff_0000, 4096, 0, 0),
        2 => {
            desc(0, data, 64, NEXT, 1);
            desc(1, data, 64, NEXT, 0);
        }
        _ => {
            for i in 0..3u16 {
                let flags = if i < 2 { NEXT } else { 0 };
                desc(usize::from(i), data, 40_000, flags, i + 1);
            }
        }
    }
    // SAFETY: as in `desc`.
    let (d, a, u) = unsafe {
        RING.avail[2] = 0; // ring[0] = head 0
        RING.avail[1] = 1; // idx
        (
            core::ptr::addr_of!(RING.desc) as u64,
            core::ptr::addr_of!(RING.avail) as u64,
            core::ptr::addr_of!(RING.used) as u64,
        )
    };
    reg(base, 0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
    reg(base, 0x24, 1);
    reg(base, 0x20, 1); // VERSION_1
    reg(base, 0x70, 1 | 2 | 8); // FEATURES_OK
    reg(base, 0x30, 1); // the transmit queue
    reg(base, 0x38, u32::from(SIZE));
    reg(base, 0x80, d as u32);
    reg(base, 0x84, (d >> 32) as u32);
    reg(base, 0x90, a as u32);
    reg(base, 0x94, (a >> 32) as u32);
    reg(base, 0xa0, u as u32);
    reg(base, 0xa4, (u >> 32) as u32);
    reg(base, 0x44, 1);
    reg(base, 0x70, 1 | 2 | 8 | 4); // DRIVER_OK
    println!(
        "bench: evil-net: offering malformed chain {}",
        shared.config.evil
    );
    reg(base, 0x50, 1); // kick
    let until = control::clock_ns() + 1000 * NS_PER_MS;
    while control::clock_ns() < until {
        control::idle_until(until);
    }
    println!("bench: evil-net: the device accepted the chain");
    control::exit(ACCEPTED)
}
