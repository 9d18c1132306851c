//! A followed console (`GET /v1/vms/{id}/console?follow=true`): the VM's output as it comes,
//! one [`ConsoleEvent`] a line, until the VM ends here.
//!
//! The stream reads the VM's bounded ring lazily, one frame at a time, only when the
//! connection asks for the next: a slow reader makes hostd hold nothing but its offset. If the
//! ring moved past that offset meanwhile, the reader is told how many bytes it missed and
//! goes on from the oldest byte still kept. Each follower holds one of the host's follower
//! permits for as long as it streams; hostd shutting down ends every stream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use laundromat_api::hostd::{ConsoleEnd, ConsoleEvent};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::console::ConsoleRing;
use crate::host::{Host, Phase, Vm};

/// Most console bytes in one event.
const FRAME_BYTES: usize = 16 * 1024;
/// How often a quiet stream checks whether its VM still runs here.
const END_CHECK: Duration = Duration::from_millis(250);
/// After the VM ended: how long its last output may take to reach the ring.
const LAST_OUTPUT: Duration = Duration::from_millis(100);
/// A quiet stream sends an empty line this often: writing is how a follower that went away
/// is noticed, and its place given back.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// What the stream sends next.
enum Frame {
    Event(ConsoleEvent),
    /// An empty line: nothing happened.
    Heartbeat,
}

/// One follower's position and what it waits on.
pub struct Follower {
    host: Arc<Host>,
    vm: Arc<Vm>,
    next: u64,
    written: watch::Receiver<u64>,
    shutting_down: watch::Receiver<bool>,
    /// Set once the VM ended: the last read, then the end.
    ended: Option<ConsoleEnd>,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl Follower {
    pub fn new(host: Arc<Host>, vm: Arc<Vm>, from: u64, permit: OwnedSemaphorePermit) -> Self {
        let written = vm.console.subscribe();
        let shutting_down = host.shutting_down.subscribe();
        Self {
            host,
            vm,
            next: from,
            written,
            shutting_down,
            ended: None,
            done: false,
            _permit: permit,
        }
    }

    /// The answer's body: the events as JSON lines.
    pub fn into_body(self) -> Body {
        let events = futures_util::stream::unfold(self, |mut follower| async move {
            let mut line = match follower.next_frame().await? {
                Frame::Event(event) => serde_json::to_vec(&event).unwrap_or_default(),
                Frame::Heartbeat => Vec::new(),
            };
            line.push(b'\n');
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                follower,
            ))
        });
        Body::from_stream(events)
    }

    /// Why the VM no longer runs here, if it does not.
    fn vm_ended(&self) -> Option<ConsoleEnd> {
        if *self.host.shutting_down.borrow() {
            return Some(ConsoleEnd::HostShutdown);
        }
        let here = self
            .host
            .vm(&self.vm.id)
            .is_some_and(|vm| Arc::ptr_eq(&vm, &self.vm));
        match self.vm.phase() {
            Phase::Moved => Some(ConsoleEnd::Moved),
            Phase::Stopping => Some(ConsoleEnd::Stopped),
            _ if !here => Some(ConsoleEnd::Stopped),
            _ => None,
        }
    }

    /// The next event, waiting for output if there is none (a heartbeat if it waited long);
    /// `None` after the end.
    async fn next_frame(&mut self) -> Option<Frame> {
        let quiet_until = tokio::time::Instant::now() + HEARTBEAT;
        loop {
            if self.done {
                return None;
            }
            // Everything written up to here is read below; a later write wakes the wait.
            self.written.borrow_and_update();
            if let Some(event) = read(&self.vm.console, &mut self.next, self.ended.is_some()) {
                return Some(Frame::Event(event));
            }
            if let Some(reason) = self.ended {
                self.done = true;
                let url = self.host.moved_to(&self.vm.id).map(|(_, url)| url);
                return Some(Frame::Event(ConsoleEvent::End {
                    next: self.next,
                    reason,
                    url: url.filter(|_| reason == ConsoleEnd::Moved),
                }));
            }
            if let Some(reason) = self.vm_ended() {
                self.ended = Some(reason);
                // The `vmm`'s last words may still be on their way through its FIFO.
                if reason != ConsoleEnd::HostShutdown {
                    tokio::time::sleep(LAST_OUTPUT).await;
                }
                continue;
            }
            if tokio::time::Instant::now() >= quiet_until {
                return Some(Frame::Heartbeat);
            }
            tokio::select! {
                _ = self.written.changed() => {}
                _ = self.shutting_down.changed() => {}
                _ = tokio::time::sleep(END_CHECK) => {}
            }
        }
    }
}

/// What the ring holds from `next` on, moving `next` past it: the bytes missed, or the bytes
/// (cut before a character still incomplete, unless `whole`), or nothing if the reader is up
/// to date.
fn read(ring: &ConsoleRing, next: &mut u64, whole: bool) -> Option<ConsoleEvent> {
    let chunk = ring.read_from(*next, FRAME_BYTES);
    if chunk.start > *next {
        let from = std::mem::replace(next, chunk.start);
        return Some(ConsoleEvent::Missed {
            from,
            to: chunk.start,
            bytes: chunk.start - from,
        });
    }
    let end = if whole {
        chunk.bytes.len()
    } else {
        text_end(&chunk.bytes)
    };
    if end == 0 {
        return None;
    }
    let bytes = &chunk.bytes[..end];
    let start = chunk.start;
    *next = start + end as u64;
    Some(ConsoleEvent::Output {
        start,
        next: *next,
        output: String::from_utf8_lossy(bytes).into_owned(),
    })
}

/// Where to cut `bytes` so that no character is split: before a trailing UTF-8 sequence whose
/// remaining bytes are still to come. Other bytes that are not UTF-8 are not held back.
fn text_end(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0xc0 == 0x80 {
            continue; // a continuation byte: its lead is further back
        }
        let needs = match byte {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 1,
        };
        return if needs > back { len - back } else { len };
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_fell_behind_is_told_what_it_missed() {
        let ring = ConsoleRing::new(8);
        let mut next = 0;
        ring.push(b"abc");
        assert_eq!(
            read(&ring, &mut next, false),
            Some(ConsoleEvent::Output {
                start: 0,
                next: 3,
                output: "abc".into()
            })
        );
        assert_eq!(read(&ring, &mut next, false), None, "up to date");
        // The reader stalls while the guest writes three times what the ring holds: the
        // stream kept only its offset, and learns what it lost.
        ring.push(b"0123456789abcdefghijklm");
        assert_eq!(
            read(&ring, &mut next, false),
            Some(ConsoleEvent::Missed {
                from: 3,
                to: 18,
                bytes: 15
            })
        );
        assert_eq!(
            read(&ring, &mut next, false),
            Some(ConsoleEvent::Output {
                start: 18,
                next: 26,
                output: "fghijklm".into()
            })
        );
    }

    #[test]
    fn characters_are_not_split_between_events() {
        let ring = ConsoleRing::new(64);
        let mut next = 0;
        let euro = "€".as_bytes();
        ring.push(b"price: ");
        ring.push(&euro[..2]);
        let Some(ConsoleEvent::Output {
            output, next: n, ..
        }) = read(&ring, &mut next, false)
        else {
            panic!("no output");
        };
        assert_eq!((output.as_str(), n), ("price: ", 7));
        assert_eq!(
            read(&ring, &mut next, false),
            None,
            "half a character waits"
        );
        let mut at_end = next;
        let Some(ConsoleEvent::Output { output, .. }) = read(&ring, &mut at_end, true) else {
            panic!("no output");
        };
        assert_eq!(output, "\u{fffd}", "at the end, what is left is sent");
        ring.push(&euro[2..]);
        let Some(ConsoleEvent::Output { output, .. }) = read(&ring, &mut next, false) else {
            panic!("no output");
        };
        assert_eq!(output, "€");
        // Bytes that are not text at all still move the stream on.
        ring.push(&[0xff, 0xfe]);
        let Some(ConsoleEvent::Output {
            output, next: n, ..
        }) = read(&ring, &mut next, false)
        else {
            panic!("no output");
        };
        assert_eq!((output.as_str(), n), ("\u{fffd}\u{fffd}", 12));
    }
}
