//! Until when a VM is paid, and when its host may reclaim it.
//!
//! # Model
//!
//! - Each accepted link buys one `link_period_ms` of run time. The price does not enter:
//!   it fixes what the host earns per link, not what a link buys.
//! - Paid time runs from `admitted_at_ms`, the moment a host first admitted the VM, so
//!   with j links accepted the VM is paid until admitted_at + j × period. The tenant pays
//!   ahead; a VM with no link accepted is paid until its admission, and lives only on the
//!   grace period until its first payment arrives.
//! - `admitted_at_ms` moves with the VM on migration, with the verifier state, so migrating
//!   neither grants nor loses paid time.
//! - Paid time ends at the token's expiry at the latest: after expiry the broker returns
//!   unredeemed escrow to the tenant, so no link can earn the host anything.
//! - The host reclaims the VM (stops it, frees everything) at paid-until + grace. The grace
//!   period absorbs payment latency and clock skew; a late payment within it revives the VM.
//!
//! All instants are unix milliseconds. The arithmetic saturates: a huge period or link count
//! means "paid for the foreseeable future", never a wrapped-around instant in the past.

use crate::boot_token::BootToken;

/// admitted_at + accepted_links × period, saturating.
pub fn paid_until(admitted_at_ms: u64, link_period_ms: u64, accepted_links: u64) -> u64 {
    admitted_at_ms.saturating_add(link_period_ms.saturating_mul(accepted_links))
}

/// When the host reclaims a VM paid until `paid_until_ms`, saturating.
pub fn reclaim_at(paid_until_ms: u64, grace_ms: u64) -> u64 {
    paid_until_ms.saturating_add(grace_ms)
}

/// The paid-time meter of one VM: what the host's garbage collector consults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaidTime {
    pub admitted_at_ms: u64,
    pub link_period_ms: u64,
    pub expiry_ms: u64,
    pub grace_ms: u64,
}

impl PaidTime {
    /// The meter for a VM admitted under `token` at `admitted_at_ms`.
    pub fn for_token(token: &BootToken, admitted_at_ms: u64, grace_ms: u64) -> Self {
        Self {
            admitted_at_ms,
            link_period_ms: token.link_period_ms,
            expiry_ms: token.expiry.saturating_mul(1000),
            grace_ms,
        }
    }

    /// Until when `accepted_links` links pay, capped at the token's expiry.
    pub fn paid_until(&self, accepted_links: u64) -> u64 {
        paid_until(self.admitted_at_ms, self.link_period_ms, accepted_links).min(self.expiry_ms)
    }

    /// When the VM is to be reclaimed if no further link arrives.
    pub fn reclaim_at(&self, accepted_links: u64) -> u64 {
        reclaim_at(self.paid_until(accepted_links), self.grace_ms)
    }

    /// Whether the VM is due for reclamation at `now_ms`.
    pub fn is_reclaimable(&self, now_ms: u64, accepted_links: u64) -> bool {
        now_ms >= self.reclaim_at(accepted_links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_token::tests::sample_token;

    #[test]
    fn each_link_buys_one_period_from_admission() {
        assert_eq!(paid_until(1_000, 10_000, 0), 1_000);
        assert_eq!(paid_until(1_000, 10_000, 3), 31_000);
        assert_eq!(reclaim_at(31_000, 5_000), 36_000);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        assert_eq!(paid_until(u64::MAX - 1, 10, 10), u64::MAX);
        assert_eq!(paid_until(0, u64::MAX, 2), u64::MAX);
        assert_eq!(reclaim_at(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn the_meter_caps_at_expiry_and_reclaims_after_grace() {
        let token = sample_token();
        let admitted = token.not_before * 1000;
        let meter = PaidTime::for_token(&token, admitted, 30_000);
        assert_eq!(meter.paid_until(2), admitted + 20_000);
        assert_eq!(meter.reclaim_at(2), admitted + 50_000);
        assert!(!meter.is_reclaimable(admitted + 49_999, 2));
        assert!(meter.is_reclaimable(admitted + 50_000, 2));
        assert_eq!(meter.paid_until(1_000_000), token.expiry * 1000);
    }
}
