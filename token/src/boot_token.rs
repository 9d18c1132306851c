//! The boot token: what the broker sells and a host admits a VM with.
//!
//! # Encoding, version 1
//!
//! A fixed layout of [`ENCODED_LEN`] = 182 bytes, integers big-endian, no padding:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! |      0 |    2 | version (= 1) |
//! |      2 |    4 | broker key id |
//! |      6 |   16 | token id |
//! |     22 |   32 | tenant public key (ed25519, compressed Edwards y) |
//! |     54 |   16 | cluster id |
//! |     70 |   32 | image digest |
//! |    102 |    4 | vCPUs |
//! |    106 |    4 | memory, MiB |
//! |    110 |    8 | price per link, smallest currency unit |
//! |    118 |    8 | period one link buys, milliseconds |
//! |    126 |   32 | chain root w_0 |
//! |    158 |    8 | chain length n |
//! |    166 |    8 | not before, unix seconds |
//! |    174 |    8 | expiry, unix seconds |
//!
//! The version comes first so that a reader can tell a layout it does not know from a corrupt
//! one before it looks at the length. Every value has exactly one encoding: decoding rejects
//! truncated input, trailing bytes, unknown versions, non-canonical key encodings and the
//! field values [`FieldError`] lists, so `encode(decode(b)) == b` whenever decoding succeeds.
//! That is what lets a signature over the bytes stand for the token.

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::chain::MAX_CHAIN_LENGTH;
use crate::encoding::{check_length, EncodingError, Reader};
use crate::ids::{ClusterId, ImageDigest, KeyId, Link, TokenId};

/// The only encoding version this crate reads and writes.
pub const TOKEN_VERSION: u16 = 1;

/// Length of a version-1 token encoding, without the signature.
pub const ENCODED_LEN: usize = 2 + 4 + 16 + 32 + 16 + 32 + 4 + 4 + 8 + 8 + 32 + 8 + 8 + 8;

/// The broker's promise, once signed: whoever holds the chain behind `chain_root` may run
/// this image on this cluster between `not_before` and `expiry`, paying `price_per_link` for
/// each `link_period_ms` of run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootToken {
    pub version: u16,
    pub broker_key_id: KeyId,
    pub token_id: TokenId,
    /// Signs the tenant's requests about this VM, such as migration.
    #[serde(with = "crate::hex::verifying_key")]
    pub tenant_key: VerifyingKey,
    /// The audience: hosts of other clusters refuse the token.
    pub cluster_id: ClusterId,
    pub image_digest: ImageDigest,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// In the smallest currency unit, so that money is never a float.
    pub price_per_link: u64,
    pub link_period_ms: u64,
    pub chain_root: Link,
    pub chain_length: u64,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds; the token is valid strictly before this instant.
    pub expiry: u64,
}

/// A field value no broker would sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("token version {version} is not supported; this build knows version {TOKEN_VERSION}")]
    UnsupportedVersion { version: u16 },
    #[error("the token grants no vCPUs")]
    ZeroVcpus,
    #[error("the token grants no memory")]
    ZeroMemory,
    #[error("a link buys no time: the link period is zero")]
    ZeroLinkPeriod,
    #[error("the hash chain has no links")]
    ZeroChainLength,
    #[error("the hash chain has {length} links, more than the {MAX_CHAIN_LENGTH} allowed")]
    ChainTooLong { length: u64 },
    #[error("the token expires at {expiry}, not after its start at {not_before}")]
    EmptyValidity { not_before: u64, expiry: u64 },
    #[error("the escrow, chain length times price per link, does not fit in 64 bits")]
    EscrowOverflow,
    #[error("the tenant key is a small-order point, which anyone can sign for")]
    WeakTenantKey,
}

/// Why bytes are not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    #[error("token version {version} is not supported; this build knows version {TOKEN_VERSION}")]
    UnsupportedVersion { version: u16 },
    #[error("the tenant key is not a valid ed25519 public key")]
    InvalidTenantKey,
    #[error("the tenant key is not in its canonical encoding")]
    NonCanonicalTenantKey,
    #[error(transparent)]
    Field(#[from] FieldError),
}

impl BootToken {
    /// The escrow this token stands for: n × price. [`BootToken::validate`] guarantees that
    /// it fits, so settlement can rely on every partial sum fitting too.
    pub fn escrow(&self) -> Option<u64> {
        self.chain_length.checked_mul(self.price_per_link)
    }

    /// Rejects values that make no sense in a token. Signing and decoding both call it, so no
    /// token with such a value is ever signed or accepted.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.version != TOKEN_VERSION {
            return Err(FieldError::UnsupportedVersion {
                version: self.version,
            });
        }
        if self.vcpus == 0 {
            return Err(FieldError::ZeroVcpus);
        }
        if self.memory_mib == 0 {
            return Err(FieldError::ZeroMemory);
        }
        if self.link_period_ms == 0 {
            return Err(FieldError::ZeroLinkPeriod);
        }
        if self.chain_length == 0 {
            return Err(FieldError::ZeroChainLength);
        }
        if self.chain_length > MAX_CHAIN_LENGTH {
            return Err(FieldError::ChainTooLong {
                length: self.chain_length,
            });
        }
        if self.expiry <= self.not_before {
            return Err(FieldError::EmptyValidity {
                not_before: self.not_before,
                expiry: self.expiry,
            });
        }
        if self.escrow().is_none() {
            return Err(FieldError::EscrowOverflow);
        }
        if self.tenant_key.is_weak() {
            return Err(FieldError::WeakTenantKey);
        }
        Ok(())
    }

    /// The canonical encoding (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.broker_key_id.0.to_be_bytes());
        out.extend_from_slice(self.token_id.as_bytes());
        out.extend_from_slice(self.tenant_key.as_bytes());
        out.extend_from_slice(self.cluster_id.as_bytes());
        out.extend_from_slice(self.image_digest.as_bytes());
        out.extend_from_slice(&self.vcpus.to_be_bytes());
        out.extend_from_slice(&self.memory_mib.to_be_bytes());
        out.extend_from_slice(&self.price_per_link.to_be_bytes());
        out.extend_from_slice(&self.link_period_ms.to_be_bytes());
        out.extend_from_slice(self.chain_root.as_bytes());
        out.extend_from_slice(&self.chain_length.to_be_bytes());
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.expiry.to_be_bytes());
        out
    }

    /// Decodes exactly one canonical encoding, or says what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_version_and_length(bytes, ENCODED_LEN)?;
        let mut reader = Reader::new(bytes);
        let token = BootToken {
            version: reader.u16()?,
            broker_key_id: KeyId(reader.u32()?),
            token_id: TokenId(reader.array()?),
            tenant_key: canonical_key(&reader.array()?)?,
            cluster_id: ClusterId(reader.array()?),
            image_digest: ImageDigest(reader.array()?),
            vcpus: reader.u32()?,
            memory_mib: reader.u32()?,
            price_per_link: reader.u64()?,
            link_period_ms: reader.u64()?,
            chain_root: Link(reader.array()?),
            chain_length: reader.u64()?,
            not_before: reader.u64()?,
            expiry: reader.u64()?,
        };
        reader.finish()?;
        token.validate()?;
        Ok(token)
    }
}

/// Checks that `bytes` start with the version this build knows and are `expected` bytes
/// long. The version comes first, so that a layout from a newer broker is reported as such
/// rather than as a wrong length.
pub(crate) fn check_version_and_length(bytes: &[u8], expected: usize) -> Result<(), DecodeError> {
    let version = Reader::new(bytes).u16()?;
    if version != TOKEN_VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    Ok(check_length(bytes, expected)?)
}

/// Accepts a public key only in its one canonical encoding. Ed25519 decoders reduce a y
/// coordinate ≥ p = 2^255 − 19 modulo p, which would give one key two encodings and one
/// token two byte strings. (The other non-canonical form, x = 0 with the sign bit set, only
/// occurs for the small-order points y = ±1, which [`BootToken::validate`] rejects as weak.)
fn canonical_key(bytes: &[u8; 32]) -> Result<VerifyingKey, DecodeError> {
    if y_at_least_p(bytes) {
        return Err(DecodeError::NonCanonicalTenantKey);
    }
    VerifyingKey::from_bytes(bytes).map_err(|_| DecodeError::InvalidTenantKey)
}

/// Whether the little-endian 255-bit y in a compressed point is ≥ p. That is y in
/// p … 2^255 − 1: byte 0 ≥ 0xed, bytes 1 to 30 all 0xff, byte 31 0x7f ignoring the sign bit.
/// Comparing bytes rather than recompressing the point saves a field inversion, about a tenth
/// of a token verification.
fn y_at_least_p(bytes: &[u8; 32]) -> bool {
    bytes[0] >= 0xed && bytes[1..31].iter().all(|&byte| byte == 0xff) && bytes[31] & 0x7f == 0x7f
}

#[cfg(test)]
pub(crate) mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    /// A valid token for tests: 4 vCPUs, 1 GiB, 1024 links of 10 s at 5 units each.
    pub(crate) fn sample_token() -> BootToken {
        BootToken {
            version: TOKEN_VERSION,
            broker_key_id: KeyId(7),
            token_id: TokenId([0x11; 16]),
            tenant_key: SigningKey::from_bytes(&[0x22; 32]).verifying_key(),
            cluster_id: ClusterId([0x33; 16]),
            image_digest: ImageDigest([0x44; 32]),
            vcpus: 4,
            memory_mib: 1024,
            price_per_link: 5,
            link_period_ms: 10_000,
            chain_root: Link([0x55; 32]),
            chain_length: 1024,
            not_before: 1_700_000_000,
            expiry: 1_700_086_400,
        }
    }

    #[test]
    fn round_trips_with_the_documented_layout() {
        let token = sample_token();
        let bytes = token.encode();
        assert_eq!(bytes.len(), ENCODED_LEN);
        assert_eq!(ENCODED_LEN, 182);
        assert_eq!(&bytes[0..2], &[0, 1]);
        assert_eq!(&bytes[2..6], &[0, 0, 0, 7]);
        assert_eq!(&bytes[102..106], &[0, 0, 0, 4]);
        assert_eq!(&bytes[158..166], &1024u64.to_be_bytes());
        assert_eq!(&bytes[174..182], &1_700_086_400u64.to_be_bytes());
        assert_eq!(BootToken::decode(&bytes), Ok(token));
    }

    #[test]
    fn rejects_truncation_and_trailing_bytes() {
        let bytes = sample_token().encode();
        assert_eq!(
            BootToken::decode(&bytes[..ENCODED_LEN - 1]),
            Err(DecodeError::Encoding(EncodingError::Truncated {
                expected: ENCODED_LEN,
                actual: ENCODED_LEN - 1
            }))
        );
        assert!(matches!(
            BootToken::decode(&bytes[..1]),
            Err(DecodeError::Encoding(EncodingError::Truncated { .. }))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            BootToken::decode(&longer),
            Err(DecodeError::Encoding(EncodingError::TrailingBytes {
                extra: 1
            }))
        );
    }

    #[test]
    fn rejects_unknown_versions_before_looking_at_the_length() {
        let mut bytes = sample_token().encode();
        bytes[1] = 2;
        bytes.truncate(10);
        assert_eq!(
            BootToken::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn rejects_invalid_and_non_canonical_tenant_keys() {
        let mut bytes = sample_token().encode();
        // y = 2 is not the y coordinate of any curve point.
        let mut invalid = [0u8; 32];
        invalid[0] = 2;
        bytes[22..54].copy_from_slice(&invalid);
        assert_eq!(
            BootToken::decode(&bytes),
            Err(DecodeError::InvalidTenantKey)
        );
        // y = p + 1 ≡ 1 decodes to the identity, whose canonical encoding is y = 1.
        let mut non_canonical = [0xff; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        bytes[22..54].copy_from_slice(&non_canonical);
        assert_eq!(
            BootToken::decode(&bytes),
            Err(DecodeError::NonCanonicalTenantKey)
        );
    }

    #[test]
    fn the_canonical_check_agrees_with_recompression() {
        // Every encoding with y ≥ p, both signs: y = p + t for t = 0 … 18.
        for t in 0..19u8 {
            for sign in [0, 0x80] {
                let mut bytes = [0xff; 32];
                bytes[0] = 0xed + t;
                bytes[31] = 0x7f | sign;
                assert!(y_at_least_p(&bytes));
                if let Ok(key) = VerifyingKey::from_bytes(&bytes) {
                    assert_ne!(key.to_edwards().compress().to_bytes(), bytes);
                }
            }
        }
        // Just below p, and real keys, are canonical.
        let mut below = [0xff; 32];
        below[0] = 0xec;
        below[31] = 0x7f;
        assert!(!y_at_least_p(&below));
        for seed in 0..16u8 {
            let key = SigningKey::from_bytes(&[seed; 32]).verifying_key();
            assert!(!y_at_least_p(key.as_bytes()));
        }
    }

    #[test]
    fn rejects_each_nonsensical_field() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        type Spoil = fn(&mut BootToken);
        let cases: Vec<(Spoil, FieldError)> = vec![
            (|t| t.vcpus = 0, FieldError::ZeroVcpus),
            (|t| t.memory_mib = 0, FieldError::ZeroMemory),
            (|t| t.link_period_ms = 0, FieldError::ZeroLinkPeriod),
            (|t| t.chain_length = 0, FieldError::ZeroChainLength),
            (
                |t| t.chain_length = MAX_CHAIN_LENGTH + 1,
                FieldError::ChainTooLong {
                    length: MAX_CHAIN_LENGTH + 1,
                },
            ),
            (
                |t| t.expiry = t.not_before,
                FieldError::EmptyValidity {
                    not_before: 1_700_000_000,
                    expiry: 1_700_000_000,
                },
            ),
            (|t| t.price_per_link = u64::MAX, FieldError::EscrowOverflow),
        ];
        for (spoil, expected) in cases {
            let mut token = sample_token();
            spoil(&mut token);
            assert_eq!(token.validate(), Err(expected.clone()));
            assert_eq!(
                BootToken::decode(&token.encode()),
                Err(DecodeError::Field(expected))
            );
        }
        let mut weak = sample_token();
        weak.tenant_key = VerifyingKey::from_bytes(&identity).unwrap();
        assert_eq!(
            BootToken::decode(&weak.encode()),
            Err(DecodeError::Field(FieldError::WeakTenantKey))
        );
        let mut future = sample_token();
        future.version = 2;
        assert_eq!(
            future.validate(),
            Err(FieldError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn serializes_fields_as_json_for_display() {
        let json = serde_json::to_value(sample_token()).unwrap();
        assert_eq!(json["vcpus"], 4);
        assert_eq!(json["token_id"], "11".repeat(16));
    }
}
