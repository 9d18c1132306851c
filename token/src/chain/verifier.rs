//! The host's side of a chain: accepts links in increasing order, each checked against the
//! last one accepted.
//!
//! The verifier stores the last accepted link w_j and its index j, starting from the root w_0
//! at j = 0. Link k is accepted only if j < k ≤ n, k − j ≤ the configured maximum skip, and
//! hashing w_k toward the root k − j times gives w_j. Checking costs k − j hashes; the maximum
//! skip bounds the work a single payment can demand of the host.

use serde::{Deserialize, Serialize};

use super::{LinkHasher, MAX_CHAIN_LENGTH};
use crate::boot_token::BootToken;
use crate::ids::{Link, TokenId};
use crate::payment::Payment;

/// Why a link was refused. The verifier is unchanged after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the payment is for token {found}, not {expected}")]
    WrongToken { expected: TokenId, found: TokenId },
    #[error("link {index} is a replay: link {last} is already accepted")]
    Stale { index: u64, last: u64 },
    #[error("link {index} is beyond the end of the chain of {length} links")]
    BeyondChainEnd { index: u64, length: u64 },
    #[error("link {index} skips {skip} links past link {last}, more than the {max_skip} allowed")]
    SkipTooLarge {
        index: u64,
        last: u64,
        skip: u64,
        max_skip: u64,
    },
    #[error("link {index} does not hash to the last accepted link {last}")]
    Mismatch { index: u64, last: u64 },
}

/// Why a verifier could not be set up or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierStateError {
    #[error("the chain length {length} is outside 1 to {MAX_CHAIN_LENGTH}")]
    Length { length: u64 },
    #[error("the last accepted index {index} is beyond the chain of {length} links")]
    IndexBeyondChain { index: u64, length: u64 },
    #[error("the maximum skip is zero, so no link could ever be accepted")]
    ZeroMaxSkip,
    #[error("the payment state is for token {found}, not {expected}")]
    WrongToken { expected: TokenId, found: TokenId },
    #[error("the payment state's chain has {found} links, but the token's has {expected}")]
    WrongLength { expected: u64, found: u64 },
    #[error("the stored link {index} does not hash to the token's chain root")]
    NotOnChain { index: u64 },
}

/// The serialized form of a [`Verifier`]: the payment state that moves with a migrating VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierState {
    pub token_id: TokenId,
    pub length: u64,
    pub max_skip: u64,
    /// j, the index of the last accepted link.
    pub index: u64,
    /// w_j, the last accepted link.
    pub link: Link,
}

/// Accepts the links of one chain. Deserializing checks the state's form; [`Verifier::restore`]
/// also checks it against the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "VerifierState", into = "VerifierState")]
pub struct Verifier {
    state: VerifierState,
    hasher: LinkHasher,
}

impl Verifier {
    /// A verifier for a fresh token, starting at the root.
    pub fn new(token: &BootToken, max_skip: u64) -> Result<Self, VerifierStateError> {
        Self::try_from(VerifierState {
            token_id: token.token_id,
            length: token.chain_length,
            max_skip,
            index: 0,
            link: token.chain_root,
        })
    }

    /// A verifier resumed from state another host sent with a migrating VM (or read back from
    /// disk). Checks that the state belongs to the token and that its link is on the token's
    /// chain, which costs `state.index` hashes: the receiving host trusts the root it
    /// verified, not the sender. `max_skip` is the receiving host's own limit: the one in
    /// `state` is the sender's and is ignored, so the sender cannot decide how much hashing
    /// one payment may cost the receiver.
    pub fn restore(
        token: &BootToken,
        state: VerifierState,
        max_skip: u64,
    ) -> Result<Self, VerifierStateError> {
        let state = VerifierState { max_skip, ..state };
        if state.token_id != token.token_id {
            return Err(VerifierStateError::WrongToken {
                expected: token.token_id,
                found: state.token_id,
            });
        }
        if state.length != token.chain_length {
            return Err(VerifierStateError::WrongLength {
                expected: token.chain_length,
                found: state.length,
            });
        }
        let verifier = Self::try_from(state)?;
        let state = &verifier.state;
        if verifier
            .hasher
            .toward_root(state.index, &state.link, state.index)
            != token.chain_root
        {
            return Err(VerifierStateError::NotOnChain { index: state.index });
        }
        Ok(verifier)
    }

    pub fn token_id(&self) -> TokenId {
        self.state.token_id
    }

    pub fn length(&self) -> u64 {
        self.state.length
    }

    /// j: how many links have been paid.
    pub fn index(&self) -> u64 {
        self.state.index
    }

    /// w_j, the link a host redeems.
    pub fn link(&self) -> Link {
        self.state.link
    }

    pub fn state(&self) -> &VerifierState {
        &self.state
    }

    /// Accepts link `index`, returning how many links it newly pays for.
    pub fn accept(&mut self, index: u64, link: &Link) -> Result<u64, LinkError> {
        let VerifierState {
            length,
            max_skip,
            index: last,
            ..
        } = self.state;
        if index <= last {
            return Err(LinkError::Stale { index, last });
        }
        if index > length {
            return Err(LinkError::BeyondChainEnd { index, length });
        }
        let skip = index - last;
        if skip > max_skip {
            return Err(LinkError::SkipTooLarge {
                index,
                last,
                skip,
                max_skip,
            });
        }
        if self.hasher.toward_root(index, link, skip) != self.state.link {
            return Err(LinkError::Mismatch { index, last });
        }
        self.state.index = index;
        self.state.link = *link;
        Ok(skip)
    }

    /// Accepts a payment message, which must be for this verifier's token.
    pub fn accept_payment(&mut self, payment: &Payment) -> Result<u64, LinkError> {
        if payment.token_id != self.state.token_id {
            return Err(LinkError::WrongToken {
                expected: self.state.token_id,
                found: payment.token_id,
            });
        }
        self.accept(payment.index, &payment.link)
    }
}

impl TryFrom<VerifierState> for Verifier {
    type Error = VerifierStateError;

    fn try_from(state: VerifierState) -> Result<Self, VerifierStateError> {
        if state.length == 0 || state.length > MAX_CHAIN_LENGTH {
            return Err(VerifierStateError::Length {
                length: state.length,
            });
        }
        if state.index > state.length {
            return Err(VerifierStateError::IndexBeyondChain {
                index: state.index,
                length: state.length,
            });
        }
        if state.max_skip == 0 {
            return Err(VerifierStateError::ZeroMaxSkip);
        }
        let hasher = LinkHasher::new(&state.token_id);
        Ok(Self { state, hasher })
    }
}

impl From<Verifier> for VerifierState {
    fn from(verifier: Verifier) -> Self {
        verifier.state
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::boot_token::tests::sample_token;
    use crate::chain::tests::naive_chain;

    const SEED: Link = Link([8; 32]);
    const LENGTH: u64 = 40;

    fn token() -> BootToken {
        let mut token = sample_token();
        token.chain_length = LENGTH;
        token.chain_root = naive_chain(&token.token_id, &SEED, LENGTH)[0];
        token
    }

    fn chain() -> Vec<Link> {
        naive_chain(&token().token_id, &SEED, LENGTH)
    }

    fn verifier() -> Verifier {
        Verifier::new(&token(), 5).unwrap()
    }

    #[test]
    fn accepts_links_in_order_and_skips_within_the_limit() {
        let chain = chain();
        let mut verifier = verifier();
        assert_eq!(verifier.accept(1, &chain[1]), Ok(1));
        assert_eq!(verifier.accept(6, &chain[6]), Ok(5));
        assert_eq!((verifier.index(), verifier.link()), (6, chain[6]));
    }

    #[test]
    fn refuses_each_kind_of_bad_link_and_stays_unchanged() {
        let chain = chain();
        let mut verifier = verifier();
        verifier.accept(3, &chain[3]).unwrap();
        let before = verifier.state().clone();
        let refusals = [
            (3, chain[3], LinkError::Stale { index: 3, last: 3 }),
            (2, chain[2], LinkError::Stale { index: 2, last: 3 }),
            (
                9,
                chain[9],
                LinkError::SkipTooLarge {
                    index: 9,
                    last: 3,
                    skip: 6,
                    max_skip: 5,
                },
            ),
            (
                41,
                chain[40],
                LinkError::BeyondChainEnd {
                    index: 41,
                    length: 40,
                },
            ),
            (4, chain[5], LinkError::Mismatch { index: 4, last: 3 }),
        ];
        for (index, link, error) in refusals {
            assert_eq!(verifier.accept(index, &link), Err(error));
            assert_eq!(verifier.state(), &before);
        }
        let other = Payment {
            token_id: TokenId([0; 16]),
            index: 4,
            link: chain[4],
        };
        assert_eq!(
            verifier.accept_payment(&other),
            Err(LinkError::WrongToken {
                expected: token().token_id,
                found: other.token_id
            })
        );
        assert_eq!(verifier.state(), &before);
    }

    #[test]
    fn the_last_link_is_the_seed() {
        let mut verifier = Verifier::new(&token(), LENGTH).unwrap();
        assert_eq!(verifier.accept(LENGTH, &SEED), Ok(LENGTH));
    }

    #[test]
    fn deserialization_checks_the_form() {
        let good = verifier().state().clone();
        let json = serde_json::to_string(&verifier()).unwrap();
        assert_eq!(
            serde_json::from_str::<Verifier>(&json).unwrap().state(),
            &good
        );

        let cases = [
            (
                VerifierState {
                    index: 41,
                    ..good.clone()
                },
                VerifierStateError::IndexBeyondChain {
                    index: 41,
                    length: 40,
                },
            ),
            (
                VerifierState {
                    max_skip: 0,
                    ..good.clone()
                },
                VerifierStateError::ZeroMaxSkip,
            ),
            (
                VerifierState {
                    length: 0,
                    ..good.clone()
                },
                VerifierStateError::Length { length: 0 },
            ),
        ];
        for (state, error) in cases {
            assert_eq!(Verifier::try_from(state.clone()).unwrap_err(), error);
            let json = serde_json::to_string(&state).unwrap();
            let refused = serde_json::from_str::<Verifier>(&json).unwrap_err();
            assert!(
                refused.to_string().contains(&error.to_string()),
                "{refused}"
            );
        }
    }

    #[test]
    fn restore_checks_the_state_against_the_token() {
        let chain = chain();
        let mut verifier = verifier();
        verifier.accept(4, &chain[4]).unwrap();
        let state = verifier.state().clone();
        let restored = Verifier::restore(&token(), state.clone(), 5).unwrap();
        assert_eq!(restored.state(), &state);
        // The receiver's limit, never the sender's: a sender asking for a huge skip (or for
        // none at all) gets the receiver's own bound.
        let greedy = VerifierState {
            max_skip: u64::MAX,
            ..state.clone()
        };
        let mut restored = Verifier::restore(&token(), greedy, 3).unwrap();
        assert_eq!(restored.state().max_skip, 3);
        assert!(matches!(
            restored.accept(8, &chain[8]),
            Err(LinkError::SkipTooLarge { max_skip: 3, .. })
        ));
        assert_eq!(restored.accept(7, &chain[7]), Ok(3));
        assert_eq!(
            Verifier::restore(&token(), state.clone(), 0).unwrap_err(),
            VerifierStateError::ZeroMaxSkip
        );

        let forged = VerifierState {
            link: chain[5],
            ..state.clone()
        };
        assert_eq!(
            Verifier::restore(&token(), forged, 5).unwrap_err(),
            VerifierStateError::NotOnChain { index: 4 }
        );
        let other = VerifierState {
            token_id: TokenId([0; 16]),
            ..state.clone()
        };
        assert!(matches!(
            Verifier::restore(&token(), other, 5),
            Err(VerifierStateError::WrongToken { .. })
        ));
        let longer = VerifierState {
            length: 41,
            ..state
        };
        assert_eq!(
            Verifier::restore(&token(), longer, 5).unwrap_err(),
            VerifierStateError::WrongLength {
                expected: 40,
                found: 41
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Replays and out-of-order links are refused and change nothing; links in order
        /// are accepted.
        #[test]
        fn out_of_order_links_are_refused(order in proptest::collection::vec(1u64..=LENGTH, 1..60)) {
            let chain = chain();
            let mut verifier = Verifier::new(&token(), LENGTH).unwrap();
            for index in order {
                let before = verifier.state().clone();
                match verifier.accept(index, &chain[index as usize]) {
                    Ok(paid) => {
                        prop_assert!(index > before.index);
                        prop_assert_eq!(paid, index - before.index);
                        prop_assert_eq!(verifier.index(), index);
                    }
                    Err(error) => {
                        prop_assert!(index <= before.index);
                        prop_assert_eq!(error, LinkError::Stale { index, last: before.index });
                        prop_assert_eq!(verifier.state(), &before);
                    }
                }
            }
        }
    }
}
