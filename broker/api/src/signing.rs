//! Request signatures: who sent a request, that it is the request they sent, and that it is
//! fresh.
//!
//! # What is signed
//!
//! The signer's ed25519 key signs
//!
//! ```text
//! DOMAIN ‖ timestamp (u64 BE) ‖ nonce (16) ‖ SHA-256(body) ‖ len(method) ‖ method
//!        ‖ len(path) ‖ path ‖ len(idempotency key) ‖ idempotency key
//! ```
//!
//! with each length a u16 big-endian and an absent idempotency key signed as the empty string.
//! The length prefixes make the split unambiguous; the domain keeps a request signature from
//! passing for a boot token or a claim signed by the same key. The path includes any query
//! string. Signing the idempotency key means a captured request cannot be replayed under a
//! fresh key to run it twice.
//!
//! # Headers
//!
//! [`KEY_HEADER`] (the signer's public key, hex), [`TIMESTAMP_HEADER`] (unix seconds),
//! [`NONCE_HEADER`] (16 random bytes, hex), [`SIGNATURE_HEADER`] (hex) and, for requests that move money, [`IDEMPOTENCY_HEADER`].
//! A timestamp more than [`MAX_SKEW_SECS`] from the verifier's clock, either way, is refused.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use token::hex;

/// Prefixed to every signed request.
pub const DOMAIN: &[u8] = b"laundromat/request/v1\0";
pub const KEY_HEADER: &str = "laundromat-key";
pub const TIMESTAMP_HEADER: &str = "laundromat-timestamp";
pub const SIGNATURE_HEADER: &str = "laundromat-signature";
pub const NONCE_HEADER: &str = "laundromat-nonce";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The largest clock difference, in seconds, between signer and verifier.
pub const MAX_SKEW_SECS: u64 = 60;
/// The longest idempotency key, as Stripe allows.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Why a request's signature was refused. The broker answers all of them with 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request is not signed: header {0} is missing")]
    MissingHeader(&'static str),
    #[error("header {0} is malformed")]
    MalformedHeader(&'static str),
    #[error("the signer's key is not a valid ed25519 public key")]
    BadKey,
    #[error("the request was signed at {timestamp}, more than {MAX_SKEW_SECS} s from now ({now})")]
    Skew { timestamp: u64, now: u64 },
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters")]
    BadIdempotencyKey,
    #[error("the method or the path is too long to sign")]
    TooLong,
}

/// A request whose signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSignature {
    pub key: VerifyingKey,
    pub timestamp: u64,
    /// The signed nonce: a verifier that refuses replays remembers it for the skew window.
    pub nonce: [u8; 16],
    pub signature: Signature,
    pub idempotency_key: Option<String>,
}

/// The headers that carry a signature, to add to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders(pub Vec<(&'static str, String)>);

/// The bytes a request signature covers.
pub fn message(
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
    nonce: &[u8; 16],
    idempotency_key: Option<&str>,
) -> Result<Vec<u8>, SignatureError> {
    let key = idempotency_key.unwrap_or("");
    let mut out = Vec::with_capacity(DOMAIN.len() + 64 + method.len() + path.len() + key.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&Sha256::digest(body));
    for part in [method, path, key] {
        let len = u16::try_from(part.len()).map_err(|_| SignatureError::TooLong)?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    Ok(out)
}

fn check_idempotency_key(key: &str) -> Result<(), SignatureError> {
    let visible = key.bytes().all(|byte| byte.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !visible {
        return Err(SignatureError::BadIdempotencyKey);
    }
    Ok(())
}

/// Signs a request at `timestamp` (unix seconds) with a fresh random nonce and returns the
/// headers to send.
pub fn sign(
    key: &SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
    idempotency_key: Option<&str>,
) -> Result<SignedHeaders, SignatureError> {
    sign_with_nonce(
        key,
        method,
        path,
        body,
        timestamp,
        &token::TokenId::random().0,
        idempotency_key,
    )
}

/// [`sign`] with a given nonce.
pub fn sign_with_nonce(
    key: &SigningKey,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: u64,
    nonce: &[u8; 16],
    idempotency_key: Option<&str>,
) -> Result<SignedHeaders, SignatureError> {
    if let Some(idempotency_key) = idempotency_key {
        check_idempotency_key(idempotency_key)?;
    }
    let signature = key.sign(&message(
        method,
        path,
        body,
        timestamp,
        nonce,
        idempotency_key,
    )?);
    let mut headers = vec![
        (KEY_HEADER, hex::encode(key.verifying_key().as_bytes())),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (NONCE_HEADER, hex::encode(nonce)),
        (SIGNATURE_HEADER, hex::encode(&signature.to_bytes())),
    ];
    if let Some(idempotency_key) = idempotency_key {
        headers.push((IDEMPOTENCY_HEADER, idempotency_key.to_owned()));
    }
    Ok(SignedHeaders(headers))
}

/// Checks a request's signature and freshness. `header` looks a header up by its lower-case
/// name; `now` is the verifier's clock in unix seconds.
pub fn verify<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    method: &str,
    path: &str,
    body: &[u8],
    now: u64,
) -> Result<RequestSignature, SignatureError> {
    let required = |name: &'static str| header(name).ok_or(SignatureError::MissingHeader(name));
    let key_bytes: [u8; 32] = hex::decode_array(required(KEY_HEADER)?)
        .map_err(|_| SignatureError::MalformedHeader(KEY_HEADER))?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| SignatureError::BadKey)?;
    let timestamp: u64 = required(TIMESTAMP_HEADER)?
        .parse()
        .map_err(|_| SignatureError::MalformedHeader(TIMESTAMP_HEADER))?;
    let signature_bytes: [u8; 64] = hex::decode_array(required(SIGNATURE_HEADER)?)
        .map_err(|_| SignatureError::MalformedHeader(SIGNATURE_HEADER))?;
    let signature = Signature::from_bytes(&signature_bytes);
    let nonce: [u8; 16] = hex::decode_array(required(NONCE_HEADER)?)
        .map_err(|_| SignatureError::MalformedHeader(NONCE_HEADER))?;
    let idempotency_key = header(IDEMPOTENCY_HEADER);
    if let Some(idempotency_key) = idempotency_key {
        check_idempotency_key(idempotency_key)?;
    }
    if timestamp.abs_diff(now) > MAX_SKEW_SECS {
        return Err(SignatureError::Skew { timestamp, now });
    }
    let signed = message(method, path, body, timestamp, &nonce, idempotency_key)?;
    key.verify_strict(&signed, &signature)
        .map_err(|_| SignatureError::BadSignature)?;
    Ok(RequestSignature {
        key,
        timestamp,
        nonce,
        signature,
        idempotency_key: idempotency_key.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    fn check(
        headers: &SignedHeaders,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<RequestSignature, SignatureError> {
        verify(
            |name| {
                headers
                    .0
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str())
            },
            method,
            path,
            body,
            now,
        )
    }

    #[test]
    fn a_signed_request_verifies() {
        let headers = sign(&key(), "POST", "/v1/tokens", b"{}", NOW, Some("k1")).unwrap();
        let verified = check(&headers, "POST", "/v1/tokens", b"{}", NOW + MAX_SKEW_SECS).unwrap();
        assert_eq!(verified.key, key().verifying_key());
        assert_eq!(verified.idempotency_key.as_deref(), Some("k1"));
    }

    #[test]
    fn every_signed_part_matters() {
        let headers = sign(&key(), "POST", "/v1/tokens", b"{}", NOW, Some("k1")).unwrap();
        assert_eq!(
            check(&headers, "PUT", "/v1/tokens", b"{}", NOW),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            check(&headers, "POST", "/v1/tokenz", b"{}", NOW),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            check(&headers, "POST", "/v1/tokens", b"{ }", NOW),
            Err(SignatureError::BadSignature)
        );
        let mut other_key = headers.clone();
        other_key.0[4].1 = "k2".into();
        assert_eq!(
            check(&other_key, "POST", "/v1/tokens", b"{}", NOW),
            Err(SignatureError::BadSignature)
        );
        let mut no_key = headers.clone();
        no_key.0.pop();
        assert_eq!(
            check(&no_key, "POST", "/v1/tokens", b"{}", NOW),
            Err(SignatureError::BadSignature)
        );
        let mut other_time = headers.clone();
        other_time.0[1].1 = (NOW + 1).to_string();
        assert_eq!(
            check(&other_time, "POST", "/v1/tokens", b"{}", NOW),
            Err(SignatureError::BadSignature)
        );
        let mut other_nonce = headers.clone();
        other_nonce.0[2].1 = hex::encode(&[9; 16]);
        assert_eq!(
            check(&other_nonce, "POST", "/v1/tokens", b"{}", NOW),
            Err(SignatureError::BadSignature)
        );
        let mut other_signer = headers;
        other_signer.0[0].1 =
            hex::encode(SigningKey::from_bytes(&[6; 32]).verifying_key().as_bytes());
        assert_eq!(
            check(&other_signer, "POST", "/v1/tokens", b"{}", NOW),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn stale_and_future_requests_are_refused() {
        let headers = sign(&key(), "GET", "/v1/account", b"", NOW, None).unwrap();
        for now in [NOW + MAX_SKEW_SECS + 1, NOW - MAX_SKEW_SECS - 1] {
            assert_eq!(
                check(&headers, "GET", "/v1/account", b"", now),
                Err(SignatureError::Skew {
                    timestamp: NOW,
                    now
                })
            );
        }
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let headers = sign(&key(), "GET", "/v1/account", b"", NOW, None).unwrap();
        let mut missing = headers.clone();
        missing.0.remove(3);
        assert_eq!(
            check(&missing, "GET", "/v1/account", b"", NOW),
            Err(SignatureError::MissingHeader(SIGNATURE_HEADER))
        );
        let mut malformed = headers;
        malformed.0[1].1 = "yesterday".into();
        assert_eq!(
            check(&malformed, "GET", "/v1/account", b"", NOW),
            Err(SignatureError::MalformedHeader(TIMESTAMP_HEADER))
        );
        assert_eq!(
            sign(&key(), "POST", "/", b"", NOW, Some("has space")),
            Err(SignatureError::BadIdempotencyKey)
        );
    }
}
