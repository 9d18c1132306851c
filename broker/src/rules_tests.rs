use proptest::prelude::*;
use token::{chain_root, Claim, SigningKey};

use super::*;

const LENGTH: u64 = 40;
const PRICE: u64 = 3;
const SEED: Link = Link([9; 32]);

fn token_id() -> TokenId {
    TokenId([1; 16])
}

fn host(h: u8) -> HostId {
    HostId([h + 1; 16])
}

fn host_key(h: u8) -> SigningKey {
    SigningKey::from_bytes(&[h + 0x40; 32])
}

fn link(index: u64) -> Link {
    LinkHasher::new(&token_id()).toward_root(LENGTH, &SEED, LENGTH - index)
}

/// A claim by host `h` for link `index`, signed and verified as the service does.
fn claim(h: u8, index: u64, forged: bool) -> VerifiedClaim {
    let link = if forged {
        Link([0xee; 32])
    } else {
        link(index.min(LENGTH))
    };
    Claim {
        token_id: token_id(),
        host_id: host(h),
        index,
        link,
    }
    .sign(&host_key(h))
    .verify(host(h), &host_key(h).verifying_key())
    .unwrap()
}

fn book() -> LeaseBook {
    LeaseBook {
        token_id: token_id(),
        chain_length: LENGTH,
        price_per_link: PRICE,
        chain_root: chain_root(&token_id(), &SEED, LENGTH),
        refunded: false,
        handover: None,
        ranges: Vec::new(),
    }
}

fn credited(credit: Result<Option<Credit>, RuleError>) -> u64 {
    credit.unwrap().map_or(0, |c| c.amount)
}

#[test]
fn the_destination_cannot_take_the_sources_last_link() {
    let mut book = book();
    book.acquire(host(0)).unwrap();
    assert_eq!(credited(book.redeem(&claim(0, 5, false), 64)), 5 * PRICE);
    // The source holds link 12 when the VM moves; the destination receives it too.
    book.prepare_handover(host(1), &claim(0, 12, false), 64)
        .unwrap();
    assert_eq!(book.holder(), Some(host(0)));
    assert_eq!(credited(book.confirm_handover(host(1))), 7 * PRICE);
    assert_eq!(book.holder(), Some(host(1)));
    assert_eq!(credited(book.redeem(&claim(1, 12, false), 64)), 0);
    assert_eq!(credited(book.redeem(&claim(0, 12, false), 64)), 0);
    // The destination earns from the next link on; the source's range is closed.
    assert_eq!(credited(book.redeem(&claim(1, 15, false), 64)), 3 * PRICE);
    assert_eq!(credited(book.redeem(&claim(0, 20, false), 64)), 0);
    assert_eq!(book.redeemed_links(), 15);
}

#[test]
fn the_source_earns_its_final_claim_even_if_the_destination_claims_first() {
    let mut book = book();
    book.acquire(host(0)).unwrap();
    book.prepare_handover(host(1), &claim(0, 12, false), 64)
        .unwrap();
    // Before confirming, the destination is not the holder: its claim is refused.
    assert_eq!(
        book.redeem(&claim(1, 12, false), 64),
        Err(RuleError::NeverHeld { host: host(1) })
    );
    assert_eq!(credited(book.confirm_handover(host(1))), 12 * PRICE);
    assert_eq!(credited(book.redeem(&claim(1, 12, false), 64)), 0);
}

/// A request's hashing budget: each claim takes its distance from it, a claim that does not
/// fit is refused before any hashing and changes nothing, and a smaller one after it still
/// fits.
#[test]
fn a_request_budget_bounds_the_hashing_of_all_its_claims() {
    let mut book = book();
    book.acquire(host(0)).unwrap();
    let mut budget = 10;
    assert_eq!(
        credited(book.redeem_within(&claim(0, 6, false), 64, &mut budget)),
        6 * PRICE
    );
    assert_eq!(budget, 4);
    let before = book.clone();
    assert_eq!(
        book.redeem_within(&claim(0, 11, false), 64, &mut budget),
        Err(RuleError::WorkExhausted {
            index: 11,
            work: 5,
            left: 4
        })
    );
    assert_eq!((book.clone(), budget), (before, 4));
    // A forged link is hashed, so it costs its distance too.
    assert_eq!(
        book.redeem_within(&claim(0, 8, true), 64, &mut budget),
        Err(RuleError::NotOnChain { index: 8 })
    );
    assert_eq!(budget, 2);
    assert_eq!(
        credited(book.redeem_within(&claim(0, 8, false), 64, &mut budget)),
        2 * PRICE
    );
    assert_eq!(budget, 0);
    // A claim already redeemed costs nothing to check.
    assert_eq!(
        credited(book.redeem_within(&claim(0, 8, false), 64, &mut budget)),
        0
    );
}

#[test]
fn refusals() {
    let mut book = book();
    assert_eq!(
        book.redeem(&claim(2, 3, false), 64),
        Err(RuleError::NeverHeld { host: host(2) })
    );
    book.acquire(host(0)).unwrap();
    assert_eq!(
        book.acquire(host(1)),
        Err(RuleError::Held { holder: host(0) })
    );
    assert_eq!(book.acquire(host(0)), Ok(()));
    assert_eq!(
        book.redeem(&claim(0, LENGTH + 1, false), u64::MAX),
        Err(RuleError::BeyondChainEnd {
            index: LENGTH + 1,
            length: LENGTH
        })
    );
    assert_eq!(
        book.redeem(&claim(0, 7, true), 64),
        Err(RuleError::NotOnChain { index: 7 })
    );
    assert_eq!(
        book.redeem(&claim(0, 30, false), 16),
        Err(RuleError::TooFar {
            index: 30,
            verified: 0,
            distance: 30,
            max: 16
        })
    );
    assert_eq!(credited(book.redeem(&claim(0, 16, false), 16)), 16 * PRICE);
    assert_eq!(credited(book.redeem(&claim(0, 30, false), 16)), 14 * PRICE);
    assert_eq!(credited(book.redeem(&claim(0, 30, false), 16)), 0);
    assert_eq!(
        book.prepare_handover(host(0), &claim(0, 30, false), 64),
        Err(RuleError::HandoverToSelf)
    );
    assert_eq!(book.confirm_handover(host(1)), Err(RuleError::NoHandover));
    book.prepare_handover(host(1), &claim(0, 30, false), 64)
        .unwrap();
    assert_eq!(
        book.confirm_handover(host(2)),
        Err(RuleError::HandoverToOther {
            to: host(1),
            host: host(2)
        })
    );
    assert_eq!(
        book.release(host(0), None, 64),
        Err(RuleError::HandoverPending { to: host(1) })
    );
    book.cancel_handover(host(1)).unwrap();
    assert_eq!(book.holder(), Some(host(0)));
    assert_eq!(book.refund(), Ok(LENGTH - 30));
    assert_eq!(book.refund(), Err(RuleError::Refunded));
    assert_eq!(
        book.redeem(&claim(0, 31, false), 64),
        Err(RuleError::Refunded)
    );
    assert_eq!(book.acquire(host(1)), Err(RuleError::Refunded));
}

/// The operations the property test draws.
#[derive(Debug, Clone)]
enum Op {
    Acquire(u8),
    Redeem(u8, u64, bool),
    Prepare(u8, u8, u64),
    Confirm(u8),
    Cancel(u8),
    Release(u8, Option<u64>),
    Refund,
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0u8..3;
    let index = 0..=LENGTH + 1;
    prop_oneof![
        1 => h.clone().prop_map(Op::Acquire),
        3 => (h.clone(), index.clone(), proptest::bool::weighted(0.1))
            .prop_map(|(h, i, f)| Op::Redeem(h, i, f)),
        1 => (h.clone(), h.clone(), index.clone()).prop_map(|(h, to, i)| Op::Prepare(h, to, i)),
        1 => h.clone().prop_map(Op::Confirm),
        1 => h.clone().prop_map(Op::Cancel),
        1 => (h, proptest::option::of(index)).prop_map(|(h, i)| Op::Release(h, i)),
        1 => Just(Op::Refund),
    ]
}

/// The rules stated link by link: each link is paid at most once, to the host that held the
/// lease from a point below it, when that host claims a link at or above it.
#[derive(Default)]
struct Model {
    paid: Vec<Option<u8>>,
    holder: Option<u8>,
    /// Where the holder's stretch starts: links above it are its to claim.
    start: u64,
    pending: Option<(u8, u64)>,
    refunded: bool,
    held: [bool; 3],
    earned: [u64; 3],
}

impl Model {
    fn new() -> Self {
        Self {
            paid: vec![None; LENGTH as usize + 1],
            ..Self::default()
        }
    }

    fn highest_paid(&self) -> u64 {
        (0..=LENGTH)
            .rev()
            .find(|&i| self.paid[i as usize].is_some())
            .unwrap_or(0)
    }

    /// Pays `h` every unpaid link above its start up to `index`.
    fn pay(&mut self, h: u8, index: u64) -> u64 {
        let mut credit = 0;
        for i in self.start + 1..=index {
            if self.paid[i as usize].is_none() {
                self.paid[i as usize] = Some(h);
                credit += PRICE;
            }
        }
        self.earned[usize::from(h)] += credit;
        credit
    }

    /// What the operation earns, or None if the rules refuse it.
    fn apply(&mut self, op: &Op) -> Option<u64> {
        if self.refunded {
            return None;
        }
        match *op {
            Op::Acquire(h) => match self.holder {
                Some(holder) => (holder == h).then_some(0),
                None => {
                    self.start = self.highest_paid();
                    self.holder = Some(h);
                    self.held[usize::from(h)] = true;
                    Some(0)
                }
            },
            Op::Redeem(h, index, forged) => {
                if index > LENGTH || forged || !self.held[usize::from(h)] {
                    return None;
                }
                Some(if self.holder == Some(h) {
                    self.pay(h, index)
                } else {
                    0
                })
            }
            Op::Prepare(h, to, index) => {
                if self.holder != Some(h) || h == to || index > LENGTH {
                    return None;
                }
                self.pending = Some((to, index));
                Some(0)
            }
            Op::Confirm(h) => {
                let (to, index) = self.pending.filter(|(to, _)| *to == h)?;
                let source = self.holder?;
                let credit = self.pay(source, index);
                self.start = self.highest_paid().max(self.start);
                self.holder = Some(to);
                self.held[usize::from(to)] = true;
                self.pending = None;
                Some(credit)
            }
            Op::Cancel(h) => {
                let (to, _) = self.pending?;
                if to != h && self.holder != Some(h) {
                    return None;
                }
                self.pending = None;
                Some(0)
            }
            Op::Release(h, index) => {
                if self.holder != Some(h)
                    || self.pending.is_some()
                    || index.is_some_and(|i| i > LENGTH)
                {
                    return None;
                }
                let credit = index.map_or(0, |i| self.pay(h, i));
                self.holder = None;
                Some(credit)
            }
            Op::Refund => {
                self.refunded = true;
                self.holder = None;
                Some(0)
            }
        }
    }
}

fn apply(book: &mut LeaseBook, op: &Op) -> Result<u64, RuleError> {
    let max = u64::MAX;
    let earned = |credit: Option<Credit>| credit.map_or(0, |c| c.amount);
    match *op {
        Op::Acquire(h) => book.acquire(host(h)).map(|()| 0),
        Op::Redeem(h, index, forged) => book.redeem(&claim(h, index, forged), max).map(earned),
        Op::Prepare(h, to, index) => book
            .prepare_handover(host(to), &claim(h, index, false), max)
            .map(|()| 0),
        Op::Confirm(h) => book.confirm_handover(host(h)).map(earned),
        Op::Cancel(h) => book.cancel_handover(host(h)).map(|()| 0),
        Op::Release(h, index) => {
            let final_claim = index.map(|i| claim(h, i, false));
            book.release(host(h), final_claim.as_ref(), max).map(earned)
        }
        Op::Refund => book.refund().map(|_| 0),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The ranges agree with the link-by-link model on every credit and every refusal, and
    /// the ledger-level invariants hold after every step.
    #[test]
    fn lease_rules_match_the_link_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut book = book();
        let mut model = Model::new();
        let mut earned = [0u64; 3];
        for op in &ops {
            let expected = model.apply(op);
            let actual = apply(&mut book, op);
            match (&expected, &actual) {
                (Some(credit), Ok(amount)) => prop_assert_eq!(credit, amount, "{:?}", op),
                (None, Err(_)) => {}
                _ => prop_assert!(false, "{:?}: model {:?}, rules {:?}", op, expected, actual),
            }
            if let Ok(amount) = actual {
                let h = match *op {
                    Op::Confirm(_) => book.ranges.iter().rev().nth(1).map(|r| r.host),
                    Op::Redeem(h, ..) | Op::Release(h, _) => Some(host(h)),
                    _ => None,
                };
                if let Some(h) = h {
                    earned[usize::from(h.0[0] - 1)] += amount;
                }
            }
            prop_assert_eq!(book.holder().map(|h| h.0[0] - 1), model.holder);
            prop_assert_eq!(book.redeemed_links(), book.highest_redeemed());
            prop_assert!(book.highest_redeemed() <= LENGTH);
            let paid = model.paid.iter().filter(|p| p.is_some()).count() as u64;
            prop_assert_eq!(book.redeemed_links(), paid);
            for pair in book.ranges.windows(2) {
                prop_assert_eq!(pair[0].end, Some(pair[1].start));
            }
        }
        prop_assert_eq!(earned, model.earned);
    }
}
