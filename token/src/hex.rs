//! Lower-case hexadecimal text for the byte strings the JSON APIs carry (ids, digests, links,
//! keys, signatures and whole signed tokens).
//!
//! Hex rather than base64 because these values end up in logs, URLs and command lines, where
//! hex needs no escaping and is easy to compare by eye.

use serde::{de, Deserialize, Deserializer, Serializer};

/// Why a hex string could not be turned into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    #[error("{found} hex digits cannot be whole bytes: the count is odd")]
    OddLength { found: usize },
    #[error("expected {expected} hex digits, found {found}")]
    Length { expected: usize, found: usize },
    #[error("character {position} is not a hex digit")]
    Digit { position: usize },
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Encodes bytes as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Decodes hex of any case into a vector.
pub fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    let digits = text.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(HexError::OddLength {
            found: digits.len(),
        });
    }
    digits
        .chunks_exact(2)
        .enumerate()
        .map(|(pair, chunk)| {
            let high = nibble(chunk[0]).ok_or(HexError::Digit { position: pair * 2 })?;
            let low = nibble(chunk[1]).ok_or(HexError::Digit {
                position: pair * 2 + 1,
            })?;
            Ok(high << 4 | low)
        })
        .collect()
}

/// Decodes hex into exactly `N` bytes.
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let bytes = decode(text)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| HexError::Length {
        expected: N * 2,
        found: text.len(),
    })
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Serializes bytes as a hex string.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&encode(bytes))
}

/// Deserializes a hex string of exactly `N` bytes.
pub fn deserialize_array<'de, D: Deserializer<'de>, const N: usize>(
    deserializer: D,
) -> Result<[u8; N], D::Error> {
    // `String` rather than `&str`: JSON strings with escapes cannot be borrowed.
    let text = String::deserialize(deserializer)?;
    decode_array(&text).map_err(de::Error::custom)
}

/// Deserializes a hex string of any length.
pub fn deserialize_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    decode(&text).map_err(de::Error::custom)
}

/// `#[serde(with = "crate::hex::signature")]` for ed25519 signatures.
pub mod signature {
    use ed25519_dalek::Signature;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        signature: &Signature,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        super::serialize(&signature.to_bytes(), serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Signature, D::Error> {
        super::deserialize_array(deserializer).map(|bytes| Signature::from_bytes(&bytes))
    }
}

/// `#[serde(with = "crate::hex::verifying_key")]` for ed25519 public keys.
pub mod verifying_key {
    use ed25519_dalek::VerifyingKey;
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &VerifyingKey, serializer: S) -> Result<S::Ok, S::Error> {
        super::serialize(key.as_bytes(), serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<VerifyingKey, D::Error> {
        let bytes = super::deserialize_array(deserializer)?;
        VerifyingKey::from_bytes(&bytes).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_accepts_upper_case() {
        let bytes = [0x00, 0x7f, 0x80, 0xff, 0x3c];
        assert_eq!(encode(&bytes), "007f80ff3c");
        assert_eq!(decode("007F80FF3c"), Ok(bytes.to_vec()));
    }

    #[test]
    fn rejects_odd_length_bad_digits_and_wrong_size() {
        assert_eq!(decode("abc"), Err(HexError::OddLength { found: 3 }));
        assert_eq!(decode("0g"), Err(HexError::Digit { position: 1 }));
        assert_eq!(
            decode_array::<2>("aabbcc"),
            Err(HexError::Length {
                expected: 4,
                found: 6
            })
        );
    }
}
