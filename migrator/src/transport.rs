//! Migration connections: mutual TLS ([`crate::tls`]) over TCP, and how a migration's
//! connections ("lanes") are opened and accepted.
//!
//! ```text
//! source                                   destination
//! TCP connect, TLS 1.3 handshake (both keys pinned)
//! Hello { version, session, lane 0, lanes N } ->
//!                                  <- Welcome { version }   (or Abort, e.g. wrong version)
//! then lanes 1..N the same way, with the same session id
//! ```
//! A waiting destination is not stopped by whoever reaches its port first: a connection that
//! fails the TLS handshake (garbage, the wrong key, a replayed recording, a client that
//! hangs up or stalls) or sends no valid `Hello` is logged and dropped, and the destination
//! keeps accepting until its own deadline. Handshakes run on their own threads, so a stalled
//! client does not hold up the real source.
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

use crate::identity::{Identity, PublicKey};
use crate::secure_stream::Conn;
pub use crate::secure_stream::SecureStream;
use crate::socket::Socket;
use crate::tls::{self, TlsSetupError};
use crate::wire::{self, Message, WireError, MAX_LANES, PROTOCOL_VERSION, SESSION_LEN};

/// How long one connection may take to connect, finish its TLS handshake and say `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the destination waits for a migration's other lanes once its first arrived.
const LANES_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections the destination handshakes with at once; more are dropped unanswered.
const MAX_PENDING: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Setup(Box<TlsSetupError>),
    #[error("cannot reach {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the TLS handshake with {peer} failed")]
    Handshake {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("{peer} is not the expected host: {why}")]
    WrongPeer { peer: SocketAddr, why: String },
    #[error("the destination refused this host ({alert}); was it started with --peer {ours}?")]
    Refused { alert: String, ours: String },
    #[error("the destination refused the migration: {0}")]
    Aborted(String),
    #[error(
        "the peer speaks migration protocol version {theirs}; this vmm speaks {PROTOCOL_VERSION}"
    )]
    Version { theirs: u32 },
    #[error("the peer did not open the migration properly")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Refusal(String),
    #[error("no source completed a migration handshake within {0} s")]
    Deadline(u64),
    #[error("the source opened {opened} of its {lanes} connections within {within} s")]
    MissingLanes {
        opened: u16,
        lanes: u16,
        within: u64,
    },
    #[error("cannot accept connections")]
    Accept(#[source] std::io::Error),
}

impl From<TlsSetupError> for TransportError {
    fn from(e: TlsSetupError) -> Self {
        TransportError::Setup(Box::new(e))
    }
}

/// The source's side: opens `lanes` authenticated connections to `addr`.
pub fn open(
    addr: &str,
    identity: &Identity,
    peer: PublicKey,
    lanes: u16,
) -> Result<Vec<SecureStream>, TransportError> {
    let cfg = tls::client_config(identity, peer)?;
    let session: [u8; SESSION_LEN] = rand::random();
    let mut out = Vec::with_capacity(lanes.into());
    for lane in 0..lanes {
        let mut s = connect_with(addr, &cfg)?;
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            session,
            lane,
            lanes,
        };
        wire::send(&mut s, &hello).map_err(|e| refused(e, identity))?;
        match wire::recv(&mut s).map_err(|e| refused(e, identity))? {
            Message::Welcome { version } if version == PROTOCOL_VERSION => {}
            Message::Welcome { version } => {
                return Err(TransportError::Version { theirs: version })
            }
            Message::Abort(why) => return Err(TransportError::Aborted(why)),
            other => {
                return Err(WireError::Unexpected {
                    expected: "a welcome",
                    got: other.tag(),
                }
                .into())
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// A TLS alert in answer to our first message means the destination rejected our identity.
fn refused(e: WireError, identity: &Identity) -> TransportError {
    if let WireError::Io(io) = &e {
        let inner = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::AlertReceived(alert)) = inner {
            return TransportError::Refused {
                alert: format!("TLS alert {alert:?}"),
                ours: identity.public().to_string(),
            };
        }
    }
    if let WireError::Closed = e {
        return TransportError::Refused {
            alert: "it closed the connection".into(),
            ours: identity.public().to_string(),
        };
    }
    TransportError::Wire(e)
}

/// Makes a failed handshake say what went wrong in words: above all, a peer that holds
/// another key than the one expected.
fn handshake_error(peer: SocketAddr, source: std::io::Error) -> TransportError {
    let inner = source
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) = inner {
        if let Some(wrong) = other.0.downcast_ref::<tls::WrongPeerKey>() {
            return TransportError::WrongPeer {
                peer,
                why: wrong.to_string(),
            };
        }
    }
    TransportError::Handshake { peer, source }
}

/// One TLS connection to `addr`, authenticated both ways, before any migration message.
pub fn connect(
    addr: &str,
    identity: &Identity,
    peer: PublicKey,
) -> Result<SecureStream, TransportError> {
    connect_with(addr, &tls::client_config(identity, peer)?)
}

fn connect_with(addr: &str, cfg: &Arc<ClientConfig>) -> Result<SecureStream, TransportError> {
    let connect_err = |source| TransportError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut tcp = None;
    for a in addr.to_socket_addrs().map_err(connect_err)? {
        match TcpStream::connect_timeout(&a, HANDSHAKE_TIMEOUT) {
            Ok(s) => {
                tcp = Some((s, a));
                break;
            }
            Err(e) => last = e,
        }
    }
    let (tcp, peer) = tcp.ok_or_else(|| connect_err(last))?;
    let conn = ClientConnection::new(cfg.clone(), tls::server_name()).map_err(|e| {
        TransportError::Handshake {
            peer,
            source: std::io::Error::other(e),
        }
    })?;
    let mut s = SecureStream::new(
        Conn::Client(StreamOwned::new(conn, Socket::new(tcp))),
        peer,
        HANDSHAKE_TIMEOUT,
    );
    s.handshake().map_err(|e| handshake_error(peer, e))?;
    Ok(s)
}

/// A connection that finished its handshake and said `Hello`.
struct Greeted {
    stream: SecureStream,
    session: [u8; SESSION_LEN],
    lane: u16,
    lanes: u16,
}

/// The destination's side of one connection, on its own thread.
fn greet(
    tcp: TcpStream,
    peer: SocketAddr,
    cfg: Arc<ServerConfig>,
) -> Result<Greeted, TransportError> {
    let handshake_err = |source| TransportError::Handshake { peer, source };
    tcp.set_nonblocking(false).map_err(handshake_err)?;
    let conn = ServerConnection::new(cfg).map_err(|e| handshake_err(std::io::Error::other(e)))?;
    let mut s = SecureStream::new(
        Conn::Server(StreamOwned::new(conn, Socket::new(tcp))),
        peer,
        HANDSHAKE_TIMEOUT,
    );
    s.handshake().map_err(|e| handshake_error(peer, e))?;
    let Message::Hello {
        version,
        session,
        lane,
        lanes,
    } = wire::expect(&mut s, wire::Tag::Hello, "a hello")?
    else {
        return Err(TransportError::Refusal("no hello".into()));
    };
    if version != PROTOCOL_VERSION {
        let why = format!(
            "unsupported migration protocol version {version}; this vmm speaks {PROTOCOL_VERSION}"
        );
        let _ = wire::send(&mut s, &Message::Abort(why));
        return Err(TransportError::Version { theirs: version });
    }
    Ok(Greeted {
        stream: s,
        session,
        lane,
        lanes,
    })
}

/// The lanes of the migration being accepted.
struct Session {
    id: [u8; SESSION_LEN],
    lanes: Vec<Option<SecureStream>>,
    started: Instant,
}

impl Session {
    /// Takes `g` into the session, or says why not.
    fn admit(session: &mut Option<Session>, mut g: Greeted) -> Result<(), String> {
        let refuse = |g: &mut Greeted, why: String| {
            let _ = wire::send(&mut g.stream, &Message::Abort(why.clone()));
            Err(why)
        };
        if g.lanes == 0 || g.lanes > MAX_LANES || g.lane >= g.lanes {
            let why = format!("lane {} of {} is not 0..{MAX_LANES}", g.lane, g.lanes);
            return refuse(&mut g, why);
        }
        match session {
            None if g.lane == 0 => {
                let mut lanes: Vec<Option<SecureStream>> = (0..g.lanes).map(|_| None).collect();
                wire::send(&mut g.stream, &welcome()).map_err(|e| e.to_string())?;
                lanes[0] = Some(g.stream);
                *session = Some(Session {
                    id: g.session,
                    lanes,
                    started: Instant::now(),
                });
                Ok(())
            }
            None => {
                let why = format!("lane {} before lane 0", g.lane);
                refuse(&mut g, why)
            }
            Some(s) if s.id != g.session || usize::from(g.lanes) != s.lanes.len() => {
                refuse(&mut g, "a migration is already in progress".into())
            }
            Some(s) => {
                let lane = usize::from(g.lane);
                if s.lanes[lane].is_some() {
                    return refuse(&mut g, format!("lane {lane} is already open"));
                }
                wire::send(&mut g.stream, &welcome()).map_err(|e| e.to_string())?;
                s.lanes[lane] = Some(g.stream);
                Ok(())
            }
        }
    }
}

fn welcome() -> Message {
    Message::Welcome {
        version: PROTOCOL_VERSION,
    }
}

/// The full error chain of `e`, for logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Waits on `listener` until `deadline` for the source holding `peer`'s key and returns its
/// lanes, lane 0 first. Connections that fail are logged and dropped.
pub fn accept(
    listener: &TcpListener,
    identity: &Identity,
    peer: PublicKey,
    deadline: Instant,
    deadline_secs: u64,
) -> Result<Vec<SecureStream>, TransportError> {
    let cfg = tls::server_config(identity, peer)?;
    listener
        .set_nonblocking(true)
        .map_err(TransportError::Accept)?;
    let (tx, rx) = mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let mut session: Option<Session> = None;
    loop {
        while let Ok((from, greeted)) = rx.try_recv() {
            match Session::admit(&mut session, greeted) {
                Ok(()) => tracing::info!(peer = %from, "incoming migration peer authenticated"),
                Err(why) => {
                    tracing::warn!(peer = %from, "refused a migration connection: {why}")
                }
            }
        }
        if let Some(s) = &mut session {
            if s.lanes.iter().all(Option::is_some) {
                return Ok(s.lanes.drain(..).flatten().collect());
            }
            if s.started.elapsed() > LANES_TIMEOUT {
                return Err(TransportError::MissingLanes {
                    opened: s.lanes.iter().flatten().count() as u16,
                    lanes: s.lanes.len() as u16,
                    within: LANES_TIMEOUT.as_secs(),
                });
            }
        } else if Instant::now() >= deadline {
            return Err(TransportError::Deadline(deadline_secs));
        }
        wait_readable(listener, Duration::from_millis(20));
        match listener.accept() {
            Ok((tcp, from)) => {
                if pending.load(Ordering::SeqCst) >= MAX_PENDING {
                    tracing::warn!(peer = %from, "too many pending migration handshakes; dropped");
                    continue;
                }
                tracing::info!(peer = %from, "incoming migration connection");
                pending.fetch_add(1, Ordering::SeqCst);
                let (tx, cfg, count) = (tx.clone(), cfg.clone(), pending.clone());
                let spawned = std::thread::Builder::new()
                    .name("migration-handshake".into())
                    .spawn(move || {
                        let r = greet(tcp, from, cfg);
                        count.fetch_sub(1, Ordering::SeqCst);
                        // Logged here, so a refusal is reported even after the wait is over.
                        match r {
                            Ok(g) => {
                                let _ = tx.send((from, g));
                            }
                            Err(e) => tracing::warn!(
                                peer = %from,
                                "refused a migration connection: {}",
                                chain(&e)
                            ),
                        }
                    });
                if let Err(e) = spawned {
                    pending.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(peer = %from, "cannot start a handshake thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. out of file descriptors: wait a little, keep the listener.
                tracing::warn!("accepting a migration connection failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Waits up to `d` for `listener` to have a connection (or anything else) to report.
fn wait_readable(listener: &TcpListener, d: Duration) {
    let mut fds = [libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, d.as_millis() as libc::c_int) };
}
