//! Laundromat's money: boot tokens the broker signs, PayWord hash chains the tenant pays
//! with, and the rules by which hosts redeem what they were paid.
//!
//! - [`boot_token`]: the token's fields and canonical encoding.
//! - [`signed_token`]: the broker's signature and the host's admission checks.
//! - [`chain`]: hash chains; [`Payer`] (tenant) and [`Verifier`] (host).
//! - [`payment`], [`redemption`], [`settlement`]: paying a host, a host's claim, the broker's
//!   credit rule.
//! - [`paid_time`]: until when a VM is paid, for the host's garbage collector.
//!
//! # The whole flow
//!
//! ```
//! use token::*;
//!
//! // The tenant picks a token id and a secret seed, and builds the chain (n hashes).
//! let token_id = TokenId::random();
//! let mut payer = Payer::new(token_id, &Link::random_seed(), 1000)?;
//!
//! // The broker escrows 1000 × 5 and signs a token for the chain's root.
//! let broker = SigningKey::from_bytes(&[1; 32]);
//! let (cluster_id, digest) = (ClusterId([7; 16]), image_digest(b"kernel", None, "quiet"));
//! let token = BootToken {
//!     version: TOKEN_VERSION,
//!     broker_key_id: KeyId(1),
//!     token_id,
//!     tenant_key: SigningKey::from_bytes(&[2; 32]).verifying_key(),
//!     cluster_id,
//!     image_digest: digest,
//!     vcpus: 1,
//!     memory_mib: 256,
//!     price_per_link: 5,
//!     link_period_ms: 10_000,
//!     chain_root: payer.root(),
//!     chain_length: 1000,
//!     not_before: 1_700_000_000,
//!     expiry: 1_700_100_000,
//! };
//! let wire = SignedToken::sign(token, &broker)?.to_bytes();
//!
//! // A host admits the VM, then meters the tenant's payments.
//! let now = 1_700_000_100;
//! let keys: BrokerKeys = [(KeyId(1), broker.verifying_key())].into_iter().collect();
//! let admitted = SignedToken::decode_and_verify(&wire, &keys, now, &cluster_id, &digest)?;
//! let mut verifier = Verifier::new(admitted.token(), 64)?;
//! verifier.accept_payment(&payer.pay(3)?)?;
//! let meter = PaidTime::for_token(admitted.token(), now * 1000, 30_000);
//! assert_eq!(meter.paid_until(verifier.index()), now * 1000 + 30_000);
//!
//! // The host redeems what it holds; the broker credits it.
//! let (host_id, host_key) = (HostId([3; 16]), SigningKey::from_bytes(&[4; 32]));
//! let claim = Claim::from_verifier(host_id, &verifier).sign(&host_key);
//! let claim = claim.verify(host_id, &host_key.verifying_key())?;
//! let settlement = settle(admitted.token(), 0, &claim)?;
//! assert_eq!((settlement.credit, settlement.highest_redeemed), (15, 3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod boot_token;
pub mod broker_keys;
pub mod chain;
pub mod encoding;
pub mod hex;
pub mod ids;
mod image_digest;
pub mod paid_time;
pub mod payment;
pub mod redemption;
pub mod settlement;
pub mod signed_token;

pub use boot_token::{BootToken, TOKEN_VERSION};
pub use broker_keys::BrokerKeys;
pub use chain::payer::Payer;
pub use chain::verifier::Verifier;
pub use chain::{chain_root, LinkHasher, MAX_CHAIN_LENGTH};
pub use ids::{ClusterId, HostId, ImageDigest, KeyId, Link, TokenId};
pub use image_digest::{image_digest, image_digest_with_disk, DiskPart};
pub use paid_time::PaidTime;
pub use payment::Payment;
pub use redemption::{Claim, SignedClaim, VerifiedClaim};
pub use settlement::{settle, Settlement};
pub use signed_token::SignedToken;

/// The ed25519 types the API takes, so that callers use the same crate version.
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
