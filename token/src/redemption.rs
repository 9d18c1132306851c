//! A host's claim to the broker for the links it holds.
//!
//! # Signed encoding
//!
//! The host signs [`CLAIM_DOMAIN`] ‖ token id (16) ‖ host id (16) ‖ index (u64 big-endian) ‖
//! link (32): a fixed 72-byte layout after the prefix, so each claim has one signed form. The
//! broker looks up the host's registered key by the claim's host id and checks the signature
//! with `verify_strict`. Only a [`VerifiedClaim`] can be settled.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::chain::verifier::Verifier;
use crate::ids::{HostId, Link, TokenId};

/// Prefixed to a claim's encoding before signing, so that a host's claim signature can never
/// pass for anything else its key signs.
pub const CLAIM_DOMAIN: &[u8] = b"laundromat/redemption/v1\0";

/// Length of a claim's encoding, without the prefix.
pub const CLAIM_LEN: usize = 16 + 16 + 8 + 32;

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedemptionError {
    #[error("the claim is for host {found}, but the key given is host {expected}'s")]
    WrongHost { expected: HostId, found: HostId },
    #[error("the host's signature on the claim does not verify")]
    BadSignature,
}

/// "Host `host_id` holds link `index` of token `token_id`, namely `link`."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub token_id: TokenId,
    pub host_id: HostId,
    pub index: u64,
    pub link: Link,
}

impl Claim {
    /// A claim for the newest link a host's verifier has accepted.
    pub fn from_verifier(host_id: HostId, verifier: &Verifier) -> Self {
        Self {
            token_id: verifier.token_id(),
            host_id,
            index: verifier.index(),
            link: verifier.link(),
        }
    }

    /// The canonical encoding the signature covers (after [`CLAIM_DOMAIN`]).
    pub fn encode(&self) -> [u8; CLAIM_LEN] {
        let mut out = [0; CLAIM_LEN];
        out[..16].copy_from_slice(self.token_id.as_bytes());
        out[16..32].copy_from_slice(self.host_id.as_bytes());
        out[32..40].copy_from_slice(&self.index.to_be_bytes());
        out[40..].copy_from_slice(self.link.as_bytes());
        out
    }

    pub fn sign(self, host_key: &SigningKey) -> SignedClaim {
        let signature = host_key.sign(&signed_message(&self));
        SignedClaim {
            claim: self,
            signature,
        }
    }
}

fn signed_message(claim: &Claim) -> Vec<u8> {
    let mut message = Vec::with_capacity(CLAIM_DOMAIN.len() + CLAIM_LEN);
    message.extend_from_slice(CLAIM_DOMAIN);
    message.extend_from_slice(&claim.encode());
    message
}

/// A claim with the host's signature, as sent to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedClaim {
    pub claim: Claim,
    #[serde(with = "crate::hex::signature")]
    pub signature: Signature,
}

impl SignedClaim {
    /// Checks the signature against the key registered for `host_id`.
    pub fn verify(
        &self,
        host_id: HostId,
        host_key: &VerifyingKey,
    ) -> Result<VerifiedClaim, RedemptionError> {
        if self.claim.host_id != host_id {
            return Err(RedemptionError::WrongHost {
                expected: host_id,
                found: self.claim.host_id,
            });
        }
        host_key
            .verify_strict(&signed_message(&self.claim), &self.signature)
            .map_err(|_| RedemptionError::BadSignature)?;
        Ok(VerifiedClaim(self.claim))
    }
}

/// A claim whose signature has been checked. Only [`SignedClaim::verify`] makes one, so
/// settlement cannot be handed an unauthenticated claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedClaim(Claim);

impl VerifiedClaim {
    pub fn claim(&self) -> &Claim {
        &self.0
    }

    /// Skips the signature, for tests of settlement that settle thousands of claims:
    /// ed25519 in an unoptimized build takes milliseconds.
    #[cfg(test)]
    pub(crate) fn assume_verified(claim: Claim) -> Self {
        Self(claim)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn host_key(host: u8) -> SigningKey {
        SigningKey::from_bytes(&[host.wrapping_add(0x70); 32])
    }

    /// A claim by host `host`, taken as verified, for tests of settlement.
    pub(crate) fn verified(token_id: TokenId, host: u8, index: u64, link: Link) -> VerifiedClaim {
        VerifiedClaim::assume_verified(Claim {
            token_id,
            host_id: HostId([host; 16]),
            index,
            link,
        })
    }

    fn claim() -> Claim {
        Claim {
            token_id: TokenId([1; 16]),
            host_id: HostId([2; 16]),
            index: 0x0102,
            link: Link([3; 32]),
        }
    }

    #[test]
    fn encodes_the_documented_layout() {
        let bytes = claim().encode();
        assert_eq!(&bytes[..16], &[1; 16]);
        assert_eq!(&bytes[16..32], &[2; 16]);
        assert_eq!(&bytes[32..40], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&bytes[40..], &[3; 32]);
    }

    #[test]
    fn a_signed_claim_verifies_and_survives_json() {
        let signed = claim().sign(&host_key(2));
        let json = serde_json::to_string(&signed).unwrap();
        let parsed: SignedClaim = serde_json::from_str(&json).unwrap();
        let verified = parsed.verify(HostId([2; 16]), &host_key(2).verifying_key());
        assert_eq!(verified.map(|v| *v.claim()), Ok(claim()));
    }

    #[test]
    fn refuses_changed_claims_other_keys_and_other_hosts() {
        let mut signed = claim().sign(&host_key(2));
        let key = host_key(2).verifying_key();
        assert_eq!(
            signed.verify(HostId([9; 16]), &key),
            Err(RedemptionError::WrongHost {
                expected: HostId([9; 16]),
                found: HostId([2; 16])
            })
        );
        assert_eq!(
            signed.verify(HostId([2; 16]), &host_key(3).verifying_key()),
            Err(RedemptionError::BadSignature)
        );
        signed.claim.index += 1;
        assert_eq!(
            signed.verify(HostId([2; 16]), &key),
            Err(RedemptionError::BadSignature)
        );
    }
}
