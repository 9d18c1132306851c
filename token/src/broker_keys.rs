//! The broker's public keys as hosts know them.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use crate::ids::KeyId;

/// The broker's verifying keys by key id. More than one is live while the broker rotates its
/// signing key, so that tokens signed with the old key stay valid until they expire.
#[derive(Debug, Clone, Default)]
pub struct BrokerKeys {
    keys: BTreeMap<KeyId, VerifyingKey>,
}

impl BrokerKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a key, returning the one it replaced.
    pub fn insert(&mut self, id: KeyId, key: VerifyingKey) -> Option<VerifyingKey> {
        self.keys.insert(id, key)
    }

    pub fn remove(&mut self, id: KeyId) -> Option<VerifyingKey> {
        self.keys.remove(&id)
    }

    pub fn get(&self, id: KeyId) -> Option<&VerifyingKey> {
        self.keys.get(&id)
    }
}

impl FromIterator<(KeyId, VerifyingKey)> for BrokerKeys {
    fn from_iter<I: IntoIterator<Item = (KeyId, VerifyingKey)>>(iter: I) -> Self {
        Self {
            keys: iter.into_iter().collect(),
        }
    }
}
