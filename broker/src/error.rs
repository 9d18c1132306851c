//! What the broker answers when it refuses a request, and with which HTTP status.

use laundromat_api::SignatureError;

use crate::rules::RuleError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("this exact request was already received: replays are refused")]
    Replayed,
    #[error("key {0} is not registered with this broker")]
    UnknownSigner(String),
    #[error("only the operator may do this")]
    NotOperator,
    #[error("{0}")]
    Forbidden(String),
    #[error("the request is malformed: {0}")]
    BadRequest(String),
    #[error("requests that move money need an Idempotency-Key header")]
    MissingIdempotencyKey,
    #[error("the idempotency key was used before with a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the balance {balance} does not cover {needed}")]
    InsufficientBalance { balance: u64, needed: u64 },
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
    #[error("the stored {0} is corrupt")]
    Corrupt(&'static str),
    #[error("the broker is shutting down")]
    Unavailable,
}

impl ServiceError {
    /// The HTTP status and a stable code for programs.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            Self::Signature(_) => (401, "bad_signature"),
            Self::Replayed => (401, "replayed"),
            Self::UnknownSigner(_) => (401, "unknown_signer"),
            Self::NotOperator => (403, "not_operator"),
            Self::Forbidden(_) => (403, "forbidden"),
            Self::BadRequest(_) => (400, "bad_request"),
            Self::MissingIdempotencyKey => (400, "missing_idempotency_key"),
            Self::IdempotencyMismatch => (409, "idempotency_mismatch"),
            Self::Conflict(_) => (409, "conflict"),
            Self::NotFound(_) => (404, "not_found"),
            Self::Unprocessable(_) => (422, "unprocessable"),
            Self::InsufficientBalance { .. } => (402, "insufficient_balance"),
            Self::Rule(rule) => match rule {
                RuleError::Refunded => (409, "refunded"),
                RuleError::NeverHeld { .. } => (403, "never_held_lease"),
                RuleError::NotHolder { .. } => (403, "not_lease_holder"),
                RuleError::HandoverToOther { .. } => (403, "handover_to_other"),
                RuleError::Held { .. } => (409, "lease_held"),
                RuleError::HandoverPending { .. } => (409, "handover_pending"),
                RuleError::NoHandover => (409, "no_handover"),
                RuleError::TooFar { .. } => (422, "claim_too_far"),
                RuleError::WorkExhausted { .. } => (422, "batch_work_exceeded"),
                RuleError::BeyondChainEnd { .. } => (422, "beyond_chain_end"),
                RuleError::NotOnChain { .. } => (422, "not_on_chain"),
                RuleError::WrongToken { .. } => (422, "wrong_token"),
                RuleError::HandoverToSelf => (422, "handover_to_self"),
                RuleError::CreditOverflow { .. } => (422, "credit_overflow"),
            },
            Self::Database(_) => (500, "internal"),
            Self::Corrupt(_) => (500, "corrupt"),
            Self::Unavailable => (503, "unavailable"),
        }
    }

    /// Whether the refusal is an answer to the request itself, to be kept under its
    /// idempotency key (Stripe keeps those too), rather than a failure to process it.
    pub fn is_answer(&self) -> bool {
        !matches!(
            self,
            Self::Database(_)
                | Self::Corrupt(_)
                | Self::Signature(_)
                | Self::Replayed
                | Self::UnknownSigner(_)
                | Self::NotOperator
                | Self::Unavailable
        )
    }
}
