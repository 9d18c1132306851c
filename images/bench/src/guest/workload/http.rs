//! `workload=http`: an HTTP/1.1 server with keep-alive on the virtio-net device, run by vCPU 0
//! (the other vCPUs idle). `smoltcp` is the TCP/IP stack; `conns` sockets listen on `port`, so
//! that many connections are served at once.
//!
//! - `GET /count`: the number of requests served so far, this one included. The counter is a
//!   plain variable in guest memory, so it carries on across snapshots and migrations.
//! - `POST /upload?fnv=HEX`: the guest reads the body, checksums it (FNV-1a 64) as it arrives,
//!   and answers `ok` or `mismatch` with the checksum and length it saw.
//! - any other `GET`: a body of `size` bytes.
//!
//! The loop polls the stack; with nothing to do it parks on the control device's paravirtual
//! idle until the stack's next timer, and the VMM wakes it as soon as a frame arrives.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::{finish, Shared};
use crate::control;
use crate::netdev::{self, NetDev};
use bench_core::http::{self, Buf, Fnv, Head, Method, ParseError};
use bench_core::NS_PER_MS;

/// Where vCPU 0 finds the device, checked by `Plan::new`.
pub struct Plan {
    base: u64,
    len: u64,
}

/// Why `workload=http` cannot run.
#[derive(Debug)]
pub enum HttpSetupError {
    NoAddress,
    NoDevice,
}

impl core::fmt::Display for HttpSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            HttpSetupError::NoAddress => "workload=http needs ip=ADDR/PREFIX",
            HttpSetupError::NoDevice => "workload=http needs a network device (vmm run --net)",
        })
    }
}

impl Plan {
    pub fn new(
        config: &bench_core::cmdline::Config,
        virtio: &[bench_abi::VirtioDevice],
    ) -> Result<Self, HttpSetupError> {
        if config.ip.is_none() {
            return Err(HttpSetupError::NoAddress);
        }
        let dev = virtio.first().ok_or(HttpSetupError::NoDevice)?;
        Ok(Plan {
            base: dev.base,
            len: dev.len,
        })
    }
}

/// Requests served: in guest memory, so it survives migration with the VM.
static mut REQUESTS: u64 = 0;
/// Uploads whose checksum did not match.
static mut UPLOAD_ERRORS: u64 = 0;

fn requests() -> u64 {
    // SAFETY: only vCPU 0 runs the server and touches the counters.
    unsafe { REQUESTS }
}

/// Bytes of request head a connection buffers.
const HEAD: usize = http::MAX_HEAD;
const RX_BUF: usize = 16 * 1024;
const TX_BUF: usize = 32 * 1024;
const FILL: [u8; 1024] = [b'x'; 1024];

enum Body {
    /// `n` bytes of filler.
    Fill(u64),
    /// A short text, sent from `text`.
    Text,
}

enum State {
    Head,
    /// Reading an upload: bytes left, checksum so far, the checksum the client expects.
    Upload {
        left: u64,
        fnv: Fnv,
        want: Option<u64>,
        len: u64,
    },
    /// Sending: head bytes sent so far, body left.
    Send {
        sent_head: usize,
        body: Body,
        keep_alive: bool,
    },
}

struct Conn {
    handle: SocketHandle,
    inbuf: [u8; HEAD],
    have: usize,
    state: State,
    head: Buf<256>,
    text: Buf<128>,
    text_sent: usize,
}

pub fn run(plan: &Plan, shared: &Shared, vcpu: u32) -> ! {
    if vcpu != 0 {
        finish(shared, vcpu, requests);
    }
    let cfg = &shared.config;
    let mut dev = match NetDev::new(plan.base, plan.len) {
        Ok(d) => d,
        Err(e) => {
            println!("bench: cannot start the network: {e}");
            control::exit(bench_core::exit_code::BAD_CMDLINE);
        }
    };
    let (mut iface, mac) = netdev::interface(&mut dev, cfg);
    let mut sockets = SocketSet::new(Vec::new());
    let mut conns: Vec<Conn> = (0..cfg.conns)
        .map(|_| {
            let rx = tcp::SocketBuffer::new(vec![0; RX_BUF]);
            let tx = tcp::SocketBuffer::new(vec![0; TX_BUF]);
            let mut socket = tcp::Socket::new(rx, tx);
            // A response's head and body are separate writes: Nagle would hold the body back
            // until the client's (delayed) ACK of the head.
            socket.set_nagle_enabled(false);
            Conn {
                handle: sockets.add(socket),
                inbuf: [0; HEAD],
                have: 0,
                state: State::Head,
                head: Buf::new(),
                text: Buf::new(),
                text_sent: 0,
            }
        })
        .collect();
    let port = cfg.port as u16;
    for c in &conns {
        // Fresh sockets on a nonzero port: listening cannot fail.
        let _ = sockets.get_mut::<tcp::Socket>(c.handle).listen(port);
    }
    let [m0, m1, m2, m3, m4, m5] = mac;
    println!(
        "bench: http listening on port {port} mac={m0:02x}:{m1:02x}:{m2:02x}:{m3:02x}:{m4:02x}:{m5:02x} conns={}",
        cfg.conns
    );
    let deadline = cfg.deadline_ns();
    let report_ns = cfg.report_ms.saturating_mul(NS_PER_MS);
    let mut next_report = control::clock_ns().saturating_add(report_ns);
    loop {
        let t = control::clock_ns();
        if t >= deadline {
            println!(
                "bench: http served requests={} upload-errors={}",
                requests(),
                upload_errors()
            );
            finish(shared, vcpu, requests);
        }
        if t >= next_report {
            println!(
                "bench: t={}ms requests={} upload-errors={}",
                t / NS_PER_MS,
                requests(),
                upload_errors()
            );
            next_report = t.saturating_add(report_ns);
        }
        let ts = Instant::from_micros((t / 1000) as i64);
        let mut busy = iface.poll(ts, &mut dev, &mut sockets) != smoltcp::iface::PollResult::None;
        for c in &mut conns {
            busy |= serve(c, sockets.get_mut::<tcp::Socket>(c.handle), port, cfg.size);
        }
        if busy {
            // Answers were queued: let the stack send them before sleeping.
            let _ = iface.poll(ts, &mut dev, &mut sockets);
            continue;
        }
        if dev.can_recv() {
            continue;
        }
        let delay = iface
            .poll_delay(ts, &sockets)
            .map_or(NS_PER_MS, |d| d.total_micros() * 1000)
            .min(NS_PER_MS);
        control::idle_until(t.saturating_add(delay).min(next_report).min(deadline));
    }
}

fn upload_errors() -> u64 {
    // SAFETY: only vCPU 0 runs the server and touches the counters.
    unsafe { UPLOAD_ERRORS }
}

fn count_request() -> u64 {
    // SAFETY: only vCPU 0 runs the server and touches the counters.
    unsafe {
        REQUESTS += 1;
        REQUESTS
    }
}

/// Moves one connection along; returns whether anything happened.
fn serve(c: &mut Conn, s: &mut tcp::Socket, port: u16, size: u64) -> bool {
    if !s.is_open() {
        c.have = 0;
        c.state = State::Head;
        return s.listen(port).is_ok();
    }
    let mut busy = false;
    loop {
        match &mut c.state {
            State::Head => {
                if c.have < HEAD && s.can_recv() {
                    if let Ok(n) = s.recv_slice(&mut c.inbuf[c.have..]) {
                        c.have += n;
                        busy |= n > 0;
                    }
                }
                match http::parse(&c.inbuf[..c.have]).map(Request::from) {
                    Ok(req) => {
                        let used = req.len;
                        start_response(c, req, size);
                        // Keep what followed the head (a pipelined request, or body bytes).
                        c.inbuf.copy_within(used..c.have, 0);
                        c.have -= used;
                        busy = true;
                    }
                    Err(ParseError::Incomplete) if c.have < HEAD => {
                        if s.state() == tcp::State::CloseWait && c.have == 0 {
                            s.close(); // the client is done
                        }
                        return busy;
                    }
                    Err(_) => {
                        let _ = c.text.write_str("bad request\n");
                        respond(c, "400 Bad Request", false);
                        c.have = 0;
                    }
                }
            }
            State::Upload {
                left,
                fnv,
                want,
                len,
            } => {
                // Body bytes already buffered behind the head come first.
                let take = (*left).min(c.have as u64) as usize;
                if take > 0 {
                    fnv.update(&c.inbuf[..take]);
                    c.inbuf.copy_within(take..c.have, 0);
                    c.have -= take;
                    *left -= take as u64;
                }
                while *left > 0 && s.can_recv() {
                    let l = *left;
                    let got = s.recv(|data| {
                        let n = (l as usize).min(data.len());
                        fnv.update(&data[..n]);
                        (n, n)
                    });
                    match got {
                        Ok(n) if n > 0 => {
                            *left -= n as u64;
                            busy = true;
                        }
                        _ => break,
                    }
                }
                if *left > 0 {
                    return busy;
                }
                let (got, len, want) = (fnv.0, *len, *want);
                let ok = want.is_none_or(|w| w == got);
                let _ = writeln!(
                    c.text,
                    "{} fnv={got:016x} len={len}",
                    if ok { "ok" } else { "mismatch" }
                );
                if !ok {
                    println!("bench: upload checksum mismatch: got {got:016x} len={len}");
                    // SAFETY: only vCPU 0 runs the server and touches the counters.
                    unsafe { UPLOAD_ERRORS += 1 };
                }
                respond(
                    c,
                    if ok {
                        "200 OK"
                    } else {
                        "422 Unprocessable Content"
                    },
                    true,
                );
            }
            State::Send {
                sent_head,
                body,
                keep_alive,
            } => {
                let head = c.head.as_bytes();
                while *sent_head < head.len() {
                    match s.send_slice(&head[*sent_head..]) {
                        Ok(n) if n > 0 => *sent_head += n,
                        _ => return busy,
                    }
                    busy = true;
                }
                match body {
                    Body::Fill(left) => {
                        while *left > 0 {
                            let n = (*left).min(FILL.len() as u64) as usize;
                            match s.send_slice(&FILL[..n]) {
                                Ok(sent) if sent > 0 => *left -= sent as u64,
                                _ => return busy,
                            }
                            busy = true;
                        }
                    }
                    Body::Text => {
                        let text = c.text.as_bytes();
                        while c.text_sent < text.len() {
                            match s.send_slice(&text[c.text_sent..]) {
                                Ok(n) if n > 0 => c.text_sent += n,
                                _ => return busy,
                            }
                            busy = true;
                        }
                    }
                }
                if !*keep_alive {
                    s.close();
                    c.state = State::Head;
                    c.have = 0;
                    return true;
                }
                c.state = State::Head;
                if c.have == 0 && !s.can_recv() {
                    return busy;
                }
            }
        }
    }
}

/// What a request asks for.
enum Route {
    Count,
    Upload { want: Option<u64> },
    Get,
    Other,
}

/// A parsed request, no longer borrowing the connection's buffer.
struct Request {
    route: Route,
    len: usize,
    content_length: u64,
    keep_alive: bool,
}

impl From<Head<'_>> for Request {
    fn from(head: Head<'_>) -> Self {
        let (path, fnv) = http::query(head.path, "fnv");
        let route = match (head.method, path) {
            (Method::Get, "/count") => Route::Count,
            (Method::Post, "/upload") => Route::Upload {
                want: fnv.and_then(|h| u64::from_str_radix(h, 16).ok()),
            },
            (Method::Get, _) => Route::Get,
            _ => Route::Other,
        };
        Request {
            route,
            len: head.len,
            content_length: head.content_length,
            keep_alive: head.keep_alive,
        }
    }
}

/// Decides the answer to `head` and moves the connection to reading an upload or sending.
fn start_response(c: &mut Conn, head: Request, size: u64) {
    let n = count_request();
    c.text.len = 0;
    c.text_sent = 0;
    match head.route {
        Route::Count => {
            let _ = writeln!(c.text, "{n}");
            respond(c, "200 OK", head.keep_alive);
        }
        Route::Upload { want } => {
            c.state = State::Upload {
                left: head.content_length,
                fnv: Fnv::new(),
                want,
                len: head.content_length,
            };
        }
        Route::Get => {
            let _ = http::response_head(&mut c.head, "200 OK", size, head.keep_alive);
            c.state = State::Send {
                sent_head: 0,
                body: Body::Fill(size),
                keep_alive: head.keep_alive,
            };
        }
        Route::Other => {
            let _ = c.text.write_str("method not allowed\n");
            respond(c, "405 Method Not Allowed", head.keep_alive);
        }
    }
}

/// Sends `c.text` as the body with `status`.
fn respond(c: &mut Conn, status: &str, keep_alive: bool) {
    let _ = http::response_head(&mut c.head, status, c.text.len as u64, keep_alive);
    c.text_sent = 0;
    c.state = State::Send {
        sent_head: 0,
        body: Body::Text,
        keep_alive,
    };
}
