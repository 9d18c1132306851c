//! The HTTP/1.1 the bench guest's server speaks: request heads parsed from a byte buffer, and
//! response heads written into one. No allocation: the guest's allocator never reuses memory.

/// The longest request head accepted; longer ones get 431 and the connection closes.
pub const MAX_HEAD: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// A parsed request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub method: Method,
    pub path: &'a str,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub content_length: u64,
    /// HTTP/1.1 keeps the connection unless the client says `Connection: close`; 1.0 closes
    /// unless it says `keep-alive`.
    pub keep_alive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No blank line yet: wait for more bytes (unless the buffer is full).
    Incomplete,
    /// Not HTTP, or a header we cannot accept.
    Bad,
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x.eq_ignore_ascii_case(&y))
}

/// Parses the head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Head<'_>, ParseError> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ParseError::Incomplete)?;
    let text = core::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Bad)?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next().ok_or(ParseError::Bad)?.split(' ');
    let method = match first.next() {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some(m) if !m.is_empty() => Method::Other,
        _ => return Err(ParseError::Bad),
    };
    let path = first
        .next()
        .filter(|p| p.starts_with('/'))
        .ok_or(ParseError::Bad)?;
    let version = first.next().ok_or(ParseError::Bad)?;
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(ParseError::Bad),
    };
    let mut content_length = 0;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(ParseError::Bad)?;
        let value = value.trim();
        if eq_ignore_case(name, "content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::Bad);
            }
            content_length = value.parse().map_err(|_| ParseError::Bad)?;
        } else if eq_ignore_case(name, "connection") {
            if eq_ignore_case(value, "close") {
                keep_alive = false;
            } else if eq_ignore_case(value, "keep-alive") {
                keep_alive = true;
            }
        } else if eq_ignore_case(name, "transfer-encoding") {
            return Err(ParseError::Bad); // chunked bodies are not supported
        }
    }
    Ok(Head {
        method,
        path,
        len: end + 4,
        content_length,
        keep_alive,
    })
}

/// The path without its query string, and the value of `key` in the query, if any.
pub fn query<'a>(path: &'a str, key: &str) -> (&'a str, Option<&'a str>) {
    let Some((p, q)) = path.split_once('?') else {
        return (path, None);
    };
    let value = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v);
    (p, value)
}

/// A fixed-size output buffer for `core::fmt::Write`.
pub struct Buf<const N: usize> {
    pub bytes: [u8; N],
    pub len: usize,
}

impl<const N: usize> Buf<N> {
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<const N: usize> Default for Buf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self
            .len
            .checked_add(s.len())
            .filter(|&e| e <= N)
            .ok_or(core::fmt::Error)?;
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Writes a response head for a `body_len`-byte plain-text body.
pub fn response_head<const N: usize>(
    out: &mut Buf<N>,
    status: &str,
    body_len: u64,
    keep_alive: bool,
) -> core::fmt::Result {
    use core::fmt::Write;
    out.len = 0;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
}

/// FNV-1a, 64-bit: the checksum of uploads, which the client computes too.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Fnv {
    pub const fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keep_alive_gets_and_posts() {
        let h = parse(b"GET /count HTTP/1.1\r\nHost: x\r\n\r\nrest").unwrap();
        assert_eq!(
            (h.method, h.path, h.keep_alive, h.content_length),
            (Method::Get, "/count", true, 0)
        );
        assert_eq!(h.len, 32);
        let h = parse(
            b"POST /upload?fnv=12 HTTP/1.1\r\ncontent-length: 10\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (h.method, h.content_length, h.keep_alive),
            (Method::Post, 10, false)
        );
        assert_eq!(query(h.path, "fnv"), ("/upload", Some("12")));
        assert_eq!(query("/x", "fnv"), ("/x", None));
        let h = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        assert!(!parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x"),
            Err(ParseError::Incomplete)
        );
        for bad in [
            &b"GET / HTTP/2\r\n\r\n"[..],
            b"GET nopath HTTP/1.1\r\n\r\n",
            b" / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseError::Bad),
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
    }

    #[test]
    fn writes_heads_and_checksums() {
        let mut b = Buf::<256>::new();
        response_head(&mut b, "200 OK", 5, true).unwrap();
        assert_eq!(
            b.as_bytes(),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n"
        );
        let mut tiny = Buf::<8>::new();
        assert!(response_head(&mut tiny, "200 OK", 5, true).is_err());
        let mut f = Fnv::new();
        f.update(b"a");
        assert_eq!(f.0, 0xaf63_dc4c_8601_ec8c);
    }
}
