//! `workload=blk-read`: reads the first `wss` MiB of the virtio-blk disk (all of it if smaller)
//! sequentially, pass after pass, on vCPU 0 (the other vCPUs finish at once), and prints each
//! pass's FNV-1a checksum:
//!
//! `bench: blk-read pass=<p> bytes=<n> fnv=<16 hex digits>`
//!
//! A test that made the image knows the checksum, so a pass that spans a live migration shows
//! whether every block the device wrote into guest memory, and every completion, reached the
//! destination. A failed read prints `bench: blk-read: reading sector <s> failed` and ends the
//! run with exit code 3. With `exit-after-ms`, the run ends after the first pass that finishes
//! past that time (`bench: done gen=<passes>`).

use alloc::vec;

use super::blk::driver;
use super::{add_errors, finish, Shared};
use crate::control;
use bench_core::{fnv, MIB};

const SECTOR: usize = 512;
/// Bytes per request: large enough that the device, not the exits, sets the pace.
const REQUEST: usize = 128 << 10;

pub fn run(devices: &[bench_abi::VirtioDevice], shared: &'static Shared, vcpu: u32) -> ! {
    let mut blk = driver(devices, shared, vcpu, "blk-read");
    let sectors = (shared.config.wss_mib * MIB / SECTOR as u64).min(blk.capacity());
    let deadline = shared.config.deadline_ns();
    let mut buf = vec![0u8; REQUEST];
    let mut passes = 0;
    loop {
        let mut hash = fnv::OFFSET_BASIS;
        let mut first = 0;
        while first < sectors {
            let n = (sectors - first).min((REQUEST / SECTOR) as u64) as usize;
            let data = &mut buf[..n * SECTOR];
            if blk.read_blocks(first as usize, data).is_err() {
                println!("bench: blk-read: reading sector {first} failed");
                add_errors(1);
                finish(shared, vcpu, || passes);
            }
            hash = fnv::update(hash, data);
            first += n as u64;
        }
        passes += 1;
        println!(
            "bench: blk-read pass={passes} bytes={} fnv={hash:016x}",
            sectors * SECTOR as u64
        );
        if control::clock_ns() >= deadline {
            finish(shared, vcpu, || passes);
        }
    }
}
