//! The TCP socket under a migration's TLS layer, with reads buffered in large blocks.
//!
//! rustls reads the records it decrypts in pieces of at most 4 KiB (it grows its buffer 4 KiB
//! at a time and shrinks it again whenever it is empty). Straight on the socket that is one
//! `read` system call per 4 KiB of page data, which dominated the receiving side's cost
//! (system calls are slow on this host's nested KVM, and not free anywhere). Here one
//! `read` fetches up to [`READ_BLOCK`] bytes, and rustls' small reads are served from that
//! block. Writes go straight to the socket, vectored writes included (rustls hands its queued
//! records over as one `writev`).
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;

/// Bytes one `read` system call may fetch.
pub(crate) const READ_BLOCK: usize = 512 << 10;

/// A TCP stream whose reads come from a block buffer.
pub(crate) struct Socket {
    pub(crate) tcp: TcpStream,
    block: Box<[u8]>,
    /// The unread bytes are `block[start..end]`.
    start: usize,
    end: usize,
}

impl Socket {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            block: vec![0; READ_BLOCK].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            // Nothing buffered: a request as large as a block gains nothing from the copy.
            if buf.len() >= self.block.len() {
                return self.tcp.read(buf);
            }
            let n = self.tcp.read(&mut self.block)?;
            self.start = 0;
            self.end = n;
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.block[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.tcp.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn small_reads_see_every_byte_in_order() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let address = listener.local_addr().expect("address");
        let data: Vec<u8> = (0..3 * READ_BLOCK + 123).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            let mut s = TcpStream::connect(address).expect("connect");
            s.write_all(&sent).expect("write");
        });
        let (tcp, _) = listener.accept().expect("accept");
        let mut socket = Socket::new(tcp);
        let mut got = Vec::new();
        // Odd sizes, small and larger than a block, as rustls and a bulk reader would ask.
        let sizes = [4096, 17, READ_BLOCK + 5, 1, 9000];
        let mut buf = vec![0; READ_BLOCK + 5];
        for k in 0.. {
            let want = sizes[k % sizes.len()];
            match socket.read(&mut buf[..want]).expect("read") {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        writer.join().expect("writer");
        assert_eq!(got, data);
    }
}
