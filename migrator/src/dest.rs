//! The receiving side. The destination waits for its authenticated source
//! ([`transport::accept`]), learns the machine's shape, fills guest memory, takes the VM
//! state, and only runs the VM after the source commits:
//!
//! - Connections that fail authentication are refused and do not end the wait (see
//!   [`crate::transport`]).
//! - Once the source is in, any failure before `Commit` arrives (bad frame, tampered bytes,
//!   the source vanishing, a timeout) ends the destination with an error; it never ran the
//!   guest.
//! - After `Commit` the destination runs the VM and acknowledges with `Running`. If that
//!   acknowledgement is lost, the source stays paused: still only one copy runs.
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::identity::{Identity, PublicKey};
use crate::transport::{self, SecureStream, TransportError};
use crate::wire::{self, Message, Tag, WireError, PAGE_SIZE};
use crate::GuestMemory;

/// How long the destination waits for the next message before giving up on the source.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const READ_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error("no migration arrived")]
    Transport(#[from] TransportError),
    #[error("the migration stream broke")]
    Wire(#[from] WireError),
    #[error("the source sent pages [{gpa:#x}, +{len:#x}) outside guest RAM")]
    OutOfRange { gpa: u64, len: u64 },
    #[error("the source sent {0:?} out of order")]
    OutOfOrder(Tag),
    #[error("a migration lane's thread panicked")]
    LanePanicked,
    #[error("cannot write guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

impl From<std::io::Error> for DestError {
    fn from(e: std::io::Error) -> Self {
        DestError::Wire(WireError::Io(e))
    }
}

/// Statistics the destination keeps.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Received {
    pub pages: u64,
    pub zero_pages: u64,
    pub rounds: u32,
    pub bytes: u64,
}

impl Received {
    fn add(&mut self, other: &Received) {
        self.pages += other.pages;
        self.zero_pages += other.zero_pages;
        self.bytes += other.bytes;
    }
}

/// An authenticated incoming migration.
pub struct Incoming {
    input: BufReader<SecureStream>,
    /// Lanes beyond the first (see [`crate::lanes`]), until `receive_memory` takes them.
    extra: Vec<SecureStream>,
    pub ram_bytes: u64,
    pub machine: Vec<u8>,
    pub received: Received,
    /// Page data on its way to a shared memory file (see `write_pages_to_file`).
    staging: Vec<u8>,
    pub started: Instant,
}

/// Waits on `listener` until `deadline` (`deadline_secs` from the start, for messages) for
/// the source holding `peer`'s key, and reads the machine description.
pub fn accept(
    listener: &TcpListener,
    identity: &Identity,
    peer: PublicKey,
    deadline: Instant,
    deadline_secs: u64,
) -> Result<Incoming, DestError> {
    let mut lanes =
        transport::accept(listener, identity, peer, deadline, deadline_secs)?.into_iter();
    let started = Instant::now();
    let Some(stream) = lanes.next() else {
        return Err(DestError::OutOfOrder(Tag::Hello));
    };
    tracing::info!(peer = %stream.peer_addr(), "incoming migration");
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut input = BufReader::with_capacity(READ_BUFFER, stream);
    let Message::Machine { ram_bytes, blob } =
        wire::expect(&mut input, Tag::Machine, "the machine")?
    else {
        return Err(DestError::OutOfOrder(Tag::Machine));
    };
    let extra: Vec<SecureStream> = lanes.collect();
    for lane in &extra {
        lane.set_read_timeout(Some(IDLE_TIMEOUT))?;
        lane.set_write_timeout(Some(IDLE_TIMEOUT))?;
    }
    Ok(Incoming {
        input,
        extra,
        ram_bytes,
        machine: blob,
        received: Received::default(),
        staging: Vec::new(),
        started,
    })
}

/// Applies `msg` if it carries memory (`Pages`, `Zero`); hands anything else back, except an
/// `Abort`, which becomes the error.
fn apply_memory(
    input: &mut BufReader<SecureStream>,
    mem: &GuestMemory,
    msg: Message,
    received: &mut Received,
    staging: &mut Vec<u8>,
) -> Result<Option<Message>, DestError> {
    match msg {
        Message::Pages { gpa, len } => {
            check_range(mem, gpa, len)?;
            match crate::guest_ram::shared_file(mem, gpa, len) {
                Some((file, offset)) => write_pages_to_file(input, file, offset, len, staging)?,
                None => {
                    crate::guest_ram::populate(mem, gpa, len);
                    read_pages(input, mem, gpa, len)?;
                }
            }
            received.pages += len / PAGE_SIZE;
            received.bytes += 16 + len;
        }
        Message::Zero { gpa, pages } => {
            let len = pages
                .checked_mul(PAGE_SIZE)
                .ok_or(DestError::OutOfRange { gpa, len: u64::MAX })?;
            check_range(mem, gpa, len)?;
            // Dropping pages keeps memory the guest zeroed from staying resident.
            let mut at = match crate::guest_ram::discard(mem, gpa, len) {
                true => gpa + len,
                false => gpa,
            };
            while at < gpa + len {
                let n = (gpa + len - at).min(ZEROS.len() as u64);
                mem.write_slice(&ZEROS[..n as usize], GuestAddress(at))?;
                at += n;
            }
            received.zero_pages += pages;
            received.bytes += 24;
        }
        Message::Abort(why) => return Err(WireError::PeerAborted(why).into()),
        other => return Ok(Some(other)),
    }
    Ok(None)
}

/// Applies an extra lane's memory frames until its `LaneEnd`.
fn receive_lane(lane: SecureStream, mem: &GuestMemory) -> Result<Received, DestError> {
    let mut input = BufReader::with_capacity(READ_BUFFER, lane);
    let mut got = Received::default();
    let mut staging = Vec::new();
    loop {
        let msg = wire::recv(&mut input)?;
        match apply_memory(&mut input, mem, msg, &mut got, &mut staging)? {
            None => {}
            Some(Message::Sync) => wire::send(input.get_mut(), &Message::Synced)?,
            Some(Message::LaneEnd) => return Ok(got),
            Some(other) => return Err(DestError::OutOfOrder(other.tag())),
        }
    }
}

/// Reads `len` bytes of page data into guest memory at `gpa`: first whatever the reader
/// already buffered, then straight from the TLS layer into guest memory, with no bounce copy.
fn read_pages(
    input: &mut BufReader<SecureStream>,
    mem: &GuestMemory,
    gpa: u64,
    len: u64,
) -> Result<(), DestError> {
    let buffered = input.buffer();
    let take = buffered.len().min(len as usize);
    mem.write_slice(&buffered[..take], GuestAddress(gpa))?;
    input.consume(take);
    let mut done = take;
    while done < len as usize {
        let at = GuestAddress(gpa + done as u64);
        // Reads return what has arrived; keep going until the frame is complete.
        let n = mem.read_volatile_from(at, input.get_mut(), len as usize - done)?;
        if n == 0 {
            return Err(DestError::Wire(WireError::Closed));
        }
        done += n;
    }
    Ok(())
}

/// Reads `len` bytes of page data and writes them to guest RAM's shared file at `offset`
/// (`pwrite`). The kernel then allocates the file's pages without mapping them into this
/// process or zeroing them first: populating the mapping and copying into it cost the
/// receiver half its time on a 1 GiB guest, one more copy through `staging` costs far less.
fn write_pages_to_file(
    input: &mut BufReader<SecureStream>,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    staging: &mut Vec<u8>,
) -> Result<(), DestError> {
    staging.resize(len as usize, 0);
    input.read_exact(staging).map_err(WireError::from)?;
    file.write_all_at(staging, offset)
        .map_err(|e| DestError::Memory(vm_memory::GuestMemoryError::IOError(e)))
}

/// Checks that `[gpa, gpa + len)` lies inside one region of `mem`.
fn check_range(mem: &GuestMemory, gpa: u64, len: u64) -> Result<(), DestError> {
    let bad = || DestError::OutOfRange { gpa, len };
    if !gpa.is_multiple_of(PAGE_SIZE) {
        return Err(bad());
    }
    let end = gpa.checked_add(len).ok_or_else(bad)?;
    let region = mem.find_region(GuestAddress(gpa)).ok_or_else(bad)?;
    if end > region.start_addr().0 + region.len() {
        return Err(bad());
    }
    Ok(())
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl Incoming {
    /// Applies pages and zero runs to `mem` until the VM state arrives, and returns it.
    /// Only pages that arrive are touched: memory the guest never used stays unpopulated.
    pub fn receive_memory(&mut self, mem: &GuestMemory) -> Result<Vec<u8>, DestError> {
        self.receive_lanes(mem)
    }

    /// Receives lane 0 here and every extra lane on its own thread, until the state arrives
    /// on lane 0 and every extra lane has ended. A failure on any lane shuts all of them down.
    fn receive_lanes(&mut self, mem: &GuestMemory) -> Result<Vec<u8>, DestError> {
        let extra = std::mem::take(&mut self.extra);
        if extra.is_empty() {
            return self.receive_frames(mem);
        }
        let mut sockets = vec![self.input.get_ref().socket()?];
        for lane in &extra {
            sockets.push(lane.socket()?);
        }
        let stop_all = || {
            for s in &sockets {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        };
        std::thread::scope(|scope| {
            let threads: Vec<_> = extra
                .into_iter()
                .map(|lane| {
                    scope.spawn(|| {
                        let r = receive_lane(lane, mem);
                        if r.is_err() {
                            stop_all();
                        }
                        r
                    })
                })
                .collect();
            let main = self.receive_frames(mem);
            if main.is_err() {
                stop_all();
            }
            let mut lane_error = None;
            for t in threads {
                match t.join() {
                    Ok(Ok(got)) => self.received.add(&got),
                    Ok(Err(e)) => lane_error = lane_error.or(Some(e)),
                    Err(_) => lane_error = lane_error.or(Some(DestError::LanePanicked)),
                }
            }
            // A lane's own error says more than lane 0's broken connection.
            match (main, lane_error) {
                (Ok(state), None) => Ok(state),
                (Err(e), None) => Err(e),
                (_, Some(e)) => Err(e),
            }
        })
    }

    fn receive_frames(&mut self, mem: &GuestMemory) -> Result<Vec<u8>, DestError> {
        loop {
            let msg = wire::recv(&mut self.input)?;
            match apply_memory(
                &mut self.input,
                mem,
                msg,
                &mut self.received,
                &mut self.staging,
            )? {
                None => {}
                Some(Message::RoundEnd { round }) => self.received.rounds = round + 1,
                // Everything before it on this lane is applied (applying is synchronous).
                Some(Message::Sync) => wire::send(self.input.get_mut(), &Message::Synced)?,
                Some(Message::State(state)) => return Ok(state),
                Some(other) => return Err(DestError::OutOfOrder(other.tag())),
            }
        }
    }

    /// Tells the source everything is applied, then waits for its decision. `Ok` means the
    /// source committed: the destination must now run the VM.
    pub fn ready_and_wait_for_commit(&mut self) -> Result<(), DestError> {
        wire::send(self.input.get_mut(), &Message::Ready)?;
        wire::expect(&mut self.input, Tag::Commit, "commit")?;
        Ok(())
    }

    /// Acknowledges that the VM runs here now. Failure is only logged: the VM is committed.
    pub fn running(&mut self) {
        if let Err(e) = wire::send(self.input.get_mut(), &Message::Running) {
            tracing::warn!("cannot acknowledge the switchover to the source: {e}");
        }
    }

    /// Tells the source why the destination gives up (best effort).
    pub fn abort(&mut self, why: &str) {
        let _ = wire::send(self.input.get_mut(), &Message::Abort(why.into()));
    }
}
