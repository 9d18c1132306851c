//! The progress lines vCPU 0 prints, and when it prints them.
//!
//! Formats (after the `bench: ` prefix the guest adds):
//! - progress: `t=<ms>ms gen=<n> pages=<n> rate=<n>/s errors=<n>` (`pages` and `rate` only for
//!   workloads that write pages);
//! - end of run: `done gen=<n> errors=<n>`.

use crate::NS_PER_MS;
use core::fmt;

/// One progress line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub t_ms: u64,
    pub gen: u64,
    /// Pages written so far and pages per second since the previous line.
    pub pages: Option<(u64, u64)>,
    pub errors: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={}ms gen={}", self.t_ms, self.gen)?;
        if let Some((pages, rate)) = self.pages {
            write!(f, " pages={pages} rate={rate}/s")?;
        }
        write!(f, " errors={}", self.errors)
    }
}

/// The final line of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub gen: u64,
    pub errors: u64,
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "done gen={} errors={}", self.gen, self.errors)
    }
}

/// Decides when progress is due and computes the rate since the last line.
#[derive(Clone, Copy, Debug)]
pub struct Reporter {
    interval_ns: u64,
    next_ns: u64,
    last_ns: u64,
    last_pages: u64,
}

impl Reporter {
    /// A reporter printing every `interval_ms` (at least 1), starting from `now_ns`.
    pub fn new(interval_ms: u64, now_ns: u64) -> Self {
        let interval_ns = interval_ms.max(1).saturating_mul(NS_PER_MS);
        Reporter {
            interval_ns,
            next_ns: now_ns.saturating_add(interval_ns),
            last_ns: now_ns,
            last_pages: 0,
        }
    }

    /// When the next line is due.
    pub fn next_ns(&self) -> u64 {
        self.next_ns
    }

    /// The progress line due at `now_ns`, if one is, given the totals so far.
    pub fn poll(
        &mut self,
        now_ns: u64,
        gen: u64,
        pages: Option<u64>,
        errors: u64,
    ) -> Option<Progress> {
        if now_ns < self.next_ns {
            return None;
        }
        let pages = pages.map(|total| {
            let elapsed = u128::from(now_ns.saturating_sub(self.last_ns)).max(1);
            let rate = u128::from(total.saturating_sub(self.last_pages)) * 1_000_000_000 / elapsed;
            self.last_pages = total;
            (total, u64::try_from(rate).unwrap_or(u64::MAX))
        });
        self.last_ns = now_ns;
        // Keep to the original grid, but never schedule a line in the past (after a long stall).
        self.next_ns = self.next_ns.saturating_add(self.interval_ns);
        if self.next_ns <= now_ns {
            self.next_ns = now_ns.saturating_add(self.interval_ns);
        }
        Some(Progress {
            t_ms: now_ns / NS_PER_MS,
            gen,
            pages,
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_format() {
        let p = Progress {
            t_ms: 1500,
            gen: 42,
            pages: Some((123_456, 81_234)),
            errors: 0,
        };
        assert_eq!(
            p.to_string(),
            "t=1500ms gen=42 pages=123456 rate=81234/s errors=0"
        );
        let idle = Progress {
            t_ms: 2000,
            gen: 2,
            pages: None,
            errors: 0,
        };
        assert_eq!(idle.to_string(), "t=2000ms gen=2 errors=0");
        assert_eq!(
            Done { gen: 7, errors: 1 }.to_string(),
            "done gen=7 errors=1"
        );
    }

    #[test]
    fn reports_on_the_interval_with_the_rate_since_the_last_line() {
        let ms = NS_PER_MS;
        let mut r = Reporter::new(1000, 0);
        assert_eq!(r.poll(999 * ms, 0, Some(10), 0), None);
        let p = r.poll(1000 * ms, 1, Some(5000), 0).unwrap();
        assert_eq!((p.t_ms, p.gen, p.pages), (1000, 1, Some((5000, 5000))));
        assert_eq!(r.next_ns(), 2000 * ms);
        // A late poll still reports, and the next line stays on the grid.
        let p = r.poll(2500 * ms, 2, Some(8000), 1).unwrap();
        assert_eq!((p.pages, p.errors), (Some((8000, 2000)), 1));
        assert_eq!(r.next_ns(), 3000 * ms);
        // After a stall longer than an interval, the next line is an interval from now.
        assert!(r.poll(10_000 * ms, 3, None, 0).is_some());
        assert_eq!(r.next_ns(), 11_000 * ms);
    }
}
