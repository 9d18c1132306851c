//! Signed requests: a tenant (or the operator) proves who sends a request by signing its
//! method, path, body hash and a timestamp with its ed25519 key.
//!
//! The signed message is `laundromat/request/v1\0 ‖ METHOD \n PATH \n hex(SHA-256(body)) \n
//! TIMESTAMP`, the timestamp in unix seconds. The headers are `x-laundromat-timestamp` and
//! `x-laundromat-signature` (64-byte signature, hex). A request is accepted within
//! [`MAX_SKEW_S`] of the server's clock. The broker builds the same scheme in the shared
//! `laundromat-api` module; this module is kept small so that it can be swapped for it.

use axum::http::HeaderMap;
use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};
use token::{Signature, SigningKey, VerifyingKey};

pub const TIMESTAMP_HEADER: &str = "x-laundromat-timestamp";
pub const SIGNATURE_HEADER: &str = "x-laundromat-signature";
/// How far a request's timestamp may be from the server's clock, either way.
pub const MAX_SKEW_S: u64 = 60;
const DOMAIN: &[u8] = b"laundromat/request/v1\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the request is not signed: it needs the {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers"
    )]
    Unsigned,
    #[error("the request's signature or timestamp header is malformed")]
    Malformed,
    #[error("the request was signed at {signed_at}, more than {MAX_SKEW_S} s from now ({now})")]
    Skew { signed_at: u64, now: u64 },
    #[error("the request is not signed by the key that owns this VM")]
    BadSignature,
}

fn message(method: &str, path: &str, body: &[u8], timestamp: u64) -> Vec<u8> {
    let body_hash = token::hex::encode(&Sha256::digest(body));
    let mut out = DOMAIN.to_vec();
    out.extend_from_slice(format!("{method}\n{path}\n{body_hash}\n{timestamp}").as_bytes());
    out
}

/// The header values that sign a request.
pub fn sign(
    key: &SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
) -> [(&'static str, String); 2] {
    let signature = key.sign(&message(method, path, body, timestamp));
    [
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (SIGNATURE_HEADER, token::hex::encode(&signature.to_bytes())),
    ]
}

/// Checks that the request was signed by `key` within the allowed skew of `now`.
pub fn verify(
    key: &VerifyingKey,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &HeaderMap,
    now: u64,
) -> Result<(), AuthError> {
    let (Some(timestamp), Some(signature)) =
        (headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER))
    else {
        return Err(AuthError::Unsigned);
    };
    let timestamp: u64 = timestamp
        .to_str()
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(AuthError::Malformed)?;
    let signature: [u8; 64] = signature
        .to_str()
        .ok()
        .and_then(|s| token::hex::decode_array(s).ok())
        .ok_or(AuthError::Malformed)?;
    if timestamp.abs_diff(now) > MAX_SKEW_S {
        return Err(AuthError::Skew {
            signed_at: timestamp,
            now,
        });
    }
    key.verify_strict(
        &message(method, path, body, timestamp),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| AuthError::BadSignature)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: [(&'static str, String); 2]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name, HeaderValue::from_str(&value).unwrap());
        }
        map
    }

    #[test]
    fn accepts_its_own_signature_and_refuses_everything_else() {
        let tenant = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let now = 1_700_000_000;
        let signed = headers(sign(&tenant, "DELETE", "/v1/vms/ab", b"", now));
        let key = tenant.verifying_key();
        assert_eq!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &signed, now + 60),
            Ok(())
        );
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
            ("DELETE", "/v1/vms/ab", b"x"),
        ] {
            assert_eq!(
                verify(&key, method, path, body, &signed, now),
                Err(AuthError::BadSignature)
            );
        }
        assert_eq!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &signed, now + 61),
            Err(AuthError::Skew {
                signed_at: now,
                now: now + 61
            })
        );
        assert_eq!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &HeaderMap::new(), now),
            Err(AuthError::Unsigned)
        );
        let mut bad = signed.clone();
        bad.insert(SIGNATURE_HEADER, HeaderValue::from_static("zz"));
        assert_eq!(
            verify(&key, "DELETE", "/v1/vms/ab", b"", &bad, now),
            Err(AuthError::Malformed)
        );
    }
}
