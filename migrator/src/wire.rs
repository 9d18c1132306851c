//! The migration wire protocol: length-framed messages inside the TLS channel
//! ([`crate::transport`]), on one or more connections ("lanes").
//!
//! ```text
//! frame   = tag u8 | 3 reserved bytes (zero) | payload length u32 LE | payload
//! ```
//! Every frame is bounds-checked before its payload is read: the tag must be known, the
//! reserved bytes zero, and the length exactly right for fixed-size messages or within the
//! tag's limit for variable ones. `Pages` payloads (a guest address, then whole pages) are
//! not buffered: the receiver reads them straight into guest memory after checking the range.
use std::io::{Read, Write};

/// Identifies the protocol in the first message.
pub const MAGIC: [u8; 8] = *b"LNDRMIGR";
/// The protocol version this build speaks. Version 2 runs inside mutual TLS and may use
/// several connections; version 3 adds `Sync`/`Synced`; version 1 (a shared-key handshake,
/// plaintext) is gone.
pub const PROTOCOL_VERSION: u32 = 3;
pub const PAGE_SIZE: u64 = 4096;
/// Most pages in one `Pages` frame (8 MiB).
pub const MAX_PAGES_PER_FRAME: u64 = 2048;
/// Largest machine description and VM state we accept.
pub const MAX_MACHINE: u32 = 64 << 10;
pub const MAX_STATE: u32 = 64 << 20;
pub const MAX_ABORT: u32 = 4096;
/// Random identifier of one migration, so extra connections join the right one.
pub const SESSION_LEN: usize = 16;
/// Most connections one migration may use.
pub const MAX_LANES: u16 = 16;
pub const HEADER_LEN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Hello = 1,
    Welcome = 2,
    // 3 was `Auth` in version 1.
    Machine = 4,
    Pages = 5,
    Zero = 6,
    RoundEnd = 7,
    State = 8,
    Ready = 9,
    Commit = 10,
    Running = 11,
    Abort = 12,
    LaneEnd = 13,
    Sync = 14,
    Synced = 15,
}

impl Tag {
    fn from_u8(v: u8) -> Option<Self> {
        use Tag::*;
        [
            Hello, Welcome, Machine, Pages, Zero, RoundEnd, State, Ready, Commit, Running, Abort,
            LaneEnd, Sync, Synced,
        ]
        .into_iter()
        .find(|t| *t as u8 == v)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("connection failed")]
    Io(#[from] std::io::Error),
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("malformed {tag:?} frame: {why}")]
    Malformed { tag: Tag, why: String },
    #[error("nonzero reserved bytes in a frame header")]
    Reserved,
    #[error("expected {expected}, got {got:?}")]
    Unexpected { expected: &'static str, got: Tag },
    #[error("the peer aborted: {0}")]
    PeerAborted(String),
}

/// A decoded message. `Pages` carries only its header: `len` bytes of page data follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The first message on every connection: lane `lane` of `lanes` for migration `session`.
    Hello {
        version: u32,
        session: [u8; SESSION_LEN],
        lane: u16,
        lanes: u16,
    },
    /// The destination's answer to an accepted `Hello`.
    Welcome {
        version: u32,
    },
    /// The machine description (opaque to the protocol) and its RAM size in bytes.
    Machine {
        ram_bytes: u64,
        blob: Vec<u8>,
    },
    Pages {
        gpa: u64,
        len: u64,
    },
    /// `pages` pages starting at `gpa` are now all zero.
    Zero {
        gpa: u64,
        pages: u64,
    },
    RoundEnd {
        round: u32,
    },
    State(Vec<u8>),
    Ready,
    Commit,
    Running,
    Abort(String),
    /// The last message on an extra lane: every page it carried has been sent.
    LaneEnd,
    /// Asks the destination to answer `Synced` on this connection once it has applied
    /// everything sent on it before.
    Sync,
    Synced,
}

impl Message {
    pub fn tag(&self) -> Tag {
        match self {
            Message::Hello { .. } => Tag::Hello,
            Message::Welcome { .. } => Tag::Welcome,
            Message::Machine { .. } => Tag::Machine,
            Message::Pages { .. } => Tag::Pages,
            Message::Zero { .. } => Tag::Zero,
            Message::RoundEnd { .. } => Tag::RoundEnd,
            Message::State(_) => Tag::State,
            Message::Ready => Tag::Ready,
            Message::Commit => Tag::Commit,
            Message::Running => Tag::Running,
            Message::Abort(_) => Tag::Abort,
            Message::LaneEnd => Tag::LaneEnd,
            Message::Sync => Tag::Sync,
            Message::Synced => Tag::Synced,
        }
    }
}

pub fn header(tag: Tag, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = tag as u8;
    h[4..].copy_from_slice(&len.to_le_bytes());
    h
}

/// The frame header and the first 8 payload bytes of a `Pages` frame for `pages` pages.
pub fn pages_header(gpa: u64, pages: u64) -> [u8; HEADER_LEN + 8] {
    let mut h = [0u8; HEADER_LEN + 8];
    h[..HEADER_LEN].copy_from_slice(&header(Tag::Pages, (8 + pages * PAGE_SIZE) as u32));
    h[HEADER_LEN..].copy_from_slice(&gpa.to_le_bytes());
    h
}

/// Encodes any message but `Pages` (whose data the sender writes itself).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut payload = Vec::new();
    match msg {
        Message::Hello {
            version,
            session,
            lane,
            lanes,
        } => {
            payload.extend_from_slice(&MAGIC);
            payload.extend_from_slice(&version.to_le_bytes());
            payload.extend_from_slice(session);
            payload.extend_from_slice(&lane.to_le_bytes());
            payload.extend_from_slice(&lanes.to_le_bytes());
        }
        Message::Welcome { version } => payload.extend_from_slice(&version.to_le_bytes()),
        Message::Machine { ram_bytes, blob } => {
            payload.extend_from_slice(&ram_bytes.to_le_bytes());
            payload.extend_from_slice(blob);
        }
        Message::Pages { gpa, .. } => payload.extend_from_slice(&gpa.to_le_bytes()),
        Message::Zero { gpa, pages } => {
            payload.extend_from_slice(&gpa.to_le_bytes());
            payload.extend_from_slice(&pages.to_le_bytes());
        }
        Message::RoundEnd { round } => payload.extend_from_slice(&round.to_le_bytes()),
        Message::State(s) => payload.extend_from_slice(s),
        Message::Ready
        | Message::Commit
        | Message::Running
        | Message::LaneEnd
        | Message::Sync
        | Message::Synced => {}
        Message::Abort(why) => {
            let b = why.as_bytes();
            payload.extend_from_slice(&b[..b.len().min(MAX_ABORT as usize)]);
        }
    }
    let mut out = header(msg.tag(), payload.len() as u32).to_vec();
    out.extend_from_slice(&payload);
    out
}

pub fn send<W: Write>(w: &mut W, msg: &Message) -> Result<(), WireError> {
    w.write_all(&encode(msg))?;
    w.flush()?;
    Ok(())
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), WireError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => WireError::Closed,
        _ => WireError::Io(e),
    })
}

fn malformed(tag: Tag, why: impl Into<String>) -> WireError {
    WireError::Malformed {
        tag,
        why: why.into(),
    }
}

fn exact(tag: Tag, len: u32, want: u32) -> Result<(), WireError> {
    match len == want {
        true => Ok(()),
        false => Err(malformed(tag, format!("{len} bytes, expected {want}"))),
    }
}

fn at_most(tag: Tag, len: u32, max: u32) -> Result<(), WireError> {
    match len <= max {
        true => Ok(()),
        false => Err(malformed(
            tag,
            format!("{len} bytes, more than the {max} allowed"),
        )),
    }
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array(&b[at..at + 2]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array(&b[at..at + 4]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array(&b[at..at + 8]))
}

/// Reads one frame. For `Pages` the caller must then consume exactly `len` bytes.
pub fn recv<R: Read>(r: &mut R) -> Result<Message, WireError> {
    let mut h = [0u8; HEADER_LEN];
    read_exact(r, &mut h)?;
    let tag = Tag::from_u8(h[0]).ok_or(WireError::UnknownTag(h[0]))?;
    if h[1..4] != [0, 0, 0] {
        return Err(WireError::Reserved);
    }
    let len = u32_at(&h, 4);
    // Check the length for the tag before reading (or allocating) anything.
    match tag {
        Tag::Hello => exact(tag, len, (8 + 4 + SESSION_LEN + 4) as u32)?,
        Tag::Welcome => exact(tag, len, 4)?,
        Tag::Machine => {
            at_most(tag, len, 8 + MAX_MACHINE)?;
            if len < 8 {
                return Err(malformed(tag, "shorter than its RAM size field"));
            }
        }
        Tag::Pages => {
            let data = u64::from(len)
                .checked_sub(8)
                .ok_or_else(|| malformed(tag, "no address"))?;
            if data == 0 || data % PAGE_SIZE != 0 || data / PAGE_SIZE > MAX_PAGES_PER_FRAME {
                return Err(malformed(
                    tag,
                    format!("{data} data bytes is not 1 to {MAX_PAGES_PER_FRAME} whole pages"),
                ));
            }
        }
        Tag::Zero => exact(tag, len, 16)?,
        Tag::RoundEnd => exact(tag, len, 4)?,
        Tag::State => at_most(tag, len, MAX_STATE)?,
        Tag::Ready | Tag::Commit | Tag::Running | Tag::LaneEnd | Tag::Sync | Tag::Synced => {
            exact(tag, len, 0)?
        }
        Tag::Abort => at_most(tag, len, MAX_ABORT)?,
    }
    let payload_len = if tag == Tag::Pages { 8 } else { len as usize };
    let mut p = vec![0u8; payload_len];
    read_exact(r, &mut p)?;
    Ok(match tag {
        Tag::Hello => {
            if p[..8] != MAGIC {
                return Err(malformed(tag, "not a Laundromat migration stream"));
            }
            Message::Hello {
                version: u32_at(&p, 8),
                session: array(&p[12..]),
                lane: u16_at(&p, 12 + SESSION_LEN),
                lanes: u16_at(&p, 14 + SESSION_LEN),
            }
        }
        Tag::Welcome => Message::Welcome {
            version: u32_at(&p, 0),
        },
        Tag::Machine => Message::Machine {
            ram_bytes: u64_at(&p, 0),
            blob: p[8..].to_vec(),
        },
        Tag::Pages => Message::Pages {
            gpa: u64_at(&p, 0),
            len: u64::from(len) - 8,
        },
        Tag::Zero => {
            let (gpa, pages) = (u64_at(&p, 0), u64_at(&p, 8));
            if gpa % PAGE_SIZE != 0 || pages == 0 {
                return Err(malformed(tag, "unaligned address or no pages"));
            }
            Message::Zero { gpa, pages }
        }
        Tag::RoundEnd => Message::RoundEnd {
            round: u32_at(&p, 0),
        },
        Tag::State => Message::State(p),
        Tag::Ready => Message::Ready,
        Tag::Commit => Message::Commit,
        Tag::Running => Message::Running,
        Tag::Abort => Message::Abort(String::from_utf8_lossy(&p).into_owned()),
        Tag::LaneEnd => Message::LaneEnd,
        Tag::Sync => Message::Sync,
        Tag::Synced => Message::Synced,
    })
}

/// Receives a message that must have tag `want`; an `Abort` becomes [`WireError::PeerAborted`].
pub fn expect<R: Read>(r: &mut R, want: Tag, what: &'static str) -> Result<Message, WireError> {
    match recv(r)? {
        m if m.tag() == want => Ok(m),
        Message::Abort(why) => Err(WireError::PeerAborted(why)),
        m => Err(WireError::Unexpected {
            expected: what,
            got: m.tag(),
        }),
    }
}

/// Decodes a whole stream as a receiver would, skipping page data. This is the decoder's
/// model for property tests and the fuzz target.
pub fn decode_stream(mut bytes: &[u8]) -> Result<Vec<Message>, WireError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let m = recv(&mut bytes)?;
        if let Message::Pages { len, .. } = m {
            let len = usize::try_from(len).map_err(|_| WireError::Closed)?;
            if bytes.len() < len {
                return Err(WireError::Closed);
            }
            bytes = &bytes[len..];
        }
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                session: [7; SESSION_LEN],
                lane: 1,
                lanes: 2,
            },
            Message::Welcome { version: 2 },
            Message::Machine {
                ram_bytes: 1 << 30,
                blob: b"machine".to_vec(),
            },
            Message::Zero {
                gpa: 0x1000,
                pages: 3,
            },
            Message::RoundEnd { round: 4 },
            Message::State(vec![9; 100]),
            Message::Ready,
            Message::Commit,
            Message::Running,
            Message::Abort("no".into()),
            Message::LaneEnd,
            Message::Sync,
            Message::Synced,
        ]
    }

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        for m in samples() {
            s.extend_from_slice(&encode(&m));
        }
        s.extend_from_slice(&pages_header(0x2000, 2));
        s.extend_from_slice(&[0xab; 2 * PAGE_SIZE as usize]);
        s
    }

    #[test]
    fn every_message_round_trips() {
        let got = decode_stream(&stream()).unwrap();
        let mut want = samples();
        want.push(Message::Pages {
            gpa: 0x2000,
            len: 2 * PAGE_SIZE,
        });
        assert_eq!(got, want);
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let s = stream();
        for cut in 1..s.len() {
            let r = decode_stream(&s[..cut]);
            // A cut exactly between frames decodes the frames before it.
            if let Ok(msgs) = r {
                let again: Vec<u8> = msgs.iter().flat_map(encode).collect();
                assert_eq!(&s[..again.len()], &again[..], "cut {cut}");
                assert_eq!(again.len(), cut, "cut {cut} decoded as a whole stream");
            }
        }
    }

    #[test]
    fn hostile_headers_are_rejected_before_any_allocation() {
        let mut huge = header(Tag::State, u32::MAX).to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            recv(&mut &huge[..]),
            Err(WireError::Malformed { .. })
        ));
        let odd_pages = pages_header(0, 1);
        let mut bad = odd_pages.to_vec();
        bad[4..8].copy_from_slice(&(8u32 + 100).to_le_bytes());
        assert!(matches!(
            recv(&mut &bad[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut unknown = header(Tag::Ready, 0);
        unknown[0] = 200;
        assert!(matches!(
            recv(&mut &unknown[..]),
            Err(WireError::UnknownTag(200))
        ));
        let mut reserved = header(Tag::Ready, 0);
        reserved[2] = 1;
        assert!(matches!(recv(&mut &reserved[..]), Err(WireError::Reserved)));
        let mut hello = encode(&samples()[0]);
        hello[HEADER_LEN] ^= 1;
        assert!(matches!(
            recv(&mut &hello[..]),
            Err(WireError::Malformed { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_stream(&bytes);
        }

        #[test]
        fn mutated_streams_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut s = stream();
            let n = s.len();
            for (at, v) in flips {
                s[at % n] ^= v | 1;
            }
            let _ = decode_stream(&s);
        }
    }
}
