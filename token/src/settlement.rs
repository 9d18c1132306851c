//! The broker's rule for paying a host for a redeemed claim.
//!
//! Buying a token escrows n × price. For each token the broker persists the highest index any
//! host has redeemed, and credits a claim only for the links above it. The credits for a
//! token therefore add up to (highest index) × price ≤ n × price, however many hosts redeem,
//! in whatever order, and however often: redeeming the same link twice, or a link below one
//! already redeemed, earns nothing. This also settles migration fairly: the source host
//! redeems the links it accepted, and the destination only earns for the links after them.

use crate::boot_token::BootToken;
use crate::chain::LinkHasher;
use crate::ids::TokenId;
use crate::redemption::VerifiedClaim;

/// Why a claim could not be settled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettlementError {
    #[error("the claim is for token {found}, not {expected}")]
    WrongToken { expected: TokenId, found: TokenId },
    #[error("the claim's link {index} is beyond the end of the chain of {length} links")]
    BeyondChainEnd { index: u64, length: u64 },
    #[error("the recorded highest index {highest} is beyond the chain of {length} links")]
    HighestBeyondChain { highest: u64, length: u64 },
    #[error("the claim's link {index} does not hash to the token's chain root")]
    NotOnChain { index: u64 },
    #[error("the credit for links {from} to {to} does not fit in 64 bits")]
    CreditOverflow { from: u64, to: u64 },
}

/// What settling a claim does to the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// To move from the token's escrow to the host, in the smallest currency unit.
    pub credit: u64,
    /// The token's highest redeemed index to persist, in the same transaction as the credit.
    pub highest_redeemed: u64,
}

/// Settles `claim` against `token`, given the highest index already redeemed for it.
///
/// The link is checked against the token's root even when it earns nothing, so that a host
/// sending forged links is caught rather than quietly paid zero. That costs `index` hashes.
pub fn settle(
    token: &BootToken,
    highest_redeemed: u64,
    claim: &VerifiedClaim,
) -> Result<Settlement, SettlementError> {
    let claim = claim.claim();
    let length = token.chain_length;
    if claim.token_id != token.token_id {
        return Err(SettlementError::WrongToken {
            expected: token.token_id,
            found: claim.token_id,
        });
    }
    if highest_redeemed > length {
        return Err(SettlementError::HighestBeyondChain {
            highest: highest_redeemed,
            length,
        });
    }
    if claim.index > length {
        return Err(SettlementError::BeyondChainEnd {
            index: claim.index,
            length,
        });
    }
    let hasher = LinkHasher::new(&token.token_id);
    if hasher.toward_root(claim.index, &claim.link, claim.index) != token.chain_root {
        return Err(SettlementError::NotOnChain { index: claim.index });
    }
    if claim.index <= highest_redeemed {
        return Ok(Settlement {
            credit: 0,
            highest_redeemed,
        });
    }
    let credit = (claim.index - highest_redeemed)
        .checked_mul(token.price_per_link)
        .ok_or(SettlementError::CreditOverflow {
            from: highest_redeemed,
            to: claim.index,
        })?;
    Ok(Settlement {
        credit,
        highest_redeemed: claim.index,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::boot_token::tests::sample_token;
    use crate::chain::tests::naive_chain;
    use crate::ids::Link;
    use crate::redemption::tests::verified;

    const LENGTH: u64 = 30;

    fn token_and_chain() -> (BootToken, Vec<Link>) {
        let mut token = sample_token();
        token.chain_length = LENGTH;
        let chain = naive_chain(&token.token_id, &Link([4; 32]), LENGTH);
        token.chain_root = chain[0];
        (token, chain)
    }

    #[test]
    fn credits_only_links_above_the_highest_redeemed() {
        let (token, chain) = token_and_chain();
        let claim = |index: u64| verified(token.token_id, 1, index, chain[index as usize]);
        let first = settle(&token, 0, &claim(10)).unwrap();
        assert_eq!(
            first,
            Settlement {
                credit: 10 * 5,
                highest_redeemed: 10
            }
        );
        let again = settle(&token, 10, &claim(10)).unwrap();
        assert_eq!(
            again,
            Settlement {
                credit: 0,
                highest_redeemed: 10
            }
        );
        assert_eq!(settle(&token, 10, &claim(4)).unwrap().credit, 0);
        assert_eq!(settle(&token, 10, &claim(0)).unwrap().credit, 0);
        assert_eq!(
            settle(&token, 10, &claim(LENGTH)).unwrap(),
            Settlement {
                credit: 20 * 5,
                highest_redeemed: LENGTH
            }
        );
    }

    #[test]
    fn refuses_each_kind_of_bad_claim() {
        let (token, chain) = token_and_chain();
        let id = token.token_id;
        assert_eq!(
            settle(&token, 0, &verified(TokenId([0; 16]), 1, 3, chain[3])),
            Err(SettlementError::WrongToken {
                expected: id,
                found: TokenId([0; 16])
            })
        );
        assert_eq!(
            settle(&token, 0, &verified(id, 1, LENGTH + 1, chain[0])),
            Err(SettlementError::BeyondChainEnd {
                index: LENGTH + 1,
                length: LENGTH
            })
        );
        assert_eq!(
            settle(&token, LENGTH + 1, &verified(id, 1, 3, chain[3])),
            Err(SettlementError::HighestBeyondChain {
                highest: LENGTH + 1,
                length: LENGTH
            })
        );
        assert_eq!(
            settle(&token, 5, &verified(id, 1, 3, chain[4])),
            Err(SettlementError::NotOnChain { index: 3 })
        );
        // Tokens that pass validation cannot overflow; one built in memory can.
        let mut greedy = token.clone();
        greedy.price_per_link = u64::MAX;
        assert_eq!(
            settle(&greedy, 0, &verified(id, 1, 3, chain[3])),
            Err(SettlementError::CreditOverflow { from: 0, to: 3 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever hosts redeem, in whatever order, the token pays out exactly the highest
        /// index redeemed times the price, and never more than the escrow.
        #[test]
        fn total_credit_never_exceeds_the_highest_index(
            claims in proptest::collection::vec((0u8..4, 0u64..=LENGTH), 1..40)
        ) {
            let (token, chain) = token_and_chain();
            let mut highest = 0;
            let mut total = 0u64;
            let mut per_host = [0u64; 4];
            for (host, index) in claims {
                let claim = verified(token.token_id, host, index, chain[index as usize]);
                let settlement = settle(&token, highest, &claim).unwrap();
                prop_assert!(settlement.highest_redeemed >= highest);
                highest = settlement.highest_redeemed;
                total += settlement.credit;
                per_host[usize::from(host)] += settlement.credit;
                prop_assert!(total <= highest * token.price_per_link);
            }
            prop_assert_eq!(total, highest * token.price_per_link);
            prop_assert_eq!(per_host.iter().sum::<u64>(), total);
            prop_assert!(total <= token.escrow().unwrap());
        }
    }
}
