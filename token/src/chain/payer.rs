//! The tenant's side of a chain: reveals w_1, w_2, …, w_n in order while storing only
//! ⌈log₂ n⌉ links ("pebbles"), not the chain.
//!
//! # Algorithm
//!
//! Jakobsson's fractal traversal ("Fractal hash sequence representation and traversal",
//! 2002), written here for links revealed in increasing index order. Pad the chain on the
//! root side to N = 2^k ≥ n links and number positions v = i + (N − n), so that the seed sits
//! at v = N. Pebble j (1 ≤ j ≤ k) is responsible for the positions that are odd multiples of
//! 2^j; every even position has exactly one responsible pebble, and the seed at N belongs to
//! pebble k.
//!
//! - Revealing an even position takes the pebble waiting there; revealing an odd position v
//!   hashes the pebble at v + 1 once.
//! - When pebble j is used up at v, it is given its next target v + 2^(j+1). It starts from a
//!   copy of the pebble at v + 3·2^j, a multiple of 2^(j+1) that a higher pebble already
//!   holds, and walks the 2^j steps down to its target, two hashes per revealed link. It
//!   arrives after 2^(j−1) links, well before the 2^(j+1) links until its target is needed.
//! - When a pebble's next target lies beyond the seed, it retires.
//!
//! # Cost
//!
//! - Memory: k pebbles of 56 bytes plus 120 fixed bytes; 1240 bytes for n = 2^20, as
//!   [`Payer::memory_bytes`] reports.
//! - Setup: n hashes, once, to place the pebbles (and compute the root).
//! - Per link, worst case: pebble j walks only while bit j of v is 1 and bit j−1 is 0, so two
//!   adjacent pebbles never walk at once. At most ⌈k/2⌉ pebbles walk, giving at most
//!   2·⌈k/2⌉ + 1 hashes: 21 for n = 2^20.
//! - Per link, amortized: each pebble walks 2^j steps every 2^(j+1) links, half a hash per
//!   link each, plus half a hash for the odd positions: (k + 1)/2, 10.5 for n = 2^20.

use std::fmt;
use std::mem::size_of;

use serde::{Deserialize, Serialize};

use super::{LinkHasher, MAX_CHAIN_LENGTH};
use crate::ids::{Link, TokenId};
use crate::payment::Payment;

/// Why a payer could not be built or could not pay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayerError {
    #[error("a chain needs at least one link")]
    ZeroLength,
    #[error("the chain has {length} links, more than the {MAX_CHAIN_LENGTH} allowed")]
    TooLong { length: u64 },
    #[error("all {length} links of the chain have been revealed")]
    Exhausted { length: u64 },
    #[error("asked to reveal zero links ahead")]
    ZeroLinks,
    #[error("the stored link for index {index} is missing; the payer's state is corrupt")]
    MissingPebble { index: u64 },
}

/// Why a serialized payer state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayerStateError {
    #[error("the chain length {length} is outside 1 to {MAX_CHAIN_LENGTH}")]
    Length { length: u64 },
    #[error("the next index {next} is outside 1 to {length} + 1")]
    Next { next: u64, length: u64 },
    #[error("the state has {found} pebbles, but a chain of this length needs {expected}")]
    PebbleCount { expected: usize, found: usize },
    #[error("pebble {level} is not where the traversal would have it")]
    Misplaced { level: u32 },
}

/// One stored link: w_`position`, on its way down to w_`target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pebble {
    pub target: u64,
    pub position: u64,
    pub link: Link,
}

/// The serialized form of a [`Payer`]: everything but the derived hasher. It is validated on
/// the way in, so a corrupt or hostile state cannot make the payer panic. Its pebbles are
/// links not yet revealed: keep it as secret as the seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayerState {
    pub token_id: TokenId,
    pub length: u64,
    pub root: Link,
    /// The index the next call reveals.
    pub next: u64,
    /// Pebble j at index j − 1; `None` once retired.
    pub pebbles: Vec<Option<Pebble>>,
}

/// Reveals the links of one chain in order. See the module documentation for the algorithm
/// and its cost.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "PayerState", into = "PayerState")]
pub struct Payer {
    state: PayerState,
    hasher: LinkHasher,
}

/// The padded chain: `levels` = k, `offset` = N − n.
#[derive(Clone, Copy)]
struct Layout {
    length: u64,
    levels: u32,
    offset: u64,
}

impl Layout {
    fn new(length: u64) -> Self {
        // N ≥ 2 so that the seed is always at an even position, held by a pebble.
        let span = length.next_power_of_two().max(2);
        Self {
            length,
            levels: span.trailing_zeros(),
            offset: span - length,
        }
    }

    /// The pebble responsible for index `index`, if the index is at an even position.
    fn level(&self, index: u64) -> u32 {
        (index + self.offset).trailing_zeros()
    }

    /// Pebble `level`'s target after the link at `index` has been revealed: the first odd
    /// multiple of 2^level above it, as an index, or `None` if that is beyond the seed.
    fn target_after(&self, index: u64, level: u32) -> Option<u64> {
        let step = 1u64 << level;
        let mut multiple = (index + self.offset) / step + 1;
        if multiple % 2 == 0 {
            multiple += 1;
        }
        let target = (multiple * step).checked_sub(self.offset)?;
        (target <= self.length).then_some(target)
    }
}

impl Payer {
    /// Places the pebbles for a chain from `seed`, at a cost of `length` hashes.
    pub fn new(token_id: TokenId, seed: &Link, length: u64) -> Result<Self, PayerError> {
        if length == 0 {
            return Err(PayerError::ZeroLength);
        }
        if length > MAX_CHAIN_LENGTH {
            return Err(PayerError::TooLong { length });
        }
        let layout = Layout::new(length);
        let hasher = LinkHasher::new(&token_id);
        let targets: Vec<Option<u64>> = (1..=layout.levels)
            .map(|level| layout.target_after(0, level))
            .collect();
        let mut pebbles = vec![None; targets.len()];
        let mut link = *seed;
        for index in (0..=length).rev() {
            if index < length {
                link = hasher.link(index, &link);
            }
            let Some(slot) = slot_of(layout.level(index)) else {
                continue;
            };
            if index > 0 && targets.get(slot) == Some(&Some(index)) {
                pebbles[slot] = Some(Pebble {
                    target: index,
                    position: index,
                    link,
                });
            }
        }
        let state = PayerState {
            token_id,
            length,
            root: link,
            next: 1,
            pebbles,
        };
        Ok(Self { state, hasher })
    }

    pub fn token_id(&self) -> TokenId {
        self.state.token_id
    }

    /// The chain root w_0, for the token request.
    pub fn root(&self) -> Link {
        self.state.root
    }

    pub fn length(&self) -> u64 {
        self.state.length
    }

    /// The index the next link revealed will have.
    pub fn next_index(&self) -> u64 {
        self.state.next
    }

    /// Links not yet revealed.
    pub fn remaining(&self) -> u64 {
        self.state.length + 1 - self.state.next
    }

    /// Reveals the next link: (index, w_index).
    pub fn next_link(&mut self) -> Result<(u64, Link), PayerError> {
        self.step().map(|(index, link, _hashes)| (index, link))
    }

    /// A payment for `links` more links: reveals them and returns the last, which is all a
    /// verifier needs.
    pub fn pay(&mut self, links: u64) -> Result<Payment, PayerError> {
        if links == 0 {
            return Err(PayerError::ZeroLinks);
        }
        if links > self.remaining() {
            return Err(PayerError::Exhausted {
                length: self.state.length,
            });
        }
        let mut revealed = self.next_link()?;
        for _ in 1..links {
            revealed = self.next_link()?;
        }
        Ok(Payment {
            token_id: self.state.token_id,
            index: revealed.0,
            link: revealed.1,
        })
    }

    /// Bytes this payer occupies, inline and on the heap.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.state.pebbles.capacity() * size_of::<Option<Pebble>>()
    }

    /// Reveals the next link and reports how many hashes that took.
    fn step(&mut self) -> Result<(u64, Link, u32), PayerError> {
        let state = &mut self.state;
        let index = state.next;
        if index > state.length {
            return Err(PayerError::Exhausted {
                length: state.length,
            });
        }
        let layout = Layout::new(state.length);
        let mut hashes = 0;
        let link = if (index + layout.offset) % 2 == 1 {
            hashes += 1;
            let above = arrived(&state.pebbles, layout, index + 1)?;
            self.hasher.link(index, &above)
        } else {
            let link = arrived(&state.pebbles, layout, index)?;
            let level = layout.level(index);
            let restart = match layout.target_after(index, level) {
                None => None,
                Some(target) => {
                    let start = index + 3 * (1 << level);
                    Some(Pebble {
                        target,
                        position: start,
                        link: arrived(&state.pebbles, layout, start)?,
                    })
                }
            };
            if let Some(slot) = slot_of(level).and_then(|slot| state.pebbles.get_mut(slot)) {
                *slot = restart;
            }
            link
        };
        // Index loops rather than iterator adapters: unoptimized test builds run this tens of
        // millions of times, and there every adapter call is a real call.
        let mut slot = 0;
        while slot < state.pebbles.len() {
            if let Some(pebble) = &mut state.pebbles[slot] {
                let steps = (pebble.position - pebble.target).min(2);
                let mut step = 0;
                while step < steps {
                    pebble.position -= 1;
                    pebble.link = self.hasher.link(pebble.position, &pebble.link);
                    step += 1;
                }
                hashes += steps as u32;
            }
            slot += 1;
        }
        state.next += 1;
        Ok((index, link, hashes))
    }
}

/// Where pebble `level` is stored; odd positions (level 0) have no pebble.
fn slot_of(level: u32) -> Option<usize> {
    (level as usize).checked_sub(1)
}

/// The link at `index`, which the pebble responsible for it must hold by now.
fn arrived(pebbles: &[Option<Pebble>], layout: Layout, index: u64) -> Result<Link, PayerError> {
    match slot_of(layout.level(index)).and_then(|slot| pebbles.get(slot)) {
        Some(Some(pebble)) if pebble.target == index && pebble.position == index => Ok(pebble.link),
        _ => Err(PayerError::MissingPebble { index }),
    }
}

impl TryFrom<PayerState> for Payer {
    type Error = PayerStateError;

    /// Accepts exactly the states the traversal passes through: each pebble at its current
    /// target or on its way there, no further away than the schedule allows. Then every
    /// pebble the payer later needs is in place in time.
    fn try_from(state: PayerState) -> Result<Self, PayerStateError> {
        let length = state.length;
        if length == 0 || length > MAX_CHAIN_LENGTH {
            return Err(PayerStateError::Length { length });
        }
        if state.next == 0 || state.next > length + 1 {
            return Err(PayerStateError::Next {
                next: state.next,
                length,
            });
        }
        let layout = Layout::new(length);
        if state.pebbles.len() != layout.levels as usize {
            return Err(PayerStateError::PebbleCount {
                expected: layout.levels as usize,
                found: state.pebbles.len(),
            });
        }
        let revealed = state.next - 1;
        for (level, pebble) in (1..).zip(&state.pebbles) {
            let expected = layout.target_after(revealed, level);
            let placed = match (expected, pebble) {
                (None, None) => true,
                (Some(target), Some(pebble)) => {
                    pebble.target == target
                        && pebble.position >= target
                        && pebble.position <= length
                        && pebble.position - target
                            <= allowed_distance(layout, revealed, level, target)
                }
                _ => false,
            };
            if !placed {
                return Err(PayerStateError::Misplaced { level });
            }
        }
        let hasher = LinkHasher::new(&state.token_id);
        Ok(Self { state, hasher })
    }
}

/// How far pebble `level` may still be from `target` once the link at `revealed` is out: it
/// was sent off 2^(level+1) positions before its target, and has walked two steps a link
/// since.
fn allowed_distance(layout: Layout, revealed: u64, level: u32, target: u64) -> u64 {
    let step = 1u64 << level;
    match (target + layout.offset).checked_sub(2 * step) {
        None => 0,
        Some(sent_at) => {
            let walked = 2 * (revealed + layout.offset + 1).saturating_sub(sent_at);
            step.saturating_sub(walked)
        }
    }
}

impl From<Payer> for PayerState {
    fn from(payer: Payer) -> Self {
        payer.state
    }
}

impl fmt::Debug for Payer {
    /// Leaves out the pebbles: they are secret until revealed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payer")
            .field("token_id", &self.state.token_id)
            .field("length", &self.state.length)
            .field("next", &self.state.next)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::chain::tests::naive_chain;

    const ID: TokenId = TokenId([5; 16]);
    const SEED: Link = Link([6; 32]);

    /// Reveals the whole chain, checking every link against the naive chain and the hash
    /// count against the documented worst case.
    fn reveal_all(length: u64) {
        let naive = naive_chain(&ID, &SEED, length);
        let mut payer = Payer::new(ID, &SEED, length).unwrap();
        assert_eq!(payer.root(), naive[0]);
        let levels = Layout::new(length).levels;
        let worst = 2 * levels.div_ceil(2) + 1;
        for index in 1..=length {
            let (revealed, link, hashes) = payer.step().unwrap();
            assert_eq!(
                (revealed, link),
                (index, naive[index as usize]),
                "n = {length}"
            );
            assert!(hashes <= worst, "{hashes} hashes at {index} of {length}");
        }
        assert_eq!(payer.next_link(), Err(PayerError::Exhausted { length }));
    }

    #[test]
    fn reveals_every_short_chain_exactly() {
        for length in 1..=70 {
            reveal_all(length);
        }
    }

    #[test]
    fn cost_per_link_matches_the_documentation() {
        let length = 1 << 12;
        let mut payer = Payer::new(ID, &SEED, length).unwrap();
        let hashes: Vec<u64> = (0..length)
            .map(|_| u64::from(payer.step().unwrap().2))
            .collect();
        let total: u64 = hashes.iter().sum();
        // For k = 12: (k + 1) / 2 = 6.5 hashes a link on average, 2·⌈k/2⌉ + 1 = 13 at most.
        assert!(
            total <= length * 13 / 2,
            "{total} hashes for {length} links"
        );
        assert!(hashes.iter().all(|&h| h <= 13));
    }

    #[test]
    fn rejects_impossible_lengths() {
        assert_eq!(
            Payer::new(ID, &SEED, 0).unwrap_err(),
            PayerError::ZeroLength
        );
        assert_eq!(
            Payer::new(ID, &SEED, MAX_CHAIN_LENGTH + 1).unwrap_err(),
            PayerError::TooLong {
                length: MAX_CHAIN_LENGTH + 1
            }
        );
    }

    #[test]
    fn pay_reveals_several_links_at_once() {
        let naive = naive_chain(&ID, &SEED, 10);
        let mut payer = Payer::new(ID, &SEED, 10).unwrap();
        assert_eq!(payer.pay(0), Err(PayerError::ZeroLinks));
        let payment = payer.pay(3).unwrap();
        assert_eq!(
            (payment.token_id, payment.index, payment.link),
            (ID, 3, naive[3])
        );
        assert_eq!(payer.remaining(), 7);
        assert_eq!(payer.pay(8), Err(PayerError::Exhausted { length: 10 }));
        assert_eq!(payer.pay(7).unwrap().link, SEED);
        assert_eq!(payer.remaining(), 0);
    }

    #[test]
    fn memory_stays_small_for_a_million_links() {
        // Built by hand: the bound depends only on the pebble count, and placing them for
        // real would cost 2^20 hashes.
        let state = PayerState {
            token_id: ID,
            length: 1 << 20,
            root: SEED,
            next: 1,
            pebbles: vec![None; 20],
        };
        let payer = Payer {
            state,
            hasher: LinkHasher::new(&ID),
        };
        assert!(
            payer.memory_bytes() <= 2048,
            "{} bytes",
            payer.memory_bytes()
        );
    }

    #[test]
    fn debug_output_hides_the_pebbles() {
        let payer = Payer::new(ID, &SEED, 4).unwrap();
        assert!(!format!("{payer:?}").contains(&SEED.to_string()));
    }

    fn state_after(length: u64, revealed: u64) -> PayerState {
        let mut payer = Payer::new(ID, &SEED, length).unwrap();
        for _ in 0..revealed {
            payer.next_link().unwrap();
        }
        payer.into()
    }

    #[test]
    fn refuses_inconsistent_states() {
        let good = state_after(100, 37);
        assert!(Payer::try_from(good.clone()).is_ok());

        let mut bad = good.clone();
        bad.length = 0;
        assert_eq!(
            Payer::try_from(bad).unwrap_err(),
            PayerStateError::Length { length: 0 }
        );

        let mut bad = good.clone();
        bad.next = 102;
        assert_eq!(
            Payer::try_from(bad).unwrap_err(),
            PayerStateError::Next {
                next: 102,
                length: 100
            }
        );

        let mut bad = good.clone();
        bad.pebbles.pop();
        assert_eq!(
            Payer::try_from(bad).unwrap_err(),
            PayerStateError::PebbleCount {
                expected: 7,
                found: 6
            }
        );

        for level in 0..good.pebbles.len() {
            let mut bad = good.clone();
            bad.pebbles[level] = match bad.pebbles[level] {
                Some(pebble) if level % 2 == 0 => Some(Pebble {
                    position: pebble.position + 1,
                    ..pebble
                }),
                Some(pebble) => Some(Pebble {
                    target: pebble.target + 1,
                    ..pebble
                }),
                None => Some(Pebble {
                    target: 100,
                    position: 100,
                    link: SEED,
                }),
            };
            assert_eq!(
                Payer::try_from(bad).unwrap_err(),
                PayerStateError::Misplaced {
                    level: level as u32 + 1
                }
            );
        }
    }

    #[test]
    fn a_corrupt_state_reports_a_missing_pebble_instead_of_panicking() {
        let mut payer = Payer::new(ID, &SEED, 8).unwrap();
        payer.state.pebbles[0] = None;
        assert_eq!(
            payer.next_link(),
            Err(PayerError::MissingPebble { index: 2 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// The pebbled payer yields exactly the naive chain's links, also when its state
        /// is serialized and restored part way.
        #[test]
        fn matches_the_naive_chain(length in 1u64..=1 << 16, pause in 0u64..=1 << 16) {
            let pause = pause % (length + 1);
            let naive = naive_chain(&ID, &SEED, length);
            let mut payer = Payer::new(ID, &SEED, length).unwrap();
            prop_assert_eq!(payer.root(), naive[0]);
            for index in 1..=length {
                if index == pause {
                    let json = serde_json::to_string(&payer).unwrap();
                    payer = serde_json::from_str(&json).unwrap();
                }
                prop_assert_eq!(payer.next_link(), Ok((index, naive[index as usize])));
            }
            prop_assert_eq!(payer.next_link(), Err(PayerError::Exhausted { length }));
        }

        /// Every state the payer passes through is one deserialization accepts.
        #[test]
        fn every_reached_state_is_valid(length in 1u64..=600) {
            let mut payer = Payer::new(ID, &SEED, length).unwrap();
            for _ in 0..length {
                payer.next_link().unwrap();
                let state = PayerState::from(payer.clone());
                prop_assert!(Payer::try_from(state).is_ok());
            }
        }
    }
}
