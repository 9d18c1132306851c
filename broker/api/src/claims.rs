//! Claims in steps the broker accepts.
//!
//! The broker checks a claim by hashing its link down to the last link it verified for the
//! host's lease, one hash per link in between, and refuses a claim more than
//! [`MAX_CLAIM_DISTANCE`] links above it: no single request can make it hash without limit.
//! A host that holds link k far above that point can still be paid for everything: it
//! computes the links below k itself (hashing toward the root) and redeems them in order.

use token::{Claim, HostId, Link, LinkHasher, TokenId};

/// The most links between a claim and the broker's last verified link for the lease:
/// 2^16 hashes, a few milliseconds of the broker's time.
pub const MAX_CLAIM_DISTANCE: u64 = 1 << 16;

/// The claims, lowest first, that take the broker from `verified` up to `index`, each at most
/// `max_distance` above the one before, the last one for `link` at `index` itself. Empty
/// when `index` is not above `verified`. Costs `index − verified` hashes.
pub fn stepped_claims(
    token_id: TokenId,
    host_id: HostId,
    verified: u64,
    index: u64,
    link: Link,
    max_distance: u64,
) -> Vec<Claim> {
    let max_distance = max_distance.max(1);
    let hasher = LinkHasher::new(&token_id);
    let mut claims = Vec::new();
    let (mut at, mut current) = (index, link);
    while at > verified {
        claims.push(Claim {
            token_id,
            host_id,
            index: at,
            link: current,
        });
        let below = at.saturating_sub(max_distance).max(verified);
        if below == verified {
            break;
        }
        current = hasher.toward_root(at, &current, at - below);
        at = below;
    }
    claims.reverse();
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_bounded_and_on_the_chain() {
        let token_id = TokenId([1; 16]);
        let seed = Link([2; 32]);
        let hasher = LinkHasher::new(&token_id);
        let link_at = |i: u64| hasher.toward_root(100, &seed, 100 - i);
        let claims = stepped_claims(token_id, HostId([3; 16]), 5, 100, seed, 30);
        let indexes: Vec<u64> = claims.iter().map(|c| c.index).collect();
        assert_eq!(indexes, vec![10, 40, 70, 100]);
        for claim in &claims {
            assert_eq!(claim.link, link_at(claim.index));
        }
        assert!(stepped_claims(token_id, HostId([3; 16]), 100, 100, seed, 30).is_empty());
        assert_eq!(
            stepped_claims(token_id, HostId([3; 16]), 99, 100, seed, 30).len(),
            1
        );
    }
}
