//! The machine's own limits for moving memory, measured next to the migrations so their
//! throughput can be read against what is physically possible: one TCP stream over loopback
//! (a migration's link) and memcpy (what copying guest pages costs at best).

use std::{
    hint::black_box,
    io::{self, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LimitsError {
    #[error("loopback TCP transfer failed")]
    Tcp(#[from] io::Error),
    #[error("the loopback receiver got {received} bytes of {sent}")]
    Short { sent: u64, received: u64 },
    #[error("a loopback sender or receiver thread panicked")]
    Receiver,
}

/// The size of each write, as a migration stream's large page batches are.
pub const TCP_WRITE: usize = 1 << 20;

/// Sends `bytes` over one TCP connection on 127.0.0.1 in `TCP_WRITE`-byte writes to a receiver
/// thread, and returns the time from connecting to the receiver having read the last byte.
pub fn loopback_tcp(bytes: u64) -> Result<Duration, LimitsError> {
    loopback_tcp_streams(bytes, 1)
}

/// Like [`loopback_tcp`], with `bytes` split evenly over `streams` connections at once (a
/// sender and a receiver thread each), as a migration with several connections sends.
pub fn loopback_tcp_streams(bytes: u64, streams: u32) -> Result<Duration, LimitsError> {
    let streams = u64::from(streams.max(1));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let address = listener.local_addr()?;
    let started = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for k in 0..streams {
        let share = share(bytes, streams, k);
        let mut stream = TcpStream::connect(address)?;
        let (mut accepted, _) = listener.accept()?;
        receivers.push(thread::spawn(move || drain(&mut accepted)));
        // Closing the write side (on drop) ends the receiver's loop.
        senders.push(thread::spawn(move || send_bytes(&mut stream, share)));
    }
    for sender in senders {
        sender.join().map_err(|_| LimitsError::Receiver)??;
    }
    let mut received = 0;
    for receiver in receivers {
        received += receiver.join().map_err(|_| LimitsError::Receiver)??;
    }
    let elapsed = started.elapsed();
    if received != bytes {
        return Err(LimitsError::Short {
            sent: bytes,
            received,
        });
    }
    Ok(elapsed)
}

/// Stream `k`'s part when `bytes` are split evenly over `streams`.
pub fn share(bytes: u64, streams: u64, k: u64) -> u64 {
    bytes / streams + u64::from(k < bytes % streams)
}

/// Reads `reader` to its end in `TCP_WRITE`-byte reads; returns how many bytes came.
pub fn drain(reader: &mut impl Read) -> io::Result<u64> {
    let mut buffer = vec![0; TCP_WRITE];
    let mut received = 0u64;
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return Ok(received),
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` bytes to `writer` in `TCP_WRITE`-byte writes.
pub fn send_bytes(writer: &mut impl Write, bytes: u64) -> io::Result<()> {
    // Non-zero contents, in case anything on the path treats zeros specially.
    let block = vec![0x5a; TCP_WRITE];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(TCP_WRITE as u64) as usize;
        writer.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Copies a `size`-byte buffer into another `copies` times and returns the time of each copy.
/// Both buffers are written once first, so page faults are not timed.
pub fn memcpy(size: usize, copies: usize) -> Vec<Duration> {
    let source = vec![0x5au8; size];
    let mut destination = vec![0xa5u8; size];
    (0..copies)
        .map(|_| {
            let started = Instant::now();
            destination.copy_from_slice(black_box(&source));
            black_box(&mut destination);
            started.elapsed()
        })
        .collect()
}

/// `bytes` moved in `time`, in gigabits per second (10^9).
pub fn gbit_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 * 8.0 / time.as_secs_f64().max(1e-9) / 1e9
}

/// `bytes` moved in `time`, in gigabytes per second (10^9).
pub fn gbyte_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64().max(1e-9) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_every_byte_over_loopback() {
        // Not a whole number of writes, so the last one is partial.
        let time = loopback_tcp(3 * TCP_WRITE as u64 + 17).expect("loopback");
        assert!(time > Duration::ZERO);
        let time = loopback_tcp_streams(3 * TCP_WRITE as u64 + 17, 2).expect("two streams");
        assert!(time > Duration::ZERO);
    }

    #[test]
    fn times_each_copy() {
        assert_eq!(memcpy(1 << 16, 3).len(), 3);
    }

    #[test]
    fn converts_units() {
        let second = Duration::from_secs(1);
        assert!((gbit_per_s(1_000_000_000, second) - 8.0).abs() < 1e-9);
        assert!((gbyte_per_s(2_000_000_000, second) - 2.0).abs() < 1e-9);
    }
}
