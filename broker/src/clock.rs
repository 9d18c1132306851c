//! The broker's clock: unix seconds, with an offset tests can move forward.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
}

impl Clock {
    /// Unix seconds now, plus the offset.
    pub fn now(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        system.saturating_add_signed(self.offset.load(Ordering::Relaxed))
    }

    /// Moves this clock, and every clone of it, by `seconds`.
    pub fn advance(&self, seconds: i64) {
        self.offset.fetch_add(seconds, Ordering::Relaxed);
    }
}

/// Unix seconds by the system clock.
pub fn unix_now() -> u64 {
    Clock::default().now()
}
