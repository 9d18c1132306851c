//! How the broker's refusals (an HTTP status and a stable `code`, see the broker's
//! `ServiceError::status_and_code`) become [`BrokerError`]s, and which failures are worth
//! retrying.

use laundromat_api::types::ErrorBody;
use token::{HostId, TokenId};

use super::BrokerError;

/// What a request was about, so that a refusal can name it.
#[derive(Debug, Clone, Copy)]
pub enum Subject {
    /// A read or an advert: no token involved.
    None,
    /// A lease operation on a token.
    Lease(TokenId),
    /// A redemption of a claim on a token.
    Claim(TokenId),
}

/// Whether a status is a transient failure of the broker rather than an answer: worth
/// retrying with the same idempotency key.
pub fn is_transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// The holder a `lease_held` refusal names ("… held by host HEX").
fn holder_in(message: &str) -> Option<HostId> {
    message.split_whitespace().last()?.parse().ok()
}

/// Maps a refusal to the error hostd acts on. `me` is the host this client signs as.
pub fn to_error(status: u16, body: ErrorBody, subject: Subject, me: HostId) -> BrokerError {
    let ErrorBody {
        error: message,
        code,
    } = body;
    let token = match subject {
        Subject::Lease(id) | Subject::Claim(id) => Some(id),
        Subject::None => None,
    };
    match (code.as_str(), subject, token) {
        ("unknown_signer", ..) => BrokerError::UnknownHost(me),
        ("bad_signature" | "replayed", ..) => BrokerError::SignatureRefused(message),
        ("lease_held", _, Some(token_id)) => match holder_in(&message) {
            Some(holder) => BrokerError::LeaseHeld { token_id, holder },
            None => BrokerError::Refused {
                status,
                code,
                message,
            },
        },
        ("not_lease_holder" | "never_held_lease", Subject::Lease(token_id), _) => {
            BrokerError::NotLeaseHolder { token_id }
        }
        ("handover_pending", _, Some(token_id)) => BrokerError::HandoverPending { token_id },
        ("no_handover" | "handover_to_other", _, Some(token_id)) => {
            BrokerError::NoHandover { token_id }
        }
        ("not_found", _, Some(token_id)) if message.starts_with("token ") => {
            BrokerError::UnknownToken(token_id)
        }
        (
            "claim_too_far"
            | "batch_work_exceeded"
            | "not_on_chain"
            | "wrong_token"
            | "beyond_chain_end"
            | "credit_overflow"
            | "never_held_lease"
            | "not_lease_holder",
            ..,
        ) => BrokerError::ClaimRefused(message),
        ("unprocessable", Subject::Claim(_), _) => BrokerError::ClaimRefused(message),
        _ if is_transient(status) => {
            BrokerError::Unavailable(format!("the broker answered {status}: {message}"))
        }
        _ => BrokerError::Refused {
            status,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, error: &str) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            code: code.into(),
        }
    }

    #[test]
    fn refusals_map_to_what_hostd_acts_on() {
        let me = HostId([1; 16]);
        let other = HostId([2; 16]);
        let token_id = TokenId([3; 16]);
        let lease = Subject::Lease(token_id);
        assert_eq!(
            to_error(
                409,
                body("lease_held", &format!("the lease is held by host {other}")),
                lease,
                me
            ),
            BrokerError::LeaseHeld {
                token_id,
                holder: other
            }
        );
        assert_eq!(
            to_error(
                401,
                body("unknown_signer", "key … is not registered"),
                lease,
                me
            ),
            BrokerError::UnknownHost(me)
        );
        assert_eq!(
            to_error(403, body("not_lease_holder", "…"), lease, me),
            BrokerError::NotLeaseHolder { token_id }
        );
        assert_eq!(
            to_error(404, body("not_found", "token x not found"), lease, me),
            BrokerError::UnknownToken(token_id)
        );
        assert!(matches!(
            to_error(
                422,
                body("claim_too_far", "…"),
                Subject::Claim(token_id),
                me
            ),
            BrokerError::ClaimRefused(_)
        ));
        assert!(matches!(
            to_error(409, body("refunded", "…"), lease, me),
            BrokerError::Refused { status: 409, .. }
        ));
        assert!(matches!(
            to_error(500, body("internal", "the database failed"), lease, me),
            BrokerError::Unavailable(_)
        ));
    }
}
