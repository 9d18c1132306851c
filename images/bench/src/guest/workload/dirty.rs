//! `workload=dirty`: every vCPU rewrites its share of a working set and verifies it.
//!
//! The working set (`wss` MiB) is split into one contiguous share per vCPU, allocated by vCPU 0
//! from the free regions. A vCPU alternates two phases over its share, a batch of pages at a
//! time:
//! - write: for each page, bump its generation (kept in a separate array) and rewrite the whole
//!   page in the `bench_core::page` format, numbered by its guest-physical frame number;
//! - verify: check every page against its frame number and expected generation, counting each
//!   page that is not what the guest last wrote. Errors are counted, never fatal.
//!
//! A completed write+verify cycle is a pass. vCPU 0 reports `gen` = the minimum number of passes
//! over all vCPUs, i.e. how many times the whole working set was rewritten and verified. Between
//! batches a vCPU reads the clock, reports (vCPU 0), throttles to its part of `rate`, and checks
//! the deadline; at the deadline it runs a last full verification before finishing.

use super::{add_errors, errors, finish, SetupError, Shared};
use crate::{control, heap};
use alloc::alloc::{alloc, alloc_zeroed, Layout};
use bench_abi::{MAX_VCPUS, PAGE_SIZE};
use bench_core::cmdline::Config;
use bench_core::pace::{batch_pages, Pacer};
use bench_core::page::{self, Mismatch, Page};
use bench_core::report::Reporter;
use bench_core::{split, MIB};
use core::arch::asm;
use core::ops::Range;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicU64, Ordering};

const VCPUS: usize = MAX_VCPUS as usize;
/// Integrity errors a vCPU describes on the console; the rest are only counted.
const MAX_PRINTED: u32 = 8;

// The smallest working set (1 MiB) gives every vCPU at least one page, so no share is empty.
const _: () = assert!(MIB / PAGE_SIZE >= MAX_VCPUS as u64);

/// One vCPU's part of the working set: `count` page-aligned pages and their expected
/// generations (0: not written yet).
#[derive(Clone, Copy)]
struct Share {
    pages: *mut Page,
    gens: *mut u64,
    count: usize,
}

/// The working set, one share per vCPU.
pub struct Plan {
    shares: [Share; VCPUS],
}

// SAFETY: the plan only carries pointers to memory allocated for it and never freed. After setup,
// share `i` is touched by vCPU `i` alone (`run`), so sharing the plan shares no memory between
// vCPUs.
unsafe impl Send for Plan {}
// SAFETY: as for `Send`: through a shared plan, each vCPU reaches only its own share.
unsafe impl Sync for Plan {}

impl Plan {
    /// Allocates every vCPU's share.
    pub fn new(config: &Config, vcpus: u32) -> Result<Plan, SetupError> {
        if config.rate != 0 && config.rate < u64::from(vcpus) {
            return Err(SetupError::RateBelowVcpus {
                rate: config.rate,
                vcpus,
            });
        }
        let total = config.wss_mib * (MIB / PAGE_SIZE);
        let empty = Share {
            pages: null_mut(),
            gens: null_mut(),
            count: 0,
        };
        let mut shares = [empty; VCPUS];
        for (vcpu, share) in (0..vcpus).zip(&mut shares) {
            let pages = split::share(total, vcpus, vcpu);
            let count = (pages.end - pages.start) as usize;
            *share = Share {
                pages: allocate(
                    "working set",
                    count * PAGE_SIZE as usize,
                    PAGE_SIZE as usize,
                )?
                .cast(),
                gens: allocate("generation array", count * 8, 8)?.cast(),
                count,
            };
        }
        Ok(Plan { shares })
    }
}

/// Zeroed memory for `bytes` (non-zero) bytes aligned to `align`.
fn allocate(what: &'static str, bytes: usize, align: usize) -> Result<*mut u8, SetupError> {
    let oom = || SetupError::OutOfMemory {
        what,
        bytes: bytes as u64,
        largest_free: heap::largest_free(),
    };
    let layout = Layout::from_size_align(bytes, align).map_err(|_| oom())?;
    // SAFETY: `bytes` is non-zero (no share is empty, see the assertion above).
    let ptr = unsafe {
        // Pages need no zeroing: the first write pass rewrites them whole.
        if align == PAGE_SIZE as usize {
            alloc(layout)
        } else {
            alloc_zeroed(layout)
        }
    };
    if ptr.is_null() {
        Err(oom())
    } else {
        Ok(ptr)
    }
}

/// Per-vCPU counters vCPU 0 aggregates, a cache line each so vCPUs do not slow each other down.
#[repr(align(64))]
struct Slot {
    passes: AtomicU64,
    pages: AtomicU64,
}

static SLOTS: [Slot; VCPUS] = [const {
    Slot {
        passes: AtomicU64::new(0),
        pages: AtomicU64::new(0),
    }
}; VCPUS];

/// Complete passes over the whole working set: the minimum over vCPUs.
fn min_passes(vcpus: u32) -> u64 {
    SLOTS[..vcpus as usize]
        .iter()
        .map(|s| s.passes.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0)
}

/// Pages written by all vCPUs.
fn total_pages(vcpus: u32) -> u64 {
    SLOTS[..vcpus as usize]
        .iter()
        .map(|s| s.pages.load(Ordering::Relaxed))
        .sum()
}

/// Runs vCPU `vcpu`'s part of the workload.
pub fn run(plan: &Plan, shared: &Shared, vcpu: u32) -> ! {
    let (config, vcpus) = (&shared.config, shared.vcpus);
    let mut worker = Worker {
        share: plan.shares[vcpu as usize],
        vcpu,
        printed: 0,
    };
    let count = worker.share.count;
    let slot = &SLOTS[vcpu as usize];
    let rate = match config.rate {
        0 => 0,
        total => split::share(total, vcpus, vcpu).count() as u64,
    };
    let batch = batch_pages(rate) as usize;
    let deadline = config.deadline_ns();
    let start = control::clock_ns();
    let mut pacer = Pacer::new(rate, start);
    let mut reporter = (vcpu == 0).then(|| Reporter::new(config.report_ms, start));
    let (mut next, mut writing) = (0, true);
    loop {
        let pages = next..(next + batch).min(count);
        next = pages.end;
        let mut wake = None;
        let mut now;
        if writing {
            let written = pages.len() as u64;
            worker.write(pages);
            slot.pages.fetch_add(written, Ordering::Relaxed);
            now = control::clock_ns();
            wake = pacer.wrote(written, now);
        } else {
            worker.verify(pages);
            now = control::clock_ns();
        }
        if next == count {
            if !writing {
                slot.passes.fetch_add(1, Ordering::Relaxed);
            }
            (next, writing) = (0, !writing);
        }
        // Report and check the deadline, then wait out the throttle (if ahead of schedule).
        loop {
            if let Some(progress) = reporter
                .as_mut()
                .and_then(|r| r.poll(now, min_passes(vcpus), Some(total_pages(vcpus)), errors()))
            {
                println!("bench: {progress}");
            }
            if now >= deadline {
                worker.verify(0..count);
                finish(shared, vcpu, || min_passes(vcpus));
            }
            match wake {
                Some(at) if now < at => {
                    let report_at = reporter.as_ref().map_or(u64::MAX, Reporter::next_ns);
                    control::idle_until(at.min(deadline).min(report_at));
                    now = control::clock_ns();
                }
                _ => break,
            }
        }
    }
}

/// One vCPU's writer and verifier over its share.
struct Worker {
    share: Share,
    vcpu: u32,
    printed: u32,
}

impl Worker {
    /// Rewrites `pages` (indices into the share) at their next generation.
    fn write(&mut self, pages: Range<usize>) {
        for i in pages {
            let number = self.number(i);
            // SAFETY: i < count, so both pointers are inside this vCPU's share, which no other
            // vCPU touches and to which no other reference is live.
            let (page, gen) =
                unsafe { (&mut *self.share.pages.add(i), &mut *self.share.gens.add(i)) };
            *gen += 1;
            page::fill(page, number, *gen);
        }
    }

    /// Verifies `pages` (indices into the share) and adds their errors to the VM-wide count.
    fn verify(&mut self, pages: Range<usize>) {
        // A compiler barrier: the pages must be read back from guest RAM, where a faulty
        // migration would have changed them, not from anything the compiler remembers writing.
        // SAFETY: an empty assembly statement does nothing at run time; it only tells the
        // compiler that memory may have changed.
        unsafe { asm!("", options(nostack, preserves_flags)) };
        let mut bad = 0;
        for i in pages {
            // SAFETY: as in `write`; the references last for this iteration only.
            let (page, gen) = unsafe { (&*self.share.pages.add(i), *self.share.gens.add(i)) };
            if gen == 0 {
                // Not written yet: the run ended during the first pass.
                continue;
            }
            if let Err(found) = page::verify(page, self.number(i), gen) {
                bad += 1;
                self.describe(i, gen, found);
            }
        }
        add_errors(bad);
    }

    /// The number written into page `i` of the share: its guest-physical frame number.
    fn number(&self, i: usize) -> u64 {
        self.share.pages.wrapping_add(i).addr() as u64 / PAGE_SIZE
    }

    fn describe(&mut self, i: usize, gen: u64, found: Mismatch) {
        self.printed += 1;
        if self.printed > MAX_PRINTED {
            return;
        }
        let number = self.number(i);
        println!(
            "bench: vcpu {}: integrity error in page {number:#x}: expected page {number:#x} gen {gen}, found page {:#x} gen {} with a {} checksum{}",
            self.vcpu,
            found.number,
            found.generation,
            if found.checksum_ok { "good" } else { "bad" },
            if self.printed == MAX_PRINTED { " (further errors on this vcpu are counted, not shown)" } else { "" },
        );
    }
}
