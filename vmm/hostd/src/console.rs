//! A VM's console output, kept as a bounded ring: a guest that floods its console costs the
//! host a fixed amount of memory, never more, and no disk at all.

use std::collections::VecDeque;
use std::sync::Mutex;

/// The last `capacity` bytes a guest wrote, and how many it wrote in all.
#[derive(Debug)]
pub struct ConsoleRing {
    inner: Mutex<Ring>,
    /// Bytes ever written, for followers to wait on: a watch keeps only the newest value, so
    /// a guest that writes fast costs a follower nothing while it is busy elsewhere.
    written: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug)]
struct Ring {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Bytes ever written; the offset just after the newest byte.
    total: u64,
    /// When the first byte arrived (Unix ms): the end of the guest's boot as a tenant sees it.
    first_at_ms: Option<u64>,
}

/// A read from the ring: the bytes from `start` (an absolute offset) up to `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    pub start: u64,
    pub next: u64,
    pub bytes: Vec<u8>,
}

impl ConsoleRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Ring {
                bytes: VecDeque::with_capacity(capacity.min(64 * 1024)),
                capacity: capacity.max(1),
                total: 0,
                first_at_ms: None,
            }),
            written: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver that changes whenever output arrives.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends output, dropping the oldest bytes beyond the capacity.
    pub fn push(&self, data: &[u8]) {
        let mut ring = self.lock();
        if ring.first_at_ms.is_none() && !data.is_empty() {
            ring.first_at_ms = Some(crate::host::now_ms());
        }
        ring.total = ring.total.saturating_add(data.len() as u64);
        let keep = data.len().min(ring.capacity);
        let data = &data[data.len() - keep..];
        let overflow = (ring.bytes.len() + data.len()).saturating_sub(ring.capacity);
        ring.bytes.drain(..overflow);
        ring.bytes.extend(data);
        let total = ring.total;
        drop(ring);
        self.written.send_replace(total);
    }

    /// The bytes from absolute offset `from` on, or from the oldest byte still kept if `from`
    /// has been overwritten, at most `max` of them.
    pub fn read_from(&self, from: u64, max: usize) -> ConsoleChunk {
        let ring = self.lock();
        let oldest = ring.total - ring.bytes.len() as u64;
        let start = from.clamp(oldest, ring.total);
        let skip = (start - oldest) as usize;
        let bytes: Vec<u8> = ring.bytes.iter().skip(skip).take(max).copied().collect();
        ConsoleChunk {
            start,
            next: start + bytes.len() as u64,
            bytes,
        }
    }

    /// Bytes ever written.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// When the first byte arrived (Unix ms), if one has.
    pub fn first_at_ms(&self) -> Option<u64> {
        self.lock().first_at_ms
    }

    /// Bytes held now (at most the capacity).
    pub fn held(&self) -> usize {
        self.lock().bytes.len()
    }

    /// The last `max` bytes as text, for error messages.
    pub fn tail_text(&self, max: usize) -> String {
        let total = self.total();
        let chunk = self.read_from(total.saturating_sub(max as u64), max);
        String::from_utf8_lossy(&chunk.bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_bytes() {
        let ring = ConsoleRing::new(8);
        ring.push(b"");
        assert_eq!(ring.first_at_ms(), None, "an empty write is not output");
        let before = crate::host::now_ms();
        ring.push(b"hello ");
        let first = ring.first_at_ms().expect("the first byte's time");
        assert!(first >= before && first <= crate::host::now_ms());
        ring.push(b"world, this is long");
        assert_eq!(ring.held(), 8);
        assert_eq!(ring.total(), 25);
        let chunk = ring.read_from(0, 100);
        assert_eq!(chunk.start, 17);
        assert_eq!(chunk.bytes, b" is long");
        assert_eq!(chunk.next, 25);
        assert_eq!(
            ring.first_at_ms(),
            Some(first),
            "later output keeps the first time"
        );
    }

    #[test]
    fn reads_resume_from_an_offset() {
        let ring = ConsoleRing::new(100);
        ring.push(b"abcdef");
        let first = ring.read_from(0, 4);
        assert_eq!((first.bytes.as_slice(), first.next), (&b"abcd"[..], 4));
        let rest = ring.read_from(first.next, 100);
        assert_eq!(rest.bytes, b"ef");
        assert_eq!(ring.read_from(99, 10).bytes, b"");
        assert_eq!(ring.tail_text(3), "def");
    }
}
