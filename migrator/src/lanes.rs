//! Spreading guest memory over several connections ("lanes").
//!
//! Memory is cut into fixed, aligned chunks of [`CHUNK`] bytes and chunk `k` always travels on
//! lane `k % lanes`. A page therefore always takes the same lane, and each lane is an ordered
//! stream, so a newer copy of a page can never overtake an older one: the destination applies
//! lanes independently, with no per-round barrier. Lane 0 also carries the control messages
//! and the VM state, in order. Before the state goes, each extra lane ends with `LaneEnd`, and
//! the destination waits for every lane's end before it applies the state.
//!
//! On the source, each extra lane has a writer thread, so encryption runs on as many cores as
//! there are lanes while the main thread reads guest memory.
use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::transport::SecureStream;
use crate::wire::{self, Message, MAX_PAGES_PER_FRAME, PAGE_SIZE};

/// The unit of memory assigned to one lane: one full `Pages` frame.
pub const CHUNK: u64 = MAX_PAGES_PER_FRAME * PAGE_SIZE;
/// Bytes a lane's writer takes at once; two batches per lane can be in flight.
const BATCH: usize = 1 << 20;
const WRITE_BUFFER: usize = 1 << 20;

/// Which lane carries the page at `gpa`.
pub fn lane_of(gpa: u64, lanes: usize) -> usize {
    ((gpa / CHUNK) % lanes as u64) as usize
}

/// What a lane's thread is given.
enum Work {
    Bytes(Vec<u8>),
    /// Send everything so far and `Sync`, wait for `Synced`, and say how that went.
    Sync(SyncSender<std::io::Result<()>>),
}

/// An extra lane on the source: batches go to a thread that encrypts and sends them.
struct LaneWriter {
    /// The connection's socket, to end it from this side when the migration fails.
    socket: std::net::TcpStream,
    batch: Vec<u8>,
    to_thread: Option<SyncSender<Work>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Result<(), std::io::Error>>>,
}

impl LaneWriter {
    fn new(stream: SecureStream) -> std::io::Result<Self> {
        let socket = stream.socket()?;
        let (to_thread, work) = sync_channel::<Work>(2);
        let (give_back, recycled) = sync_channel::<Vec<u8>>(4);
        let thread = std::thread::Builder::new()
            .name("migration-lane".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(WRITE_BUFFER, stream);
                for item in work {
                    match item {
                        Work::Bytes(mut batch) => {
                            out.write_all(&batch)?;
                            batch.clear();
                            let _ = give_back.try_send(batch);
                        }
                        Work::Sync(done) => {
                            let _ = done.send(sync(&mut out));
                        }
                    }
                }
                out.flush()
            })?;
        Ok(Self {
            socket,
            batch: Vec::with_capacity(BATCH),
            to_thread: Some(to_thread),
            recycled,
            thread: Some(thread),
        })
    }

    /// The thread's error once it stopped, or a generic one.
    fn thread_error(&mut self) -> std::io::Error {
        self.to_thread = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => std::io::Error::new(std::io::ErrorKind::BrokenPipe, "a migration lane failed"),
        }
    }

    fn send_batch(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let full = std::mem::replace(&mut self.batch, next);
        self.give(Work::Bytes(full))
    }

    fn give(&mut self, work: Work) -> std::io::Result<()> {
        let sent = self.to_thread.as_ref().map(|t| t.send(work));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.thread_error()),
        }
    }

    /// Starts a sync on the lane's thread; the answer comes on the returned channel.
    fn start_sync(&mut self) -> std::io::Result<Receiver<std::io::Result<()>>> {
        self.send_batch()?;
        let (done, answer) = sync_channel(1);
        self.give(Work::Sync(done))?;
        Ok(answer)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.batch.len() + bytes.len() > BATCH {
            self.send_batch()?;
        }
        self.batch.extend_from_slice(bytes);
        Ok(())
    }

    /// Ends the lane: `LaneEnd`, then waits until the thread has sent everything.
    fn finish(&mut self) -> std::io::Result<()> {
        self.write(&wire::encode(&Message::LaneEnd))?;
        self.send_batch()?;
        self.to_thread = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("a migration lane thread panicked")),
            None => Err(std::io::Error::other(
                "the migration lane was already finished",
            )),
        }
    }
}

/// The source's lanes beyond the first (which the caller writes itself).
pub struct ExtraLanes {
    lanes: Vec<LaneWriter>,
}

impl ExtraLanes {
    pub fn new(streams: impl IntoIterator<Item = SecureStream>) -> std::io::Result<Self> {
        let lanes = streams
            .into_iter()
            .map(LaneWriter::new)
            .collect::<Result<_, _>>()?;
        Ok(Self { lanes })
    }

    /// Writes the `Pages` frames for `data` at `gpa`, each on its chunk's lane (lane 0 is
    /// `first`). Returns the bytes put on the wire.
    pub fn pages(&mut self, first: &mut impl Write, gpa: u64, data: &[u8]) -> std::io::Result<u64> {
        let mut bytes = 0;
        for (at, part) in split(gpa, data.len() as u64) {
            let start = (at - gpa) as usize;
            let piece = &data[start..start + part as usize];
            let header = wire::pages_header(at, part / PAGE_SIZE);
            match lane_of(at, self.lanes.len() + 1) {
                0 => {
                    first.write_all(&header)?;
                    first.write_all(piece)?;
                }
                k => {
                    let lane = &mut self.lanes[k - 1];
                    lane.write(&header)?;
                    lane.write(piece)?;
                }
            }
            bytes += (header.len() + piece.len()) as u64;
        }
        Ok(bytes)
    }

    /// Writes the `Zero` frames for `pages` pages at `gpa`, each on its chunk's lane.
    pub fn zero(&mut self, first: &mut impl Write, gpa: u64, pages: u64) -> std::io::Result<u64> {
        let mut bytes = 0;
        for (at, len) in split(gpa, pages * PAGE_SIZE) {
            let frame = wire::encode(&Message::Zero {
                gpa: at,
                pages: len / PAGE_SIZE,
            });
            match lane_of(at, self.lanes.len() + 1) {
                0 => first.write_all(&frame)?,
                k => self.lanes[k - 1].write(&frame)?,
            }
            bytes += frame.len() as u64;
        }
        Ok(bytes)
    }

    /// After a failure: shuts every extra lane's connection down, so that a thread blocked
    /// on a peer that vanished fails now rather than at its write timeout, and the threads are
    /// left to end on their own.
    pub fn abandon(&mut self) {
        for lane in self.lanes.drain(..) {
            let _ = lane.socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Ends every extra lane and waits until each has sent all it was given.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.lanes.iter_mut().try_for_each(LaneWriter::finish)
    }

    /// Asks the destination, on every extra lane, to answer once it has applied everything
    /// sent on that lane so far. The caller syncs the first lane itself, then waits here.
    pub fn start_sync(&mut self) -> std::io::Result<PendingSync> {
        let answers = self
            .lanes
            .iter_mut()
            .map(LaneWriter::start_sync)
            .collect::<std::io::Result<_>>()?;
        Ok(PendingSync(answers))
    }
}

/// Syncs under way on the extra lanes.
pub struct PendingSync(Vec<Receiver<std::io::Result<()>>>);

impl PendingSync {
    /// Waits for every extra lane's `Synced`.
    pub fn wait(self) -> std::io::Result<()> {
        for answer in self.0 {
            answer
                .recv()
                .map_err(|_| std::io::Error::other("a migration lane stopped during a sync"))??;
        }
        Ok(())
    }
}

/// Sends `Sync` after everything buffered in `out` and waits for the destination's `Synced`.
fn sync(out: &mut BufWriter<SecureStream>) -> std::io::Result<()> {
    wire::send(out, &Message::Sync).map_err(std::io::Error::other)?;
    wire::expect(out.get_mut(), wire::Tag::Synced, "synced").map_err(std::io::Error::other)?;
    Ok(())
}

/// Cuts `[gpa, gpa + len)` at chunk boundaries.
fn split(gpa: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = gpa + len;
    let mut at = gpa;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / CHUNK) + 1) * CHUNK;
        let part = next.min(end) - at;
        let piece = (at, part);
        at += part;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_at_chunk_boundaries_and_keep_their_lane() {
        let pieces: Vec<_> = split(CHUNK - PAGE_SIZE, 3 * PAGE_SIZE).collect();
        assert_eq!(
            pieces,
            vec![(CHUNK - PAGE_SIZE, PAGE_SIZE), (CHUNK, 2 * PAGE_SIZE)]
        );
        assert_eq!(split(0, CHUNK).count(), 1);
        assert_eq!(split(5 * PAGE_SIZE, 0).count(), 0);
        for (at, len) in split(3 * PAGE_SIZE, 5 * CHUNK) {
            // A piece never spans two lanes' chunks.
            assert_eq!(lane_of(at, 3), lane_of(at + len - PAGE_SIZE, 3));
        }
        assert_eq!(lane_of(0, 1), 0);
        assert_eq!(lane_of(CHUNK, 2), 1);
        assert_eq!(lane_of(2 * CHUNK + 5, 2), 0);
    }
}
