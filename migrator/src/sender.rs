//! The source's memory sending: reading guest RAM by dirty bitmap, skipping what the
//! destination already has, re-arming KVM's dirty log chunk by chunk, and spreading the pages
//! over the connections. [`crate::source`] decides which pass to send when.
use std::io::BufWriter;
use std::time::Instant;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::dirty::DirtyBitmap;
use crate::guest_ram;
use crate::lanes::ExtraLanes;
use crate::source::{ms, vm_err, SourceError};
use crate::stats::{Progress, Stats, Status};
use crate::transport::SecureStream;
use crate::wire::{self, Message, Tag, MAX_PAGES_PER_FRAME, PAGE_SIZE};
use crate::{vmm_bitmap, MigratableVm};

/// Manual dirty-log mode clears KVM's log this many pages (a multiple of 64) at a time.
const CLEAR_CHUNK: u64 = 4096;

fn is_zero(page: &[u8]) -> bool {
    // Word-wise compare; the compiler vectorises this.
    page.chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
}

/// Which pass over guest memory a send belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Everything, once: untouched and zero pages are skipped (the destination starts zeroed).
    First,
    /// A pre-copy round: the pages dirtied since the last one. The guest runs on, so KVM's
    /// log is cleared right before each chunk is read.
    Again,
    /// The last pages, with the guest paused: nothing can dirty them again and no round
    /// follows, so the log is left as it is (clearing it would only re-protect pages that no
    /// round will look at; a failed migration turns logging off anyway).
    Final,
}

/// Memory sending for one connection.
pub(crate) struct Sender<'a, V: MigratableVm> {
    pub vm: &'a V,
    pub out: BufWriter<SecureStream>,
    /// Memory lanes beyond `out` (see [`crate::lanes`]).
    pub extra: ExtraLanes,
    pub staging: Vec<u8>,
    pub stats: Stats,
    pub started: Instant,
    /// Bytes per second, measured on the last round that moved enough data to say.
    pub bandwidth: f64,
    /// KVM's log stays set until cleared: clear each chunk right before sending it.
    pub manual_log: bool,
}

impl<V: MigratableVm> Sender<'_, V> {
    /// Sends the pages of `bitmap` in region `base`. In the first pass zero pages are skipped
    /// (the destination's memory starts zeroed); later they go as zero runs, since they held
    /// data before. Returns `(pages with data, bytes on the wire)`.
    fn send_bitmap(
        &mut self,
        index: usize,
        base: u64,
        bitmap: &DirtyBitmap,
        pass: Pass,
    ) -> Result<(u64, u64), SourceError> {
        let first_pass = pass == Pass::First;
        let mut pages_sent = 0;
        let mut bytes = 0;
        let page = PAGE_SIZE as usize;
        let mut cleared = 0;
        let file_data = match first_pass {
            true => guest_ram::FileData::of_region(self.vm.memory(), base),
            false => None,
        };
        for (first, count) in bitmap.runs(MAX_PAGES_PER_FRAME) {
            if self.manual_log && pass != Pass::Final {
                cleared = self.clear_log(index, bitmap, cleared, (first, first + count))?;
            }
            let len = count as usize * page;
            let gpa = base + first * PAGE_SIZE;
            // In the first pass, pages the guest never touched are zero: skip reading them.
            let untouched = match first_pass {
                true => {
                    guest_ram::untouched(self.vm.memory(), gpa, count as usize, file_data.as_ref())
                }
                false => None,
            };
            if untouched.as_ref().is_some_and(|u| u.iter().all(|&z| z)) {
                self.stats.ram.duplicate += count;
                continue;
            }
            guest_ram::read(self.vm.memory(), gpa, &mut self.staging[..len])?;
            let staging = &self.staging;
            let is_zero_page = |k: usize| {
                untouched.as_ref().is_some_and(|u| u[k])
                    || is_zero(&staging[k * page..(k + 1) * page])
            };
            // Split the run into stretches of data pages and of zero pages.
            let mut i = 0;
            while i < count as usize {
                let zero = is_zero_page(i);
                let mut j = i + 1;
                while j < count as usize && is_zero_page(j) == zero {
                    j += 1;
                }
                let n = (j - i) as u64;
                let at = gpa + i as u64 * PAGE_SIZE;
                if zero {
                    self.stats.ram.duplicate += n;
                    if !first_pass {
                        bytes += self.extra.zero(&mut self.out, at, n)?;
                    }
                } else {
                    let data = &self.staging[i * page..j * page];
                    bytes += self.extra.pages(&mut self.out, at, data)?;
                    pages_sent += n;
                }
                i = j;
            }
        }
        self.stats.ram.normal += pages_sent;
        self.stats.ram.normal_bytes += pages_sent * PAGE_SIZE;
        self.stats.ram.transferred += bytes;
        Ok((pages_sent, bytes))
    }

    /// In manual dirty-log mode: clears KVM's log for the pages of `bitmap` in `[first, end)`
    /// not cleared yet (all below `cleared` are), a chunk at a time, right before they are
    /// read for sending: a write after this is logged for the next round. Returns how far the
    /// log is now cleared.
    fn clear_log(
        &self,
        index: usize,
        bitmap: &DirtyBitmap,
        cleared: u64,
        (first, end): (u64, u64),
    ) -> Result<u64, SourceError> {
        // Chunks start on a 64-page boundary, as KVM requires.
        let mut from = cleared.max(first & !63);
        while from < end {
            let to = (from + CLEAR_CHUNK).min(bitmap.pages());
            let words = &bitmap.words()[(from / 64) as usize..to.div_ceil(64) as usize];
            self.vm
                .clear_dirty_log(index, from, to - from, words)
                .map_err(vm_err)?;
            from = to;
        }
        Ok(from.max(cleared))
    }

    /// Reads the merged dirty log of every region (clearing KVM's, unless it is manual).
    pub fn dirty_maps(&self) -> Result<Vec<(u64, DirtyBitmap)>, SourceError> {
        let mut maps = Vec::new();
        for (i, region) in self.vm.memory().iter().enumerate() {
            let pages = region.len() / PAGE_SIZE;
            let mut map = DirtyBitmap::new(pages);
            map.merge_words(&self.vm.dirty_log(i).map_err(vm_err)?);
            map.take_vmm_bitmap(vmm_bitmap(region));
            maps.push((region.start_addr().0, map));
        }
        Ok(maps)
    }

    pub fn send_maps(
        &mut self,
        maps: &[(u64, DirtyBitmap)],
        pass: Pass,
    ) -> Result<(u64, u64), SourceError> {
        let (mut pages, mut bytes) = (0, 0);
        for (index, (base, map)) in maps.iter().enumerate() {
            let (p, b) = self.send_bitmap(index, *base, map, pass)?;
            pages += p;
            bytes += b;
        }
        Ok((pages, bytes))
    }

    /// Waits until the destination has applied everything sent so far, on every lane.
    /// Pre-copy ends with this, so that what the socket buffers and the receiver still hold
    /// is applied while the guest runs, not counted as downtime: a backlog of a few MiB per
    /// lane cost 10-80 ms of downtime on a loaded 2-core host.
    pub fn sync(&mut self) -> Result<(), SourceError> {
        let lanes = self.extra.start_sync()?;
        wire::send(&mut self.out, &Message::Sync)?;
        wire::expect(self.out.get_mut(), Tag::Synced, "synced")?;
        lanes.wait()?;
        Ok(())
    }

    pub fn progress(&self, round: u32, remaining: u64, dirty_rate: u64) -> Progress {
        Progress {
            status: Status::Active,
            round,
            elapsed_ms: ms(self.started.elapsed()),
            transferred: self.stats.ram.transferred,
            remaining,
            dirty_pages_rate: dirty_rate,
            mbps: self.bandwidth * 8.0 / 1e6,
            expected_downtime_ms: remaining as f64 / self.bandwidth.max(1.0) * 1e3,
            cpu_throttle_percentage: self.stats.cpu_throttle_percentage,
            stop_reason: None,
        }
    }
}
