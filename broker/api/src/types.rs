//! The JSON bodies of the broker's API. Byte strings (ids, keys, links, signatures, signed
//! tokens) are lower-case hex; amounts are integers in the smallest currency unit.

use serde::{Deserialize, Serialize};
use token::VerifyingKey;
use token::{ClusterId, HostId, ImageDigest, KeyId, Link, SignedClaim, SignedToken, TokenId};

/// `GET /v1/broker`: what hosts and tenants need to know about the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub cluster_id: ClusterId,
    pub key_id: KeyId,
    /// Verifies boot tokens.
    #[serde(with = "token::hex::verifying_key")]
    pub public_key: VerifyingKey,
    /// The most links a claim may lie above the lease's last verified link.
    pub max_claim_distance: u64,
    /// Seconds after a token's expiry until its unredeemed escrow returns to the tenant.
    pub refund_grace_secs: u64,
    pub allow_free_tokens: bool,
}

/// `POST /v1/tenants` (operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTenant {
    #[serde(with = "token::hex::verifying_key")]
    pub tenant_key: VerifyingKey,
}

/// A tenant's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    #[serde(with = "token::hex::verifying_key")]
    pub tenant_key: VerifyingKey,
    pub balance: u64,
}

/// `POST /v1/topups` (operator): credits a tenant from the operator's mint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topup {
    #[serde(with = "token::hex::verifying_key")]
    pub tenant_key: VerifyingKey,
    pub amount: u64,
}

/// An entry of the host registry; also the body of `POST /v1/hosts` (operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub host_id: HostId,
    /// Signs the host's requests and claims, and identifies it to other hosts.
    #[serde(with = "token::hex::verifying_key")]
    pub host_key: VerifyingKey,
    pub cluster_id: ClusterId,
}

/// `POST /v1/hosts/{id}/advert` (that host): its free capacity and price for the host
/// directory. The request signature makes it the host's word; the broker keeps the newest
/// advert by `timestamp_ms` and refuses older ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    pub free_memory_mib: u64,
    pub free_vcpus: u64,
    /// The lowest price per link (one payment period) the host accepts.
    pub price_per_link: u64,
    /// Where the host's hostd API listens.
    pub url: String,
    /// Unix milliseconds when the host made the advert.
    pub timestamp_ms: u64,
}

/// An entry of `GET /v1/hosts` and `GET /v1/hosts/{id}`: the registered host and its newest
/// advert, if it sent one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    #[serde(flatten)]
    pub host: Host,
    #[serde(default)]
    pub advert: Option<Advert>,
    /// Seconds between the advert's timestamp and the broker's clock when it answered.
    #[serde(default)]
    pub advert_age_secs: Option<u64>,
    /// The advert is older than the broker's staleness limit: the host may be gone.
    #[serde(default)]
    pub stale: bool,
}

/// `POST /v1/tokens` (tenant): buy a token for a chain the tenant built. The tenant key is
/// the request's signer; the cluster is the broker's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyToken {
    pub token_id: TokenId,
    pub chain_root: Link,
    pub chain_length: u64,
    pub price_per_link: u64,
    pub link_period_ms: u64,
    pub image_digest: ImageDigest,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub expiry: u64,
}

/// The answer to a purchase: the signed boot token and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub token: SignedToken,
    pub escrow: u64,
    /// The tenant's balance after the purchase.
    pub balance: u64,
}

/// One movement of money as a statement lists it. Accounts are named `tenant:KEY`,
/// `escrow:TOKEN`, `host:ID` and `mint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: u64,
    pub kind: String,
    /// Unix seconds.
    pub at: u64,
}

/// `GET /v1/account/statement` (tenant): the balance and the newest transfers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(with = "token::hex::verifying_key")]
    pub tenant_key: VerifyingKey,
    pub balance: u64,
    pub transfers: Vec<Transfer>,
}

/// The stretch of a token's chain one host may be paid for: links `start + 1` to `end`
/// (open-ended while the host holds the lease), of which it has redeemed up to `redeemed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRange {
    pub host_id: HostId,
    pub start: u64,
    pub end: Option<u64>,
    pub redeemed: u64,
}

/// `GET /v1/tokens/{id}`, and the answer to every lease operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    pub token_id: TokenId,
    #[serde(with = "token::hex::verifying_key")]
    pub tenant_key: VerifyingKey,
    pub chain_length: u64,
    pub price_per_link: u64,
    /// Unix seconds.
    pub expiry: u64,
    /// The host holding the lease, if any.
    pub holder: Option<HostId>,
    /// The destination of a prepared, unconfirmed handover.
    pub handover_to: Option<HostId>,
    /// The highest link index any host has redeemed.
    pub highest_redeemed: u64,
    /// Links paid out to hosts so far.
    pub redeemed_links: u64,
    /// What is left in escrow.
    pub escrow: u64,
    pub refunded: bool,
    pub ranges: Vec<LeaseRange>,
}

/// `POST /v1/leases/{id}/handover` (the holder): prepares the lease's move to `to_host`
/// and redeems the source's final claim, in one transaction. The source's range ends at the
/// final claim when the destination confirms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub to_host: HostId,
    pub final_claim: SignedClaim,
}

/// `POST /v1/leases/{id}/release` (the holder): ends the lease, redeeming the final claim
/// first if there is one. Without one, the range ends at what the host has redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Release {
    pub final_claim: Option<SignedClaim>,
}

/// `POST /v1/redemptions` (host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeem {
    pub claim: SignedClaim,
}

/// The answer to a redemption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeemed {
    /// Credited to the host by this claim; 0 for links already paid or outside its ranges.
    pub credit: u64,
    pub highest_redeemed: u64,
    /// The host's earnings after the credit.
    pub host_balance: u64,
}

/// The most claims one [`RedeemBatch`] may carry; the broker refuses more with 400.
pub const MAX_BATCH_CLAIMS: usize = 256;

/// `POST /v1/redemptions/batch` (host): the claims of many tokens (say, every VM a host
/// settles at one tick) in one signed, idempotent request. Each claim is checked by the
/// same rules as a single redemption, and answered on its own: one refused claim does not
/// refuse the others. The hashing all the claims of one request cost together is bounded by
/// the broker's `max_claim_distance`; a claim that would exceed what is left of it is
/// refused with `batch_work_exceeded`, to be sent again in another request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeemBatch {
    /// 1 to [`MAX_BATCH_CLAIMS`] claims, each signed by the request's signer.
    pub claims: Vec<SignedClaim>,
}

/// The answer to a [`RedeemBatch`]: one result per claim, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRedeemed {
    pub results: Vec<ClaimResult>,
    /// The host's earnings after every credit of the batch.
    pub host_balance: u64,
}

/// What became of one claim of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimResult {
    pub token_id: TokenId,
    pub index: u64,
    #[serde(flatten)]
    pub outcome: ClaimOutcome,
}

/// A claim of a batch was credited (`credit` may be 0, as for a single redemption of links
/// already paid), or refused with the status and code a single redemption would get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ClaimOutcome {
    Credited {
        credit: u64,
        highest_redeemed: u64,
    },
    Refused {
        status: u16,
        code: String,
        error: String,
    },
}

/// `POST /v1/tokens/{id}/refund` (the token's tenant), after expiry plus grace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub amount: u64,
    /// The tenant's balance after the refund.
    pub balance: u64,
}

/// Every error answer: a sentence, and a stable code for programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

/// An empty JSON object, the body of the lease operations that need none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_result_names_its_outcome() {
        let credited = ClaimResult {
            token_id: TokenId([1; 16]),
            index: 7,
            outcome: ClaimOutcome::Credited {
                credit: 3,
                highest_redeemed: 7,
            },
        };
        let json = serde_json::to_value(&credited).unwrap();
        assert_eq!(json["outcome"], "credited");
        assert_eq!(json["credit"], 3);
        assert_eq!(json["index"], 7);
        let refused = ClaimResult {
            token_id: TokenId([1; 16]),
            index: 9,
            outcome: ClaimOutcome::Refused {
                status: 403,
                code: "never_held_lease".into(),
                error: "host … never held this token's lease".into(),
            },
        };
        let json = serde_json::to_string(&refused).unwrap();
        assert!(json.contains(r#""outcome":"refused""#), "{json}");
        assert_eq!(serde_json::from_str::<ClaimResult>(&json).unwrap(), refused);
        assert_eq!(
            serde_json::from_value::<ClaimResult>(serde_json::to_value(&credited).unwrap())
                .unwrap(),
            credited
        );
    }
}
