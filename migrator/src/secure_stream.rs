//! One authenticated, encrypted migration connection: a rustls stream over TCP, either side,
//! with socket timeouts that read as plain "timed out after N s" errors, and a connection that
//! stays failed after its first I/O error.
use std::cell::Cell;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use crate::socket::Socket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

pub(crate) enum Conn {
    Client(StreamOwned<ClientConnection, Socket>),
    Server(StreamOwned<ServerConnection, Socket>),
}

/// Encrypted bytes rustls may queue before they must be written to the socket.
const SEND_QUEUE: usize = 1 << 20;

/// One authenticated, encrypted migration connection.
pub struct SecureStream {
    conn: Conn,
    peer: SocketAddr,
    // Cells so the timeouts can change through a shared reference (e.g. `BufWriter::get_ref`).
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
    /// The first I/O error: after it the connection is dead, and every later call fails at
    /// once instead of waiting out another timeout (e.g. flushing a buffer on the way out).
    failed: Option<(std::io::ErrorKind, String)>,
}

impl std::fmt::Debug for SecureStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecureStream({})", self.peer)
    }
}

macro_rules! both {
    ($self:expr, $s:ident => $e:expr) => {
        match &mut $self.conn {
            Conn::Client($s) => $e,
            Conn::Server($s) => $e,
        }
    };
}

/// Turns a socket timeout (`EAGAIN` from `SO_RCVTIMEO`/`SO_SNDTIMEO`) into a plain message.
fn timeout_error(e: std::io::Error, limit: Option<Duration>) -> std::io::Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            let secs = limit.map_or(0, |d| d.as_secs().max(1));
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {secs} s"),
            )
        }
        _ => e,
    }
}

impl SecureStream {
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    fn tcp(&self) -> &TcpStream {
        match &self.conn {
            Conn::Client(s) => &s.sock.tcp,
            Conn::Server(s) => &s.sock.tcp,
        }
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(d)?;
        self.read_timeout.set(d);
        Ok(())
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.tcp().set_write_timeout(d)?;
        self.write_timeout.set(d);
        Ok(())
    }

    /// The TLS cipher suite the two sides agreed on, by its IANA name.
    pub fn cipher_suite(&self) -> Option<String> {
        let suite = match &self.conn {
            Conn::Client(s) => s.conn.negotiated_cipher_suite(),
            Conn::Server(s) => s.conn.negotiated_cipher_suite(),
        };
        suite.map(|s| format!("{:?}", s.suite()))
    }

    /// A handle on the underlying socket, to shut it down from another thread.
    pub fn socket(&self) -> std::io::Result<TcpStream> {
        self.tcp().try_clone()
    }

    pub(crate) fn new(mut conn: Conn, tcp_peer: SocketAddr, limit: Duration) -> Self {
        // rustls queues at most 64 KiB of records by default, so a bulk write goes out as
        // 64 KiB `writev`s; a larger queue sends up to 64 records (1 MiB) per system call.
        match &mut conn {
            Conn::Client(s) => s.conn.set_buffer_limit(Some(SEND_QUEUE)),
            Conn::Server(s) => s.conn.set_buffer_limit(Some(SEND_QUEUE)),
        }
        let s = Self {
            conn,
            peer: tcp_peer,
            read_timeout: Cell::new(None),
            write_timeout: Cell::new(None),
            failed: None,
        };
        // Socket options on a fresh connected socket only fail if it is already broken; the
        // handshake then reports that.
        let _ = s.tcp().set_nodelay(true);
        let _ = s.set_read_timeout(Some(limit));
        let _ = s.set_write_timeout(Some(limit));
        s
    }

    /// Drives the TLS handshake to its end (on the source, the destination may still refuse
    /// this host's certificate: that shows as an alert on the first read).
    pub(crate) fn handshake(&mut self) -> std::io::Result<()> {
        let limit = self.read_timeout.get();
        both!(self, s => {
            while s.conn.is_handshaking() {
                s.conn
                    .complete_io(&mut s.sock)
                    .map_err(|e| timeout_error(e, limit))?;
            }
            s.flush().map_err(|e| timeout_error(e, limit))
        })
    }

    /// Sends a TLS close_notify (best effort): the peer sees a clean end of stream.
    pub fn close(&mut self) {
        both!(self, s => {
            s.conn.send_close_notify();
            let _ = s.flush();
        })
    }
}

impl SecureStream {
    /// Fails at once if the connection already failed.
    fn check(&self) -> std::io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((kind, why)) => Err(std::io::Error::new(*kind, why.clone())),
        }
    }

    /// Remembers the first error (but not an interrupted call, which may be retried).
    fn note<T>(&mut self, r: std::io::Result<T>, limit: Option<Duration>) -> std::io::Result<T> {
        r.map_err(|e| {
            let e = timeout_error(e, limit);
            if e.kind() != std::io::ErrorKind::Interrupted && self.failed.is_none() {
                self.failed = Some((e.kind(), format!("the connection failed earlier: {e}")));
            }
            e
        })
    }
}

impl Read for SecureStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        let limit = self.read_timeout.get();
        let r = both!(self, s => s.read(buf));
        self.note(r, limit)
    }
}

impl BufRead for SecureStream {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.check()?;
        let limit = self.read_timeout.get();
        // Two steps, so the buffer is borrowed only after the error bookkeeping.
        let r = both!(self, s => s.fill_buf().map(|b| b.len()));
        self.note(r, limit)?;
        both!(self, s => s.fill_buf())
    }

    fn consume(&mut self, amt: usize) {
        both!(self, s => s.consume(amt))
    }
}

impl Write for SecureStream {
    /// Encrypts what fits in the TLS send buffer and writes it out. Unlike rustls'
    /// `Stream`, a blocked write never turns into a wait for incoming data: a stalled peer
    /// costs one write timeout, not a write and a read timeout.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check()?;
        let limit = self.write_timeout.get();
        let r = both!(self, s => {
            send_pending(&mut s.conn, &mut s.sock, limit)
                .and_then(|()| s.conn.writer().write(buf))
                .and_then(|n| send_pending(&mut s.conn, &mut s.sock, limit).map(|()| n))
        });
        self.note(r, limit)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.check()?;
        let limit = self.write_timeout.get();
        let r = both!(self, s => {
            s.conn
                .writer()
                .flush()
                .and_then(|()| send_pending(&mut s.conn, &mut s.sock, limit))
        });
        self.note(r, limit)
    }
}

/// Writes every encrypted record waiting in `conn` to `sock`, whose send timeout is `limit`.
fn send_pending<S: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<S>,
    sock: &mut Socket,
    limit: Option<Duration>,
) -> std::io::Result<()> {
    while conn.wants_write() {
        let started = std::time::Instant::now();
        if conn.write_tls(sock)? == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // A blocking send that took some bytes and then waited out the whole timeout returns
        // the bytes, not the timeout: without this, a peer that stops reading would cost a
        // second full timeout on the next call.
        if limit.is_some_and(|limit| started.elapsed() >= limit) {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
    }
    Ok(())
}

impl ReadVolatile for SecureStream {
    /// Copies decrypted bytes straight from the TLS layer's buffer into guest memory.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let data = self.fill_buf().map_err(VolatileMemoryError::IOError)?;
        let n = data.len().min(buf.len());
        buf.copy_from(&data[..n]);
        self.consume(n);
        Ok(n)
    }
}
