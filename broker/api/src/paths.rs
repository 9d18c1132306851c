//! The broker's versioned paths. Each function builds a path a client calls; the broker's
//! router uses the same patterns.
//!
//! | method | path | signed by | body → answer |
//! |---|---|---|---|
//! | GET | `/v1/broker` | — | → [`BrokerInfo`](crate::types::BrokerInfo) |
//! | POST | `/v1/tenants` | operator | [`NewTenant`](crate::types::NewTenant) → [`Account`](crate::types::Account) |
//! | POST | `/v1/hosts` | operator | [`Host`](crate::types::Host) → `Host` |
//! | POST | `/v1/topups` | operator | [`Topup`](crate::types::Topup) → `Account` |
//! | GET | `/v1/hosts`, `/v1/hosts/{id}` | — | → `[HostEntry]`, [`HostEntry`](crate::types::HostEntry) |
//! | POST | `/v1/hosts/{id}/advert` | that host | [`Advert`](crate::types::Advert) → `HostEntry` |
//! | GET | `/v1/account` | tenant | → `Account` |
//! | GET | `/v1/account/statement` | tenant | → [`Statement`](crate::types::Statement) |
//! | POST | `/v1/tokens` | tenant | [`BuyToken`](crate::types::BuyToken) → [`Purchase`](crate::types::Purchase) |
//! | GET | `/v1/tokens/{id}` | — | → [`TokenState`](crate::types::TokenState) |
//! | POST | `/v1/tokens/{id}/refund` | tenant (owner) | `{}` → [`Refund`](crate::types::Refund) |
//! | POST | `/v1/leases/{id}/acquire` | host | `{}` → `TokenState` |
//! | POST | `/v1/leases/{id}/handover` | source host (holder) | [`Handover`](crate::types::Handover) → `TokenState` |
//! | POST | `/v1/leases/{id}/handover/confirm` | destination host | `{}` → `TokenState` |
//! | POST | `/v1/leases/{id}/handover/cancel` | source or destination | `{}` → `TokenState` |
//! | POST | `/v1/leases/{id}/release` | holder | [`Release`](crate::types::Release) → `TokenState` |
//! | POST | `/v1/redemptions` | host | [`Redeem`](crate::types::Redeem) → [`Redeemed`](crate::types::Redeemed) |
//! | POST | `/v1/redemptions/batch` | host | [`RedeemBatch`](crate::types::RedeemBatch) → [`BatchRedeemed`](crate::types::BatchRedeemed) |
//! | GET | `/metrics`, `/healthz` | — | Prometheus text, `ok` |

use token::{HostId, TokenId};

pub const BROKER: &str = "/v1/broker";
pub const TENANTS: &str = "/v1/tenants";
pub const HOSTS: &str = "/v1/hosts";
pub const TOPUPS: &str = "/v1/topups";
pub const ACCOUNT: &str = "/v1/account";
pub const STATEMENT: &str = "/v1/account/statement";
pub const TOKENS: &str = "/v1/tokens";
pub const REDEMPTIONS: &str = "/v1/redemptions";
/// Many claims of one host in one signed request (see [`crate::types::RedeemBatch`]).
pub const BATCH_REDEMPTIONS: &str = "/v1/redemptions/batch";

pub fn host(id: &HostId) -> String {
    format!("{HOSTS}/{id}")
}

pub fn advert(id: &HostId) -> String {
    format!("{HOSTS}/{id}/advert")
}

pub fn token(id: &TokenId) -> String {
    format!("{TOKENS}/{id}")
}

pub fn refund(id: &TokenId) -> String {
    format!("{TOKENS}/{id}/refund")
}

/// `/v1/leases/{id}/{action}`, where action is `acquire`, `handover`, `handover/confirm`,
/// `handover/cancel` or `release`.
pub fn lease(id: &TokenId, action: &str) -> String {
    format!("/v1/leases/{id}/{action}")
}
