//! Mutual authentication with a shared migration key, before any state moves.
//!
//! ```text
//! source -> Hello { version, nonce_s }
//! dest   -> Challenge { version, nonce_d, HMAC(key, "dest" | nonce_s | nonce_d) }
//! source -> Auth { HMAC(key, "source" | nonce_d | nonce_s) }
//! ```
//! Each side proves it holds the key over the other's fresh nonce, so neither a replayed
//! session nor a reflected MAC passes. The destination rejects an unknown version with an
//! `Abort` naming both versions. The stream after the handshake is not encrypted: hosts are
//! expected to migrate over their own network (or a tunnel).
use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::wire::{self, Message, Tag, WireError, MAC_LEN, NONCE_LEN, PROTOCOL_VERSION};

/// Shortest key we accept: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the migration key must be hex, at least {MIN_KEY_BYTES} bytes")]
    BadKey,
    #[error(
        "the peer speaks migration protocol version {theirs}; this vmm speaks {PROTOCOL_VERSION}"
    )]
    Version { theirs: u32 },
    #[error("the peer does not hold the migration key")]
    AuthFailed,
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// A validated migration key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn from_hex(hex: &str) -> Result<Self, HandshakeError> {
        let hex = hex.trim();
        if !hex.len().is_multiple_of(2) || hex.len() < 2 * MIN_KEY_BYTES {
            return Err(HandshakeError::BadKey);
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect();
        bytes.map(Key).ok_or(HandshakeError::BadKey)
    }

    fn hmac(&self, role: &[u8], a: &[u8], b: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of every length, so this cannot fail.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        m.update(b"laundromat-migration/");
        m.update(role);
        m.update(a);
        m.update(b);
        m
    }

    fn mac(&self, role: &[u8], a: &[u8], b: &[u8]) -> [u8; MAC_LEN] {
        self.hmac(role, a, b).finalize().into_bytes().into()
    }

    /// Checks `mac` in constant time.
    fn verify(&self, role: &[u8], a: &[u8], b: &[u8], mac: &[u8; MAC_LEN]) -> bool {
        self.hmac(role, a, b).verify_slice(mac).is_ok()
    }
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// The source's half: returns once both sides are authenticated.
pub fn connect<S: Read + Write>(s: &mut S, key: &Key) -> Result<(), HandshakeError> {
    let nonce_s = nonce();
    wire::send(
        s,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            nonce: nonce_s,
        },
    )?;
    let Message::Challenge {
        version,
        nonce: nonce_d,
        mac,
    } = wire::expect(s, Tag::Challenge, "a challenge")?
    else {
        unreachable!("expect returns the requested tag")
    };
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { theirs: version });
    }
    if !key.verify(b"dest", &nonce_s, &nonce_d, &mac) {
        let _ = wire::send(s, &Message::Abort("authentication failed".into()));
        return Err(HandshakeError::AuthFailed);
    }
    wire::send(
        s,
        &Message::Auth {
            mac: key.mac(b"source", &nonce_d, &nonce_s),
        },
    )?;
    Ok(())
}

/// The destination's half: returns once both sides are authenticated.
pub fn accept<S: Read + Write>(s: &mut S, key: &Key) -> Result<(), HandshakeError> {
    let Message::Hello {
        version,
        nonce: nonce_s,
    } = wire::expect(s, Tag::Hello, "a hello")?
    else {
        unreachable!("expect returns the requested tag")
    };
    if version != PROTOCOL_VERSION {
        let why = format!(
            "unsupported migration protocol version {version}; this vmm speaks {PROTOCOL_VERSION}"
        );
        let _ = wire::send(s, &Message::Abort(why));
        return Err(HandshakeError::Version { theirs: version });
    }
    let nonce_d = nonce();
    let mac = key.mac(b"dest", &nonce_s, &nonce_d);
    wire::send(
        s,
        &Message::Challenge {
            version: PROTOCOL_VERSION,
            nonce: nonce_d,
            mac,
        },
    )?;
    let Message::Auth { mac } = wire::expect(s, Tag::Auth, "authentication")? else {
        unreachable!("expect returns the requested tag")
    };
    if !key.verify(b"source", &nonce_d, &nonce_s, &mac) {
        let _ = wire::send(s, &Message::Abort("authentication failed".into()));
        return Err(HandshakeError::AuthFailed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn key(b: u8) -> Key {
        Key(vec![b; 32])
    }

    fn run(src_key: Key, dst_key: Key) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || accept(&mut b, &dst_key));
        let src = connect(&mut a, &src_key);
        drop(a);
        (src, t.join().unwrap())
    }

    #[test]
    fn matching_keys_authenticate() {
        let (s, d) = run(key(1), key(1));
        s.unwrap();
        d.unwrap();
    }

    #[test]
    fn a_wrong_key_fails_on_both_sides() {
        let (s, d) = run(key(1), key(2));
        assert!(matches!(s, Err(HandshakeError::AuthFailed)));
        assert!(d.is_err());
    }

    #[test]
    fn an_unknown_version_is_rejected_with_a_reason() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || accept(&mut b, &key(1)));
        wire::send(
            &mut a,
            &Message::Hello {
                version: 99,
                nonce: [0; NONCE_LEN],
            },
        )
        .unwrap();
        let reply = wire::recv(&mut a).unwrap();
        assert!(matches!(reply, Message::Abort(ref why) if why.contains("version 99")));
        assert!(matches!(
            t.join().unwrap(),
            Err(HandshakeError::Version { theirs: 99 })
        ));
    }

    #[test]
    fn keys_must_be_long_hex() {
        assert!(Key::from_hex("abcd").is_err());
        assert!(Key::from_hex(&"zz".repeat(16)).is_err());
        assert!(Key::from_hex(&"0f".repeat(16)).is_ok());
    }
}
