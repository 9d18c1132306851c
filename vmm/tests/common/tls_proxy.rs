//! A TCP proxy for migration tests that sits between source and destination and sees what an
//! attacker on the path sees: TLS records, never plaintext. A rule decides for each record
//! whether to forward it (possibly changed) or cut every connection; the proxy can also
//! record the source's bytes and slow them down.
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which way a record travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Source to destination.
    Up,
    /// Destination to source.
    Down,
}

/// One TLS record (5-byte header and payload) on its way through.
pub struct Record<'a> {
    pub dir: Dir,
    /// Which connection, in the order the proxy accepted them (0 is the source's first).
    pub conn: usize,
    /// Source-to-destination bytes forwarded so far, over all connections.
    pub up_bytes: u64,
    /// For `Up` records: the source has sent nothing more for a while after this one (it now
    /// waits for an answer). Only set when the proxy holds records (`hold_up`).
    pub before_pause: bool,
    pub bytes: &'a mut Vec<u8>,
}

pub enum Action {
    Forward,
    /// Drop this record and shut every connection down.
    Cut,
}

pub type Rule = dyn Fn(&mut Record<'_>) -> Action + Send + Sync;

#[derive(Default)]
pub struct Options {
    /// Source-to-destination bytes per second (unlimited if None).
    pub up_rate: Option<u64>,
    /// Hold each source record until the next arrives or the source pauses, so the rule can
    /// tell the last record before a pause (e.g. the VM state before the wait for `Ready`).
    pub hold_up: bool,
}

pub struct Proxy {
    pub port: u16,
    /// Every source-to-destination byte forwarded, per connection.
    pub recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Whether a rule cut the connections.
    pub cut: Arc<AtomicBool>,
}

struct Shared {
    rule: Box<Rule>,
    opts: Options,
    up_bytes: AtomicU64,
    conns: AtomicUsize,
    sockets: Mutex<Vec<TcpStream>>,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    cut: Arc<AtomicBool>,
}

impl Shared {
    fn cut_all(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(socks) = self.sockets.lock() {
            for s in socks.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Starts a proxy to the destination on `dst_port`.
pub fn start(
    dst_port: u16,
    opts: Options,
    rule: impl Fn(&mut Record<'_>) -> Action + Send + Sync + 'static,
) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let cut = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        rule: Box::new(rule),
        opts,
        up_bytes: AtomicU64::new(0),
        conns: AtomicUsize::new(0),
        sockets: Mutex::new(Vec::new()),
        recorded: recorded.clone(),
        cut: cut.clone(),
    });
    std::thread::spawn(move || {
        for src in listener.incoming() {
            let Ok(src) = src else { break };
            let Ok(dst) = TcpStream::connect(("127.0.0.1", dst_port)) else {
                break;
            };
            let conn = shared.conns.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut socks) = shared.sockets.lock() {
                socks.extend([src.try_clone().unwrap(), dst.try_clone().unwrap()]);
            }
            if let Ok(mut rec) = shared.recorded.lock() {
                rec.push(Vec::new());
            }
            if shared.cut.load(Ordering::SeqCst) {
                shared.cut_all();
            }
            let (s2, d2) = (src.try_clone().unwrap(), dst.try_clone().unwrap());
            let sh = shared.clone();
            std::thread::spawn(move || pump(d2, s2, Dir::Down, conn, &sh));
            let sh = shared.clone();
            std::thread::spawn(move || pump(src, dst, Dir::Up, conn, &sh));
        }
    });
    Proxy {
        port,
        recorded,
        cut,
    }
}

/// Reads exactly `buf.len()` bytes. `Ok(false)` means the source paused before the first
/// byte (only with a read timeout set); an error or end of stream is `Err`.
fn fill(from: &mut TcpStream, buf: &mut [u8]) -> Result<bool, ()> {
    let mut got = 0;
    while got < buf.len() {
        match from.read(&mut buf[got..]) {
            Ok(0) => return Err(()),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if got == 0 {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(true)
}

const PAUSE: Duration = Duration::from_millis(300);

fn pump(mut from: TcpStream, mut to: TcpStream, dir: Dir, conn: usize, sh: &Shared) {
    let hold = dir == Dir::Up && sh.opts.hold_up;
    if hold {
        let _ = from.set_read_timeout(Some(PAUSE));
    }
    let mut held: Option<Vec<u8>> = None;
    loop {
        let mut header = [0u8; 5];
        let record = match fill(&mut from, &mut header) {
            Err(()) => None,
            Ok(false) => {
                // The source paused: the held record was the last before the pause.
                if let Some(r) = held.take() {
                    if !forward(r, &mut to, dir, conn, true, sh) {
                        break;
                    }
                }
                continue;
            }
            Ok(true) => {
                let len = u16::from_be_bytes([header[3], header[4]]) as usize;
                let mut bytes = header.to_vec();
                bytes.resize(5 + len, 0);
                // Inside a record a pause means nothing: wait for the rest.
                let mut body = fill(&mut from, &mut bytes[5..]);
                while body == Ok(false) {
                    body = fill(&mut from, &mut bytes[5..]);
                }
                body.ok().map(|_| bytes)
            }
        };
        let Some(record) = record else { break };
        let next = match hold {
            true => held.replace(record),
            false => Some(record),
        };
        if let Some(r) = next {
            if !forward(r, &mut to, dir, conn, false, sh) {
                break;
            }
        }
    }
    if let Some(r) = held.take() {
        forward(r, &mut to, dir, conn, true, sh);
    }
    // One side is gone: so is the connection, as with a real path.
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Applies the rule to one record and forwards it; false once the connection is done.
fn forward(
    mut bytes: Vec<u8>,
    to: &mut TcpStream,
    dir: Dir,
    conn: usize,
    before_pause: bool,
    sh: &Shared,
) -> bool {
    let mut rec = Record {
        dir,
        conn,
        up_bytes: sh.up_bytes.load(Ordering::SeqCst),
        before_pause,
        bytes: &mut bytes,
    };
    if let Action::Cut = (sh.rule)(&mut rec) {
        sh.cut_all();
        return false;
    }
    if to.write_all(&bytes).is_err() {
        return false;
    }
    if dir == Dir::Up {
        sh.up_bytes.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        if let Ok(mut rec) = sh.recorded.lock() {
            if let Some(r) = rec.get_mut(conn) {
                r.extend_from_slice(&bytes);
            }
        }
        if let Some(rate) = sh.opts.up_rate {
            std::thread::sleep(Duration::from_secs_f64(bytes.len() as f64 / rate as f64));
        }
    }
    true
}
