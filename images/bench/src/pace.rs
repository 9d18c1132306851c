//! Throttling a vCPU to a page rate, and how many pages it writes between clock reads.
//!
//! Reading the VM clock is an MMIO exit that costs microseconds, so vCPUs read it once per
//! batch of pages, never per page.

use crate::NS_PER_MS;

/// Largest batch: 4 MiB, which an unthrottled vCPU writes in about a millisecond.
pub const MAX_BATCH: u64 = 1024;
/// Throttled vCPUs aim for this many batches per second, so their writes stay smooth.
const BATCHES_PER_SEC: u64 = 50;
/// How far behind schedule a throttled vCPU may fall (a long verify sweep, say) before it stops
/// trying to catch up; past this it restarts its schedule rather than writing a burst.
pub const MAX_LAG_NS: u64 = 100 * NS_PER_MS;

/// Pages a vCPU with this rate (0: unthrottled) writes between two clock reads.
pub fn batch_pages(rate: u64) -> u64 {
    if rate == 0 {
        MAX_BATCH
    } else {
        (rate / BATCHES_PER_SEC).clamp(1, MAX_BATCH)
    }
}

/// Schedules a vCPU's writes so that it writes `rate` pages per second on average.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    rate: u64,
    base_ns: u64,
    pages: u64,
}

impl Pacer {
    /// A pacer for `rate` pages per second (0: no limit) starting at `now_ns`.
    pub fn new(rate: u64, now_ns: u64) -> Self {
        Pacer {
            rate,
            base_ns: now_ns,
            pages: 0,
        }
    }

    /// Records `pages` more pages written by `now_ns`. Returns the time before which the vCPU
    /// must not write again, if it is ahead of schedule.
    pub fn wrote(&mut self, pages: u64, now_ns: u64) -> Option<u64> {
        if self.rate == 0 {
            return None;
        }
        self.pages += pages;
        let offset = u128::from(self.pages) * 1_000_000_000 / u128::from(self.rate);
        let due = self
            .base_ns
            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX));
        if due > now_ns {
            return Some(due);
        }
        if now_ns - due > MAX_LAG_NS {
            *self = Pacer::new(self.rate, now_ns);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_take_about_a_fiftieth_of_a_second_when_throttled() {
        assert_eq!(batch_pages(0), MAX_BATCH);
        assert_eq!(batch_pages(1), 1);
        assert_eq!(batch_pages(5000), 100);
        assert_eq!(batch_pages(u64::MAX), MAX_BATCH);
    }

    #[test]
    fn unthrottled_never_waits() {
        let mut p = Pacer::new(0, 0);
        assert_eq!(p.wrote(1 << 40, 0), None);
    }

    #[test]
    fn waits_until_the_schedule_allows_the_next_batch() {
        let mut p = Pacer::new(1000, 5_000);
        // 100 pages at 1000/s are due 100 ms after the start.
        assert_eq!(p.wrote(100, 5_000), Some(5_000 + 100 * NS_PER_MS));
        // Slightly late: no wait, and the schedule keeps its base.
        assert_eq!(p.wrote(100, 5_000 + 250 * NS_PER_MS), None);
        assert_eq!(
            p.wrote(100, 5_000 + 250 * NS_PER_MS),
            Some(5_000 + 300 * NS_PER_MS)
        );
    }

    #[test]
    fn restarts_the_schedule_instead_of_bursting_after_a_stall() {
        let mut p = Pacer::new(1000, 0);
        let late = 10_000 * NS_PER_MS;
        assert_eq!(p.wrote(10, late), None);
        assert_eq!(p.wrote(10, late), Some(late + 10 * NS_PER_MS));
    }
}
