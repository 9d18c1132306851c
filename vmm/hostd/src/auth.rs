//! Signed requests: a tenant (or the operator) proves who sends a request with the product's
//! one request-signing scheme, [`laundromat_api::signing`] (the broker's): an ed25519
//! signature over method, path with query, body hash, timestamp and a random nonce.
//!
//! A request is accepted within [`MAX_SKEW_S`] of hostd's clock, and each nonce only once: a
//! captured request cannot be sent again while its timestamp is still fresh. Nonces are
//! remembered until their timestamp leaves the window, in a set of bounded size; when the set
//! is full of fresh nonces, further signed requests are refused (503) until room frees up,
//! rather than forgetting a nonce that could still be replayed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode};
use laundromat_api::signing;
use token::{SigningKey, VerifyingKey};

use crate::http::error::ApiError;

pub use signing::{
    IDEMPOTENCY_HEADER, KEY_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
/// How far a request's timestamp may be from the server's clock, either way.
pub const MAX_SKEW_S: u64 = signing::MAX_SKEW_SECS;
/// The most nonces remembered at once: 64 Ki nonces in a 2-minute window is over 500 signed
/// requests a second, far above what tenants send (stops and console reads), in under 10 MiB.
pub const MAX_NONCES: usize = 64 * 1024;
/// The most nonces one key may have remembered at once: about 34 signed requests a second.
pub const MAX_NONCES_PER_KEY: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request is not signed: {0}")]
    Unsigned(signing::SignatureError),
    #[error("the request's signature headers are malformed: {0}")]
    Malformed(signing::SignatureError),
    #[error("the request was signed at {signed_at}, more than {MAX_SKEW_S} s from now ({now})")]
    Skew { signed_at: u64, now: u64 },
    #[error("the request is not signed by the key that owns this VM")]
    BadSignature,
    #[error("the request was already received once: its nonce is spent")]
    Replayed,
    #[error("hostd is remembering as many request nonces as it may; retry shortly")]
    Busy,
}

/// The nonces of the signed requests accepted within the skew window, by timestamp, with a
/// count per signer so that one key cannot take all the room.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    by_time: BTreeSet<(u64, [u8; 16], [u8; 32])>,
    per_key: HashMap<[u8; 32], usize>,
}

impl ReplayGuard {
    /// Spends `nonce`, signed by `key` at `timestamp`; refuses one spent before.
    pub fn spend(
        &self,
        key: &VerifyingKey,
        timestamp: u64,
        nonce: [u8; 16],
        now: u64,
    ) -> Result<(), AuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let seen = &mut *seen;
        // A nonce whose timestamp is out of the window is refused by the skew check anyway.
        while let Some(&(oldest, _, signer)) = seen.by_time.first() {
            if oldest.saturating_add(MAX_SKEW_S) >= now {
                break;
            }
            seen.by_time.pop_first();
            if let Some(count) = seen.per_key.get_mut(&signer) {
                *count -= 1;
                if *count == 0 {
                    seen.per_key.remove(&signer);
                }
            }
        }
        let key = *key.as_bytes();
        if seen.by_time.contains(&(timestamp, nonce, key)) {
            return Err(AuthError::Replayed);
        }
        let count = seen.per_key.get(&key).copied().unwrap_or(0);
        if seen.by_time.len() >= MAX_NONCES || count >= MAX_NONCES_PER_KEY {
            return Err(AuthError::Busy);
        }
        seen.by_time.insert((timestamp, nonce, key));
        seen.per_key.insert(key, count + 1);
        Ok(())
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_time
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// hostd's one guard: a nonce is spent once per hostd process.
static GUARD: std::sync::LazyLock<ReplayGuard> = std::sync::LazyLock::new(ReplayGuard::default);

/// The header values that sign a request (`path` with its query string), with a fresh nonce.
pub fn sign(
    key: &SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
) -> Vec<(&'static str, String)> {
    // Signing fails only for a method or path over 64 KiB, which no caller builds.
    signing::sign(key, method, path, body, timestamp, None)
        .map(|headers| headers.0)
        .unwrap_or_default()
}

fn refusal(error: signing::SignatureError) -> AuthError {
    use signing::SignatureError as E;
    match error {
        E::MissingHeader(_) => AuthError::Unsigned(error),
        E::Skew { timestamp, now } => AuthError::Skew {
            signed_at: timestamp,
            now,
        },
        E::BadSignature => AuthError::BadSignature,
        E::MalformedHeader(_) | E::BadKey | E::BadIdempotencyKey | E::TooLong => {
            AuthError::Malformed(error)
        }
    }
}

/// Checks that the request was signed by one of `allowed` within the allowed skew of `now`,
/// and that it was not received before; returns which key signed. `path` includes the query
/// string. Only an allowed signer's request spends a nonce, so strangers cannot fill the
/// guard.
pub fn verify_any(
    allowed: &[VerifyingKey],
    method: &str,
    path: &str,
    body: &[u8],
    headers: &HeaderMap,
    now: u64,
) -> Result<VerifyingKey, AuthError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let named = header(KEY_HEADER).and_then(|v| token::hex::decode_array::<32>(v).ok());
    if named.is_some_and(|named| !allowed.iter().any(|k| *k.as_bytes() == named)) {
        return Err(AuthError::BadSignature);
    }
    let checked = signing::verify(header, method, path, body, now).map_err(refusal)?;
    GUARD.spend(&checked.key, checked.timestamp, checked.nonce, now)?;
    Ok(checked.key)
}

/// [`verify_any`] for one key: the request was signed by `key`.
pub fn verify(
    key: &VerifyingKey,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &HeaderMap,
    now: u64,
) -> Result<(), AuthError> {
    verify_any(std::slice::from_ref(key), method, path, body, headers, now).map(|_| ())
}

/// Each refusal's status and code: `unsigned_request` and `request_expired` (401),
/// `malformed_signature` (400), `not_the_tenant` (403), `replayed_request` (401), and
/// `overloaded` (503) while the nonce set is full.
impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let (status, code) = match &error {
            AuthError::Unsigned(_) => (StatusCode::UNAUTHORIZED, "unsigned_request"),
            AuthError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_signature"),
            AuthError::Skew { .. } => (StatusCode::UNAUTHORIZED, "request_expired"),
            AuthError::BadSignature => (StatusCode::FORBIDDEN, "not_the_tenant"),
            AuthError::Replayed => (StatusCode::UNAUTHORIZED, "replayed_request"),
            AuthError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: Vec<(&'static str, String)>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name, HeaderValue::from_str(&value).unwrap());
        }
        map
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn accepts_its_own_signature_once_and_refuses_everything_else() {
        let tenant = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let now = now();
        let key = tenant.verifying_key();
        let signed = headers(sign(&tenant, "DELETE", "/v1/vms/ab", b"", now));
        assert_eq!(
            verify(
                &other.verifying_key(),
                "DELETE",
                "/v1/vms/ab",
                b"",
                &signed,
                now
            ),
            Err(AuthError::BadSignature)
        );
        for (method, path, body) in [
            ("POST", "/v1/vms/ab", &b""[..]),
            ("DELETE", "/v1/vms/cd", b""),
            ("DELETE", "/v1/vms/ab?from=1", b""),
            ("DELETE", "/v1/vms/ab", b"x"),
        ] {
            assert_eq!(
                verify(&key, method, path, body, &signed, now),
                Err(AuthError::BadSignature)
            );
        }
        assert!(matches!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &signed, now + 61),
            Err(AuthError::Skew { .. })
        ));
        // None of the refusals spent the nonce; the first good check does.
        assert_eq!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &signed, now + 60),
            Ok(())
        );
        assert_eq!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &signed, now),
            Err(AuthError::Replayed)
        );
        assert!(matches!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &HeaderMap::new(), now),
            Err(AuthError::Unsigned(_))
        ));
        let mut bad = headers(sign(&tenant, "DELETE", "/v1/vms/ab", b"", now));
        bad.insert(SIGNATURE_HEADER, HeaderValue::from_static("zz"));
        assert!(matches!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &bad, now),
            Err(AuthError::Malformed(_))
        ));
        let fresh = headers(sign(&tenant, "GET", "/v1/vms/ab/console?from=3", b"", now));
        assert_eq!(
            verify_any(
                &[other.verifying_key(), key],
                "GET",
                "/v1/vms/ab/console?from=3",
                b"",
                &fresh,
                now
            ),
            Ok(key)
        );
    }

    #[test]
    fn the_guard_forgets_only_what_the_window_refuses_and_stays_bounded() {
        let guard = ReplayGuard::default();
        let now = 1_000_000;
        let keys: Vec<VerifyingKey> = (0..=(MAX_NONCES / MAX_NONCES_PER_KEY) as u8)
            .map(|i| SigningKey::from_bytes(&[i + 1; 32]).verifying_key())
            .collect();
        guard.spend(&keys[0], now, [1; 16], now).unwrap();
        assert_eq!(
            guard.spend(&keys[0], now, [1; 16], now + 60),
            Err(AuthError::Replayed)
        );
        // Past the window the entry goes; the skew check refuses such a request anyway.
        let later = now + 61;
        guard.spend(&keys[0], later, [2; 16], later).unwrap();
        assert_eq!(guard.len(), 1);
        // One key cannot take more than its share.
        let nonce = |i: usize| {
            let mut nonce = [9; 16];
            nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
            nonce
        };
        for i in 1..MAX_NONCES_PER_KEY {
            guard.spend(&keys[0], later, nonce(i), later).unwrap();
        }
        assert_eq!(
            guard.spend(&keys[0], later, [3; 16], later),
            Err(AuthError::Busy)
        );
        // Nor all of them together more than the total.
        for key in &keys[1..keys.len() - 1] {
            for i in 0..MAX_NONCES_PER_KEY {
                guard.spend(key, later, nonce(i), later).unwrap();
            }
        }
        assert_eq!(guard.len(), MAX_NONCES);
        assert_eq!(
            guard.spend(&keys[keys.len() - 1], later, [3; 16], later),
            Err(AuthError::Busy)
        );
        // Once the window has moved on, there is room again.
        guard
            .spend(&keys[0], later + 200, [3; 16], later + 200)
            .unwrap();
        assert_eq!(guard.len(), 1);
    }
}
