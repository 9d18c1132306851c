//! The framing of a state blob:
//!
//! ```text
//! magic "LNDRVMST" (8) | version u32 LE | payload length u64 LE | payload | CRC-32 u32 LE
//! ```
//! The payload is the bincode encoding of [`VmState`]; the CRC covers everything before it.
//! Decoding checks every length before using it and bounds the payload, so a corrupt or
//! hostile blob is an error, never a panic or a huge allocation.
use bincode::Options;

use super::VmState;

pub const MAGIC: [u8; 8] = *b"LNDRVMST";
/// The state format this `vmm` writes. Version 3 added the virtio-blk devices.
pub const VERSION: u32 = 3;
/// The oldest version it reads: version 2 states (no disks) are upgraded on reading.
pub const OLDEST_READABLE: u32 = 2;
/// No VM state comes near this; anything larger is corrupt.
pub const MAX_PAYLOAD: u64 = 64 << 20;
const HEADER: usize = 8 + 4 + 8;
const TRAILER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("the state is {0} bytes, too short to hold a header")]
    TooShort(usize),
    #[error("not a Laundromat VM state (bad magic)")]
    BadMagic,
    #[error(
        "state format version {found} is not supported: this vmm reads versions \
         {OLDEST_READABLE} to {VERSION}"
    )]
    UnsupportedVersion { found: u32 },
    #[error("the state header claims {claimed} payload bytes but {actual} are present")]
    LengthMismatch { claimed: u64, actual: u64 },
    #[error("the state payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u64),
    #[error("the state is corrupt: CRC {found:#010x}, expected {expected:#010x}")]
    BadCrc { found: u32, expected: u32 },
    #[error("the state payload does not decode")]
    Decode(#[source] bincode::Error),
    #[error("the state cannot be encoded")]
    Encode(#[source] bincode::Error),
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(MAX_PAYLOAD)
}

pub fn encode(state: &VmState) -> Result<Vec<u8>, FormatError> {
    let payload = codec().serialize(state).map_err(FormatError::Encode)?;
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<VmState, FormatError> {
    if bytes.len() < HEADER + TRAILER {
        return Err(FormatError::TooShort(bytes.len()));
    }
    let (header, rest) = bytes.split_at(HEADER);
    if header[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&header[8..12]);
    let version = u32::from_le_bytes(word);
    if !(OLDEST_READABLE..=VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let claimed = u64::from_le_bytes(len);
    if claimed > MAX_PAYLOAD {
        return Err(FormatError::TooLarge(claimed));
    }
    let actual = (rest.len() - TRAILER) as u64;
    if claimed != actual {
        return Err(FormatError::LengthMismatch { claimed, actual });
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - TRAILER);
    word.copy_from_slice(crc_bytes);
    let found = u32::from_le_bytes(word);
    let expected = crc32fast::hash(body);
    if found != expected {
        return Err(FormatError::BadCrc { found, expected });
    }
    let payload = &body[HEADER..];
    match version {
        2 => codec()
            .deserialize::<super::VmStateV2>(payload)
            .map(VmState::from)
            .map_err(FormatError::Decode),
        _ => codec().deserialize(payload).map_err(FormatError::Decode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BootMode;
    use crate::devices::serial::SerialSnapshot;
    use crate::persist::MachineState;

    fn sample() -> VmState {
        VmState {
            machine: MachineState {
                boot: BootMode::Bench,
                mem_mib: 64,
                vcpus: 1,
                cmdline: "workload=idle".into(),
                irqchip: false,
            },
            clock_ns: 123,
            vcpus: Vec::new(),
            irqchip: None,
            serial: SerialSnapshot::default(),
            boot_time_ns: Some(42),
            net: Vec::new(),
            disks: Vec::new(),
        }
    }

    #[test]
    fn a_version_2_state_is_read_as_one_without_disks() {
        // Version 2 is version 3's payload without the trailing disk list (an empty
        // Vec is its 8-byte length), framed with version 2 and its own CRC.
        let v3 = encode(&sample()).unwrap();
        let payload = &v3[HEADER..v3.len() - TRAILER - 8];
        let mut v2 = Vec::new();
        v2.extend_from_slice(&MAGIC);
        v2.extend_from_slice(&2u32.to_le_bytes());
        v2.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        v2.extend_from_slice(payload);
        let crc = crc32fast::hash(&v2);
        v2.extend_from_slice(&crc.to_le_bytes());
        let state = decode(&v2).unwrap();
        assert_eq!(state.machine, sample().machine);
        assert!(state.disks.is_empty());
        assert_eq!(encode(&state).unwrap(), v3);
        // A version 3 payload under a version 2 header does not decode (trailing bytes).
        let mut mislabeled = v3.clone();
        mislabeled[8] = 2;
        let n = mislabeled.len() - TRAILER;
        let crc = crc32fast::hash(&mislabeled[..n]);
        mislabeled[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&mislabeled), Err(FormatError::Decode(_))));
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let bytes = encode(&sample()).unwrap();
        let again = encode(&decode(&bytes).unwrap()).unwrap();
        assert_eq!(bytes, again);
    }

    #[test]
    fn rejects_every_kind_of_damage() {
        let good = encode(&sample()).unwrap();
        assert!(matches!(
            decode(&good[..10]),
            Err(FormatError::TooShort(10))
        ));
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert!(matches!(decode(&bad), Err(FormatError::BadMagic)));
        let mut newer = good.clone();
        newer[8] = 4;
        let err = decode(&newer).unwrap_err();
        assert!(matches!(err, FormatError::UnsupportedVersion { found: 4 }));
        assert!(err.to_string().contains("version 4 is not supported"));
        let mut older = good.clone();
        older[8] = 1;
        assert!(matches!(
            decode(&older),
            Err(FormatError::UnsupportedVersion { found: 1 })
        ));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(FormatError::LengthMismatch { .. })
        ));
        let mut flipped = good.clone();
        flipped[HEADER + 3] ^= 0x40;
        assert!(matches!(decode(&flipped), Err(FormatError::BadCrc { .. })));
        let mut huge = good.clone();
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(FormatError::TooLarge(_))));
    }

    #[test]
    fn any_single_bit_flip_is_rejected() {
        let good = encode(&sample()).unwrap();
        for bit in 0..good.len() * 8 {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&b).is_err(), "bit {bit} flip accepted");
        }
    }
}
