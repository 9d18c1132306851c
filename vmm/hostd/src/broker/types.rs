//! The requests and answers that pass between hostd and the broker. They are the whole
//! vocabulary of [`super::BrokerClient`], so the HTTP implementation against the real broker
//! is a matter of mapping each of them to a path.

use serde::{Deserialize, Serialize};
use token::{ClusterId, HostId, KeyId, SignedClaim, TokenId, VerifyingKey};

/// One of the broker's token-signing keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerKey {
    pub key_id: KeyId,
    #[serde(with = "token::hex::verifying_key")]
    pub key: VerifyingKey,
}

/// A host as the broker's registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: HostId,
    #[serde(with = "token::hex::verifying_key")]
    pub key: VerifyingKey,
    pub cluster_id: ClusterId,
    /// Where its hostd API listens, if it advertised one.
    #[serde(default)]
    pub url: Option<String>,
}

/// Who holds a token's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub token_id: TokenId,
    pub holder: HostId,
}

/// Prepares moving a lease from `from` to `to`, with `from`'s final claim (checked when
/// prepared, paid when the destination confirms). The lease stays with `from` until `to`
/// confirms; either side may cancel until then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub token_id: TokenId,
    pub from: HostId,
    pub to: HostId,
    pub final_claim: SignedClaim,
}

/// What the broker credited for a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    /// Newly credited, in the smallest currency unit (0 for a claim already redeemed).
    pub credit: u64,
    /// The highest link index the broker has redeemed for this token, from any host.
    pub highest_redeemed: u64,
}

/// A host's advertisement in the host directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityAdvert {
    pub host_id: HostId,
    pub cluster_id: ClusterId,
    pub url: String,
    pub free_memory_mib: u64,
    pub free_vcpus: u64,
    /// The lowest price per link-period this host accepts, smallest currency unit.
    pub min_price_per_link: u64,
}

/// Why a broker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("host {holder} holds the lease of token {token_id}")]
    LeaseHeld { token_id: TokenId, holder: HostId },
    #[error("this host does not hold the lease of token {token_id}")]
    NotLeaseHolder { token_id: TokenId },
    #[error("host {0} is not registered with the broker")]
    UnknownHost(HostId),
    #[error("the broker refused the claim: {0}")]
    ClaimRefused(String),
    #[error("a handover of the lease of token {token_id} is pending; it must be confirmed or cancelled first")]
    HandoverPending { token_id: TokenId },
    #[error("no handover of the lease of token {token_id} to this host is prepared")]
    NoHandover { token_id: TokenId },
    #[error("the broker does not know token {0}")]
    UnknownToken(TokenId),
    #[error("the broker refused this host's request signature: {0}")]
    SignatureRefused(String),
    #[error("the broker refused ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the broker cannot be reached: {0}")]
    Unavailable(String),
}
