//! The message a tenant sends a host to pay: the newest link it reveals.

use serde::{Deserialize, Serialize};

use crate::ids::{Link, TokenId};

/// Pays for the VM running under `token_id` up to link `index`. One message can pay for
/// several links at once: only the newest link is sent, and the verifier hashes it down to
/// the last one it accepted. Links are public once sent, so the message needs no signature:
/// only the seed's holder could have computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub token_id: TokenId,
    pub index: u64,
    pub link: Link,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_with_hex_bytes() {
        let payment = Payment {
            token_id: TokenId([1; 16]),
            index: 42,
            link: Link([2; 32]),
        };
        let json = serde_json::to_value(payment).unwrap();
        assert_eq!(json["index"], 42);
        assert_eq!(json["link"], "02".repeat(32));
        assert_eq!(serde_json::from_value::<Payment>(json).unwrap(), payment);
    }
}
