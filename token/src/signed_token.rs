//! A boot token with the broker's signature, and the checks a host makes before it admits a
//! VM.
//!
//! # Wire format
//!
//! The token's canonical encoding (see [`crate::boot_token`]) followed by the 64-byte ed25519
//! signature: [`SIGNED_LEN`] = 246 bytes. The signature is over
//! [`SIGNATURE_DOMAIN`] ‖ encoding; the prefix keeps a token signature from ever being valid
//! as the signature of anything else the same key might sign. In JSON a signed token is one
//! hex string of these bytes, so that what is carried is exactly what was signed.

use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::boot_token::{
    check_version_and_length, BootToken, DecodeError, FieldError, ENCODED_LEN, TOKEN_VERSION,
};
use crate::broker_keys::BrokerKeys;
use crate::encoding::Reader;
use crate::hex;
use crate::ids::{ClusterId, ImageDigest, KeyId};

/// Prefixed to the token encoding before signing.
pub const SIGNATURE_DOMAIN: &[u8] = b"laundromat/boot-token/v1\0";

/// Length of a version-1 signed token.
pub const SIGNED_LEN: usize = ENCODED_LEN + Signature::BYTE_SIZE;

/// Why a host refuses a token. Each check has its own variant, so that hosts can count and
/// report refusals by cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is malformed")]
    Malformed(#[source] DecodeError),
    #[error("token version {version} is not supported; this build knows version {TOKEN_VERSION}")]
    UnsupportedVersion { version: u16 },
    #[error("broker key {key_id} is not one this host trusts")]
    UnknownBrokerKey { key_id: KeyId },
    #[error("the broker's signature does not verify")]
    BadSignature,
    #[error("the token is valid only from {not_before}, and it is {now}")]
    NotYetValid { not_before: u64, now: u64 },
    #[error("the token expired at {expiry}, and it is {now}")]
    Expired { expiry: u64, now: u64 },
    #[error("the token is for cluster {found}, not this cluster {expected}")]
    WrongCluster {
        expected: ClusterId,
        found: ClusterId,
    },
    #[error("the token is for image {found}, not the image supplied {expected}")]
    WrongImage {
        expected: ImageDigest,
        found: ImageDigest,
    },
}

impl From<DecodeError> for VerifyError {
    /// An unknown version is a refusal of its own, not a corruption: a newer broker may have
    /// issued it, and the operator needs to know that this host must be upgraded.
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::UnsupportedVersion { version } => Self::UnsupportedVersion { version },
            other => Self::Malformed(other),
        }
    }
}

/// A boot token and the broker's signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedToken {
    token: BootToken,
    signature: Signature,
}

impl SignedToken {
    /// Signs a token with the broker's key. Refuses tokens with nonsensical fields, which no
    /// host would decode.
    pub fn sign(token: BootToken, key: &SigningKey) -> Result<Self, FieldError> {
        token.validate()?;
        let signature = key.sign(&signed_message(&token));
        Ok(Self { token, signature })
    }

    /// The token. It is not verified until [`SignedToken::verify`] says so.
    pub fn token(&self) -> &BootToken {
        &self.token
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The wire format: encoding ‖ signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.token.encode();
        bytes.extend_from_slice(&self.signature.to_bytes());
        bytes
    }

    /// Parses the wire format. This checks the form only; the signature is checked by
    /// [`SignedToken::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_version_and_length(bytes, SIGNED_LEN)?;
        let (encoded, signature) = bytes.split_at(ENCODED_LEN);
        let token = BootToken::decode(encoded)?;
        let signature = Signature::from_bytes(&Reader::new(signature).array()?);
        Ok(Self { token, signature })
    }

    /// Everything a host checks before admitting a VM, except replay (the token id seen
    /// before), which needs the host's own memory. `now` is unix seconds.
    ///
    /// Checks, in order: version, broker key id, signature (with `verify_strict`, which also
    /// rejects small-order keys and non-canonical signatures), not-before, expiry, cluster,
    /// image. The signature comes before the claims in the token, so that an unsigned token
    /// learns nothing about which of its claims a host would accept.
    pub fn verify(
        &self,
        broker_keys: &BrokerKeys,
        now: u64,
        cluster_id: &ClusterId,
        image_digest: &ImageDigest,
    ) -> Result<&BootToken, VerifyError> {
        let token = &self.token;
        if token.version != TOKEN_VERSION {
            return Err(VerifyError::UnsupportedVersion {
                version: token.version,
            });
        }
        let key = broker_keys
            .get(token.broker_key_id)
            .ok_or(VerifyError::UnknownBrokerKey {
                key_id: token.broker_key_id,
            })?;
        key.verify_strict(&signed_message(token), &self.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        if now < token.not_before {
            return Err(VerifyError::NotYetValid {
                not_before: token.not_before,
                now,
            });
        }
        if now >= token.expiry {
            return Err(VerifyError::Expired {
                expiry: token.expiry,
                now,
            });
        }
        if token.cluster_id != *cluster_id {
            return Err(VerifyError::WrongCluster {
                expected: *cluster_id,
                found: token.cluster_id,
            });
        }
        if token.image_digest != *image_digest {
            return Err(VerifyError::WrongImage {
                expected: *image_digest,
                found: token.image_digest,
            });
        }
        Ok(token)
    }

    /// [`SignedToken::from_bytes`] then [`SignedToken::verify`]: what a host does with the
    /// bytes a tenant hands it.
    pub fn decode_and_verify(
        bytes: &[u8],
        broker_keys: &BrokerKeys,
        now: u64,
        cluster_id: &ClusterId,
        image_digest: &ImageDigest,
    ) -> Result<Self, VerifyError> {
        let signed = Self::from_bytes(bytes)?;
        signed.verify(broker_keys, now, cluster_id, image_digest)?;
        Ok(signed)
    }
}

fn signed_message(token: &BootToken) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + ENCODED_LEN);
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(&token.encode());
    message
}

impl Serialize for SignedToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        hex::serialize(&self.to_bytes(), serializer)
    }
}

impl<'de> Deserialize<'de> for SignedToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = hex::deserialize_vec(deserializer)?;
        Self::from_bytes(&bytes).map_err(de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ed25519_dalek::VerifyingKey;
    use proptest::prelude::*;

    use super::*;
    use crate::boot_token::tests::sample_token;
    use crate::encoding::EncodingError;

    pub(crate) fn broker_key() -> SigningKey {
        SigningKey::from_bytes(&[0x66; 32])
    }

    fn broker_keys() -> BrokerKeys {
        [(KeyId(7), broker_key().verifying_key())]
            .into_iter()
            .collect()
    }

    fn signed() -> SignedToken {
        SignedToken::sign(sample_token(), &broker_key()).unwrap()
    }

    const NOW: u64 = 1_700_000_100;

    fn verify(signed: &SignedToken) -> Result<&BootToken, VerifyError> {
        let token = sample_token();
        signed.verify(&broker_keys(), NOW, &token.cluster_id, &token.image_digest)
    }

    fn verify_bytes(bytes: &[u8]) -> Result<SignedToken, VerifyError> {
        let token = sample_token();
        SignedToken::decode_and_verify(
            bytes,
            &broker_keys(),
            NOW,
            &token.cluster_id,
            &token.image_digest,
        )
    }

    #[test]
    fn a_signed_token_verifies_after_a_round_trip() {
        let signed = signed();
        let bytes = signed.to_bytes();
        assert_eq!(bytes.len(), SIGNED_LEN);
        assert_eq!(verify_bytes(&bytes), Ok(signed.clone()));
        assert_eq!(verify(&signed), Ok(&sample_token()));
    }

    #[test]
    fn refuses_nonsensical_tokens_at_signing() {
        let mut token = sample_token();
        token.chain_length = 0;
        assert_eq!(
            SignedToken::sign(token, &broker_key()),
            Err(FieldError::ZeroChainLength)
        );
    }

    #[test]
    fn unsupported_version_is_its_own_refusal() {
        let mut bytes = signed().to_bytes();
        bytes[1] = 9;
        assert_eq!(
            verify_bytes(&bytes),
            Err(VerifyError::UnsupportedVersion { version: 9 })
        );
        let mut future = signed();
        future.token.version = 9;
        assert_eq!(
            verify(&future),
            Err(VerifyError::UnsupportedVersion { version: 9 })
        );
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let bytes = signed().to_bytes();
        assert_eq!(
            verify_bytes(&bytes[..SIGNED_LEN - 1]),
            Err(VerifyError::Malformed(DecodeError::Encoding(
                EncodingError::Truncated {
                    expected: SIGNED_LEN,
                    actual: SIGNED_LEN - 1
                }
            )))
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            verify_bytes(&longer),
            Err(VerifyError::Malformed(DecodeError::Encoding(
                EncodingError::TrailingBytes { extra: 1 }
            )))
        );
    }

    #[test]
    fn unknown_broker_key_is_refused() {
        let mut token = sample_token();
        token.broker_key_id = KeyId(8);
        let signed = SignedToken::sign(token, &broker_key()).unwrap();
        assert_eq!(
            verify(&signed),
            Err(VerifyError::UnknownBrokerKey { key_id: KeyId(8) })
        );
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let signed = SignedToken::sign(sample_token(), &SigningKey::from_bytes(&[1; 32])).unwrap();
        assert_eq!(verify(&signed), Err(VerifyError::BadSignature));
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let mut signed = signed();
        signed.token.price_per_link -= 1;
        assert_eq!(verify(&signed), Err(VerifyError::BadSignature));
    }

    #[test]
    fn validity_window_is_half_open() {
        let signed = signed();
        let token = sample_token();
        let at = |now| signed.verify(&broker_keys(), now, &token.cluster_id, &token.image_digest);
        assert_eq!(
            at(token.not_before - 1),
            Err(VerifyError::NotYetValid {
                not_before: token.not_before,
                now: token.not_before - 1
            })
        );
        assert!(at(token.not_before).is_ok());
        assert!(at(token.expiry - 1).is_ok());
        assert_eq!(
            at(token.expiry),
            Err(VerifyError::Expired {
                expiry: token.expiry,
                now: token.expiry
            })
        );
    }

    #[test]
    fn wrong_cluster_and_wrong_image_are_refused() {
        let signed = signed();
        let token = sample_token();
        let other_cluster = ClusterId([0; 16]);
        let other_image = ImageDigest([0; 32]);
        assert_eq!(
            signed.verify(&broker_keys(), NOW, &other_cluster, &token.image_digest),
            Err(VerifyError::WrongCluster {
                expected: other_cluster,
                found: token.cluster_id
            })
        );
        assert_eq!(
            signed.verify(&broker_keys(), NOW, &token.cluster_id, &other_image),
            Err(VerifyError::WrongImage {
                expected: other_image,
                found: token.image_digest
            })
        );
    }

    #[test]
    fn key_rotation_keeps_old_tokens_valid() {
        let mut keys = broker_keys();
        keys.insert(KeyId(8), SigningKey::from_bytes(&[2; 32]).verifying_key());
        let token = sample_token();
        assert!(signed()
            .verify(&keys, NOW, &token.cluster_id, &token.image_digest)
            .is_ok());
        keys.remove(KeyId(7));
        assert!(signed()
            .verify(&keys, NOW, &token.cluster_id, &token.image_digest)
            .is_err());
    }

    #[test]
    fn json_carries_the_signed_bytes_as_hex() {
        let signed = signed();
        let json = serde_json::to_string(&signed).unwrap();
        assert_eq!(json, format!("\"{}\"", hex::encode(&signed.to_bytes())));
        assert_eq!(serde_json::from_str::<SignedToken>(&json).unwrap(), signed);
        assert!(serde_json::from_str::<SignedToken>("\"0001\"").is_err());
    }

    #[test]
    fn small_order_broker_keys_never_verify() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let keys: BrokerKeys = [(KeyId(7), VerifyingKey::from_bytes(&identity).unwrap())]
            .into_iter()
            .collect();
        let token = sample_token();
        assert_eq!(
            signed().verify(&keys, NOW, &token.cluster_id, &token.image_digest),
            Err(VerifyError::BadSignature)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every bit of the wire format is covered by the signature or by decoding.
        #[test]
        fn any_single_bit_flip_is_refused(bit in 0..SIGNED_LEN * 8) {
            let mut bytes = signed().to_bytes();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let refused = verify_bytes(&bytes);
            prop_assert!(
                matches!(
                    refused,
                    Err(VerifyError::Malformed(_)
                        | VerifyError::UnsupportedVersion { .. }
                        | VerifyError::UnknownBrokerKey { .. }
                        | VerifyError::BadSignature)
                ),
                "bit {} gave {:?}", bit, refused
            );
        }

        /// Bytes that decode are exactly the encoding of what they decode to.
        #[test]
        fn only_canonical_bytes_decode(cut in 0..SIGNED_LEN, extra in proptest::collection::vec(any::<u8>(), 1..8)) {
            let bytes = signed().to_bytes();
            prop_assert!(SignedToken::from_bytes(&bytes[..cut]).is_err());
            let mut longer = bytes.clone();
            longer.extend_from_slice(&extra);
            prop_assert!(SignedToken::from_bytes(&longer).is_err());
        }

        #[test]
        fn random_bytes_decode_only_if_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(token) = SignedToken::from_bytes(&bytes) {
                prop_assert_eq!(token.to_bytes(), bytes);
            }
        }

        /// Random fields in a valid layout: decoding never panics, and whatever decodes
        /// re-encodes to the same bytes.
        #[test]
        fn random_bodies_with_a_valid_header_decode_only_if_canonical(
            body in proptest::collection::vec(any::<u8>(), SIGNED_LEN - 2..=SIGNED_LEN - 2)
        ) {
            let mut bytes = vec![0, 1];
            bytes.extend_from_slice(&body);
            if let Ok(token) = SignedToken::from_bytes(&bytes) {
                prop_assert_eq!(token.to_bytes(), bytes);
            }
        }
    }
}
