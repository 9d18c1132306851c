//! Fixed-size byte values with a type each, so that a token id can never be passed where a
//! host id or a chain link is expected. They print and parse as hex and serialize as hex
//! strings.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hex::{self, HexError};

macro_rules! byte_newtype {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// The encoded length in bytes.
            pub const LEN: usize = $len;

            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = HexError;

            fn from_str(text: &str) -> Result<Self, HexError> {
                hex::decode_array(text).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                hex::serialize(&self.0, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                hex::deserialize_array(deserializer).map(Self)
            }
        }
    };
}

byte_newtype!(
    /// A boot token's random 128-bit id. It is also the replay key hosts remember, the key the
    /// broker's ledger uses, and part of every chain link, which ties a chain to one token.
    TokenId,
    16
);
byte_newtype!(
    /// The cluster a token is for: its audience. Hosts only admit tokens for their cluster.
    ClusterId,
    16
);
byte_newtype!(
    /// A host's id in the broker's host registry.
    HostId,
    16
);
byte_newtype!(
    /// SHA-256 over a VM image: kernel, initrd and command line (see [`crate::image_digest()`]).
    ImageDigest,
    32
);
byte_newtype!(
    /// One link of a PayWord hash chain, w_i. The chain root w_0 and the seed w_n are links too.
    Link,
    32
);

impl TokenId {
    /// A fresh id from the operating system's random source. 128 random bits make collisions
    /// negligible, so the id can serve as a replay key without coordination.
    pub fn random() -> Self {
        let mut bytes = [0; Self::LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }
}

impl Link {
    /// A fresh secret chain seed w_n from the operating system's random source.
    pub fn random_seed() -> Self {
        let mut bytes = [0; Self::LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }
}

/// Which of the broker's signing keys signed a token, so that the broker can rotate keys
/// while tokens signed with the old key are still valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_parse_and_serialize_as_hex() {
        let id = TokenId([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "ab".repeat(16));
        assert_eq!(text.parse::<TokenId>(), Ok(id));
        assert_eq!(format!("{id:?}"), format!("TokenId({text})"));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<TokenId>(&json).unwrap(), id);
    }

    #[test]
    fn wrong_length_does_not_parse() {
        assert!("abcd".parse::<HostId>().is_err());
        assert!(serde_json::from_str::<Link>("\"abcd\"").is_err());
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(TokenId::random(), TokenId::random());
        assert_ne!(Link::random_seed(), Link::random_seed());
    }
}
