//! The lease and settlement rules, on one token's state in memory. The service loads a
//! token's [`LeaseBook`] in a transaction, applies one operation, and writes back what
//! changed together with the transfers the operation returns; the property tests run the
//! same code against an independent model.
//!
//! # The rules
//!
//! - A token's chain is cut into consecutive **ranges**, one per period a host held the lease:
//!   links `start + 1 ..= end`, `end` open while the host holds it. A new range starts where
//!   the last one ended, so ranges never overlap and each link belongs to at most one host.
//! - A host is paid only for links of its own open range above what that range has redeemed
//!   (`redeemed`). A closed range ends at its `redeemed`: whatever its host had not claimed
//!   by then, it forfeited, and no later host can take it either.
//! - A claim is checked by hashing between it and the range's last verified link: at most
//!   `max_distance` hashes, so no request can make the broker hash without limit
//!   (`laundromat_api::claims::stepped_claims` splits a large claim for honest hosts).
//!   A request that carries many claims (a batch) bounds their hashing together the same
//!   way: each claim's hashing is taken from the request's budget
//!   ([`LeaseBook::redeem_within`]), so a batch cannot multiply the bound.
//! - **Handover** is prepared by the holder with its final claim (checked then), and confirmed
//!   by the destination: in that one step the source is paid up to its final claim, its range
//!   closes there, and the destination's range opens there. The destination received the
//!   source's last link with the VM's payment state, but its range starts above it, so a claim
//!   for that link earns it nothing. A cancelled handover leaves the lease with the source.
//! - Redeemed links never exceed n, so credits never exceed n × price.

use token::{HostId, Link, LinkHasher, TokenId, VerifiedClaim};

/// Why an operation on a token's lease was refused. Nothing changes when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("the token's escrow has been refunded; it can no longer be leased or redeemed")]
    Refunded,
    #[error("the claim is for token {found}, not {expected}")]
    WrongToken { expected: TokenId, found: TokenId },
    #[error("link {index} is beyond the end of the chain of {length} links")]
    BeyondChainEnd { index: u64, length: u64 },
    #[error("host {host} never held this token's lease")]
    NeverHeld { host: HostId },
    #[error("host {host} does not hold this token's lease")]
    NotHolder { host: HostId },
    #[error("the lease is held by host {holder}")]
    Held { holder: HostId },
    #[error("link {index} is {distance} links from the last verified link {verified}, more than the {max} allowed; claim in steps")]
    TooFar {
        index: u64,
        verified: u64,
        distance: u64,
        max: u64,
    },
    #[error("link {index} would take {work} hashes to check, more than the {left} left of this request's hashing budget; send it in another request")]
    WorkExhausted { index: u64, work: u64, left: u64 },
    #[error("link {index} is not on the token's chain")]
    NotOnChain { index: u64 },
    #[error("no handover of this lease is prepared")]
    NoHandover,
    #[error("the prepared handover is to host {to}, not to host {host}")]
    HandoverToOther { to: HostId, host: HostId },
    #[error("a host cannot hand a lease over to itself")]
    HandoverToSelf,
    #[error("a handover to host {to} is being prepared; the lease is frozen until it is confirmed or cancelled")]
    HandoverPending { to: HostId },
    #[error("the credit for links {from} to {to} does not fit in the ledger's 63-bit amounts")]
    CreditOverflow { from: u64, to: u64 },
}

/// One host's stretch of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub host: HostId,
    pub start: u64,
    pub end: Option<u64>,
    pub redeemed: u64,
    /// The link at `redeemed`, verified: where the next claim is checked from.
    pub redeemed_link: Link,
}

/// A prepared handover: the destination and the source's final claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub to: HostId,
    pub index: u64,
    pub link: Link,
}

/// Money a rule moves from the token's escrow to a host. `(range, to_index)` is unique per
/// token, because a range's redeemed index only grows: it names the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pub host: HostId,
    pub amount: u64,
    pub range: usize,
    pub to_index: u64,
}

/// A token's lease state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseBook {
    pub token_id: TokenId,
    pub chain_length: u64,
    pub price_per_link: u64,
    pub chain_root: Link,
    pub refunded: bool,
    pub handover: Option<Pending>,
    pub ranges: Vec<Range>,
}

impl LeaseBook {
    /// The host holding the lease: the host of the open range.
    pub fn holder(&self) -> Option<HostId> {
        self.ranges
            .last()
            .filter(|range| range.end.is_none())
            .map(|range| range.host)
    }

    /// The highest link index redeemed by anyone, which is also the number of links paid
    /// out: ranges are consecutive and each closed one is fully redeemed.
    pub fn highest_redeemed(&self) -> u64 {
        self.ranges.last().map_or(0, |range| range.redeemed)
    }

    /// Links paid out: the sum over ranges of what each redeemed.
    pub fn redeemed_links(&self) -> u64 {
        self.ranges.iter().map(|r| r.redeemed - r.start).sum()
    }

    fn live(&self) -> Result<(), RuleError> {
        if self.refunded {
            return Err(RuleError::Refunded);
        }
        Ok(())
    }

    fn open_range_of(&self, host: HostId) -> Result<usize, RuleError> {
        match self.ranges.last() {
            Some(range) if range.end.is_none() && range.host == host => Ok(self.ranges.len() - 1),
            _ => Err(RuleError::NotHolder { host }),
        }
    }

    /// `host` takes the lease. Taking a lease one already holds changes nothing.
    pub fn acquire(&mut self, host: HostId) -> Result<(), RuleError> {
        self.live()?;
        if let Some(holder) = self.holder() {
            return if holder == host {
                Ok(())
            } else {
                Err(RuleError::Held { holder })
            };
        }
        let (start, link) = self
            .ranges
            .last()
            .map_or((0, self.chain_root), |r| (r.redeemed, r.redeemed_link));
        self.ranges.push(Range {
            host,
            start,
            end: None,
            redeemed: start,
            redeemed_link: link,
        });
        Ok(())
    }

    /// Checks a claimed link against `range`'s last verified link, hashing at most
    /// `max_distance` times, and at most what is left of the request's `budget` of hashes,
    /// which the hashing done is taken from.
    fn check_link(
        &self,
        range: &Range,
        index: u64,
        link: &Link,
        max_distance: u64,
        budget: &mut u64,
    ) -> Result<(), RuleError> {
        if index > self.chain_length {
            return Err(RuleError::BeyondChainEnd {
                index,
                length: self.chain_length,
            });
        }
        let verified = range.redeemed;
        let distance = index.abs_diff(verified);
        if distance > max_distance {
            return Err(RuleError::TooFar {
                index,
                verified,
                distance,
                max: max_distance,
            });
        }
        if distance > *budget {
            return Err(RuleError::WorkExhausted {
                index,
                work: distance,
                left: *budget,
            });
        }
        *budget -= distance;
        let hasher = LinkHasher::new(&self.token_id);
        let on_chain = if index >= verified {
            hasher.toward_root(index, link, distance) == range.redeemed_link
        } else {
            hasher.toward_root(verified, &range.redeemed_link, distance) == *link
        };
        if !on_chain {
            return Err(RuleError::NotOnChain { index });
        }
        Ok(())
    }

    /// Pays `range` up to `index` (whose `link` has been checked), if that is above what it
    /// redeemed.
    fn pay(&mut self, range: usize, index: u64, link: Link) -> Result<Option<Credit>, RuleError> {
        let entry = &mut self.ranges[range];
        if index <= entry.redeemed {
            return Ok(None);
        }
        let amount = (index - entry.redeemed)
            .checked_mul(self.price_per_link)
            .filter(|amount| i64::try_from(*amount).is_ok())
            .ok_or(RuleError::CreditOverflow {
                from: entry.redeemed,
                to: index,
            })?;
        entry.redeemed = index;
        entry.redeemed_link = link;
        Ok((amount > 0).then_some(Credit {
            host: entry.host,
            amount,
            range,
            to_index: index,
        }))
    }

    /// Settles a host's claim: pays the links of its open range above what it redeemed.
    /// A claim by a host whose ranges are all closed is still checked, and earns nothing.
    pub fn redeem(
        &mut self,
        claim: &VerifiedClaim,
        max_distance: u64,
    ) -> Result<Option<Credit>, RuleError> {
        // A single claim's hashing is bounded by `max_distance` alone.
        let mut unbounded = u64::MAX;
        self.redeem_within(claim, max_distance, &mut unbounded)
    }

    /// [`LeaseBook::redeem`] for one claim of a request that carries several: checking it
    /// takes its hashes from what is left of the request's `budget`, and it is refused
    /// ([`RuleError::WorkExhausted`]), before any hashing, if they do not fit.
    pub fn redeem_within(
        &mut self,
        claim: &VerifiedClaim,
        max_distance: u64,
        budget: &mut u64,
    ) -> Result<Option<Credit>, RuleError> {
        self.live()?;
        let claim = claim.claim();
        if claim.token_id != self.token_id {
            return Err(RuleError::WrongToken {
                expected: self.token_id,
                found: claim.token_id,
            });
        }
        let host = claim.host_id;
        let range = self
            .ranges
            .iter()
            .rposition(|range| range.host == host)
            .ok_or(RuleError::NeverHeld { host })?;
        self.check_link(
            &self.ranges[range],
            claim.index,
            &claim.link,
            max_distance,
            budget,
        )?;
        if self.ranges[range].end.is_some() {
            return Ok(None);
        }
        self.pay(range, claim.index, claim.link)
    }

    /// The holder prepares to hand the lease to `to`, with its final claim (checked now,
    /// paid at confirmation). Preparing again replaces the previous preparation.
    pub fn prepare_handover(
        &mut self,
        to: HostId,
        final_claim: &VerifiedClaim,
        max_distance: u64,
    ) -> Result<(), RuleError> {
        self.live()?;
        let claim = final_claim.claim();
        if claim.token_id != self.token_id {
            return Err(RuleError::WrongToken {
                expected: self.token_id,
                found: claim.token_id,
            });
        }
        let range = self.open_range_of(claim.host_id)?;
        if to == claim.host_id {
            return Err(RuleError::HandoverToSelf);
        }
        let mut unbounded = u64::MAX;
        self.check_link(
            &self.ranges[range],
            claim.index,
            &claim.link,
            max_distance,
            &mut unbounded,
        )?;
        self.handover = Some(Pending {
            to,
            index: claim.index,
            link: claim.link,
        });
        Ok(())
    }

    /// The destination confirms: the source is paid up to its final claim, its range closes
    /// there and the destination's opens there.
    pub fn confirm_handover(&mut self, host: HostId) -> Result<Option<Credit>, RuleError> {
        self.live()?;
        let pending = self.handover.ok_or(RuleError::NoHandover)?;
        if pending.to != host {
            return Err(RuleError::HandoverToOther {
                to: pending.to,
                host,
            });
        }
        let range = self.ranges.len() - 1;
        let credit = self.pay(range, pending.index, pending.link)?;
        let source = &mut self.ranges[range];
        source.end = Some(source.redeemed);
        let (start, link) = (source.redeemed, source.redeemed_link);
        self.ranges.push(Range {
            host,
            start,
            end: None,
            redeemed: start,
            redeemed_link: link,
        });
        self.handover = None;
        Ok(credit)
    }

    /// The source or the destination calls a prepared handover off.
    pub fn cancel_handover(&mut self, host: HostId) -> Result<(), RuleError> {
        let pending = self.handover.ok_or(RuleError::NoHandover)?;
        if pending.to != host && self.holder() != Some(host) {
            return Err(RuleError::NotHolder { host });
        }
        self.handover = None;
        Ok(())
    }

    /// The holder gives the lease up, after redeeming its final claim if it sends one.
    pub fn release(
        &mut self,
        host: HostId,
        final_claim: Option<&VerifiedClaim>,
        max_distance: u64,
    ) -> Result<Option<Credit>, RuleError> {
        self.live()?;
        let range = self.open_range_of(host)?;
        if let Some(pending) = self.handover {
            return Err(RuleError::HandoverPending { to: pending.to });
        }
        let credit = match final_claim {
            Some(claim) if claim.claim().host_id != host => {
                return Err(RuleError::NotHolder {
                    host: claim.claim().host_id,
                })
            }
            Some(claim) => self.redeem(claim, max_distance)?,
            None => None,
        };
        let entry = &mut self.ranges[range];
        entry.end = Some(entry.redeemed);
        Ok(credit)
    }

    /// Marks the token refunded, closing any open range where it stands. Returns the links
    /// whose escrow goes back to the tenant.
    pub fn refund(&mut self) -> Result<u64, RuleError> {
        self.live()?;
        if let Some(range) = self.ranges.last_mut() {
            range.end.get_or_insert(range.redeemed);
        }
        self.handover = None;
        self.refunded = true;
        Ok(self.chain_length - self.highest_redeemed())
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
