//! The signers the writer has found registered, kept in the broker process so that a
//! request from a known tenant or host costs no registry look-up.
//!
//! Caching them cannot serve stale data: the registry is append-only. Nothing updates or
//! deletes a row of `tenants` or `hosts`, so a host's id, key and cluster, once committed,
//! are what they will always be. A signer is remembered only after the transaction that
//! found it has committed ([`Learned`] collects them meanwhile), so a registration that
//! rolled back is never remembered; a signer that is not found is never remembered either,
//! so one registered later is found then. The cache is bounded, and starts afresh when full.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use token::VerifyingKey;

use crate::ops::{Principal, Role};

/// The most signers kept; beyond it the cache starts afresh (the rows stay in the database).
const CAPACITY: usize = 65_536;

type Key = (Role, [u8; 32]);

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one insert or one clear: a panic elsewhere cannot
    // leave the map half-changed.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Registered signers, by role and public key.
#[derive(Debug, Default)]
pub struct KnownSigners(Mutex<HashMap<Key, Principal>>);

impl KnownSigners {
    /// The signer registered under `key` for `role`, if it has been seen committed.
    pub fn get(&self, role: Role, key: &VerifyingKey) -> Option<Principal> {
        locked(&self.0).get(&(role, key.to_bytes())).cloned()
    }

    /// Remembers what a committed transaction found.
    pub fn remember(&self, learned: Learned) {
        let learned = learned
            .0
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if learned.is_empty() {
            return;
        }
        let mut known = locked(&self.0);
        if known.len() + learned.len() > CAPACITY {
            known.clear();
        }
        known.extend(learned);
    }

    pub fn len(&self) -> usize {
        locked(&self.0).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Signers found by a transaction that has not committed yet.
#[derive(Debug, Default)]
pub struct Learned(Mutex<HashMap<Key, Principal>>);

impl Learned {
    pub fn add(&self, role: Role, key: &VerifyingKey, principal: &Principal) {
        locked(&self.0).insert((role, key.to_bytes()), principal.clone());
    }
}
