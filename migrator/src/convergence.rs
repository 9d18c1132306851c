//! When pre-copy stops: the downtime target is a ceiling, not a goal.
//!
//! After each round the engine knows what is still dirty, the link's measured bandwidth and
//! the guest's dirty rate. It switches over:
//! - at once when the rest fits a small floor (a few ms of link time): downtime cannot get
//!   meaningfully shorter;
//! - when the rest fits the target and the dirty set stopped shrinking, or the next round is
//!   not expected to shrink it meaningfully (the guest would dirty about as much as it sent);
//! - at the round limit, after 3× RAM has been sent, or at the timeout (cancel or force).
//!
//! While the rest does not fit the target the engine keeps iterating, even if the dirty set
//! stalls: it never switches over above the target on its own, only at those hard limits.
use std::time::Duration;

use serde::Serialize;

/// The floor: a remainder this quick to send ends pre-copy whatever the target.
pub const FLOOR: Duration = Duration::from_millis(5);
/// A round is worth it only if it leaves at most this share of what it started with.
pub const SHRINK: f64 = 0.8;

/// Which rule ended pre-copy (the `stop-reason` statistic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The rest fits the floor.
    Floor,
    /// The rest fits the target and the last round did not shrink the dirty set.
    Stalled,
    /// The rest fits the target and another round is not expected to shrink it.
    FitsTarget,
    /// The round limit was reached.
    MaxRounds,
    /// Three times the guest's RAM has been sent.
    MaxTransferred,
    /// The migration's time limit passed (the switchover was forced, or pre-copy cancelled).
    Timeout,
}

/// What the engine knows after reading the dirty log.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    /// Bytes dirty now.
    pub remaining: u64,
    /// Bytes dirty after the previous round, or sent in the first pass.
    pub previous: u64,
    /// Link bandwidth in bytes per second.
    pub bandwidth: f64,
    /// Bytes the guest dirties per second.
    pub dirty_rate: f64,
    /// Rounds after the first pass so far.
    pub round: u32,
    pub transferred: u64,
    pub ram: u64,
    pub timed_out: bool,
}

/// Limits from the migration request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub downtime: Duration,
    pub max_rounds: u32,
}

/// `Some(reason)` to stop pre-copy now, `None` for another round.
pub fn decide(o: &Observation, limits: &Limits) -> Option<StopReason> {
    let link_time = |bytes: u64| Duration::from_secs_f64(bytes as f64 / o.bandwidth.max(1.0));
    let rest = link_time(o.remaining);
    if rest <= FLOOR.min(limits.downtime) {
        return Some(StopReason::Floor);
    }
    if rest <= limits.downtime {
        if o.remaining as f64 > SHRINK * o.previous as f64 {
            return Some(StopReason::Stalled);
        }
        // Sending the rest takes `rest`; meanwhile the guest dirties this much again.
        let next = o.dirty_rate * rest.as_secs_f64();
        if next > SHRINK * o.remaining as f64 {
            return Some(StopReason::FitsTarget);
        }
    }
    if o.round >= limits.max_rounds {
        return Some(StopReason::MaxRounds);
    }
    if o.transferred >= o.ram.saturating_mul(3) {
        return Some(StopReason::MaxTransferred);
    }
    if o.timed_out {
        return Some(StopReason::Timeout);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn obs(remaining: u64, previous: u64, dirty_rate: f64) -> Observation {
        Observation {
            remaining,
            previous,
            bandwidth: 100.0 * MB as f64, // 100 MiB/s: 1 MiB takes 10 ms
            dirty_rate,
            round: 1,
            transferred: 10 * MB,
            ram: 1024 * MB,
            timed_out: false,
        }
    }

    fn limits(ms: u64) -> Limits {
        Limits {
            downtime: Duration::from_millis(ms),
            max_rounds: 30,
        }
    }

    #[test]
    fn a_remainder_under_the_floor_stops_at_once() {
        assert_eq!(
            decide(&obs(MB / 4, MB, 1e9), &limits(300)),
            Some(StopReason::Floor)
        );
        // A target below the floor lowers the floor.
        assert_eq!(decide(&obs(MB / 4, 4 * MB, 0.0), &limits(1)), None);
    }

    #[test]
    fn a_shrinking_set_keeps_iterating_even_when_it_fits() {
        // 10 MiB left (100 ms) fits 300 ms, but it halved and the guest dirties slowly.
        assert_eq!(
            decide(&obs(10 * MB, 20 * MB, MB as f64), &limits(300)),
            None
        );
    }

    #[test]
    fn a_fitting_set_that_stopped_shrinking_switches_over() {
        assert_eq!(
            decide(&obs(10 * MB, 11 * MB, MB as f64), &limits(300)),
            Some(StopReason::Stalled)
        );
        // Halved, but the guest would dirty as much again during the next round.
        assert_eq!(
            decide(&obs(10 * MB, 20 * MB, 100.0 * MB as f64), &limits(300)),
            Some(StopReason::FitsTarget)
        );
    }

    #[test]
    fn above_the_target_only_the_hard_limits_stop() {
        let mut o = obs(100 * MB, 100 * MB, 1e9);
        assert_eq!(decide(&o, &limits(300)), None);
        o.round = 30;
        assert_eq!(decide(&o, &limits(300)), Some(StopReason::MaxRounds));
        o.round = 3;
        o.transferred = 3 * o.ram;
        assert_eq!(decide(&o, &limits(300)), Some(StopReason::MaxTransferred));
        o.transferred = 0;
        o.timed_out = true;
        assert_eq!(decide(&o, &limits(300)), Some(StopReason::Timeout));
    }

    #[test]
    fn reasons_have_kebab_case_names() {
        assert_eq!(
            serde_json::to_value(StopReason::FitsTarget).unwrap(),
            "fits-target"
        );
    }
}
