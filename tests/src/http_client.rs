//! A small HTTP/1.1 client with keep-alive, for tests and benchmarks that talk to the bench
//! guest's `workload=http` from a namespace host. Every read and write has a timeout.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::netns::Host;

/// The longest response head we accept.
const MAX_HEAD: usize = 8192;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl Client {
    /// Connects to `addr` from inside `from`'s namespace; `timeout` bounds the connect and
    /// every later read and write.
    pub fn connect(from: &Host, addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = from.within(move || TcpStream::connect_timeout(&addr, timeout))??;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: guest\r\n\r\n");
        self.stream.write_all(req.as_bytes())?;
        self.response()
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> io::Result<Response> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: guest\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(req.as_bytes())?;
        self.stream.write_all(body)?;
        self.response()
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn response(&mut self) -> io::Result<Response> {
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("the response head is too long"));
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let len: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .ok_or_else(|| bad("no Content-Length"))?;
        self.buf.drain(..end + 4);
        while self.buf.len() < len {
            self.fill()?;
        }
        let body = self.buf.drain(..len).collect();
        Ok(Response { status, body })
    }
}

/// FNV-1a 64, the checksum the guest computes over uploads.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv_matches_the_reference_value() {
        assert_eq!(super::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
