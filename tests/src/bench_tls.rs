//! Raw TLS throughput over loopback, measured next to the migrations so that the cost of
//! encryption shows apart from the cost of migrating: the migration's own rustls
//! configuration (`migrator::tls`, mutual TLS 1.3 with pinned ed25519 keys, the same cipher
//! suite preference) with nothing but bulk writes on top, over one or more connections at once.
//! Two ways: rustls' own `StreamOwned` on a plain `TcpStream` (rustls' defaults), and the
//! migration's connections themselves (`migrator::transport`, with its socket tuning).

use std::{
    io::{self, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use migrator::{identity::Identity, tls, transport};
use rustls::{ClientConnection, ServerConnection, StreamOwned};
use thiserror::Error;

use crate::bench_limits::{drain, send_bytes, share};

#[derive(Debug, Error)]
pub enum TlsLimitError {
    #[error("loopback TLS transfer failed")]
    Io(#[from] io::Error),
    #[error("cannot configure TLS")]
    Setup(#[from] tls::TlsSetupError),
    #[error("cannot start a TLS connection")]
    Tls(#[from] rustls::Error),
    #[error("the loopback TLS receivers got {received} bytes of {sent}")]
    Short { sent: u64, received: u64 },
    #[error("a loopback TLS thread panicked")]
    Panicked,
    #[error("cannot open the migration connections")]
    Transport(#[from] transport::TransportError),
}

/// One timed transfer: how long, and the cipher suite the connections agreed on.
#[derive(Clone, Debug)]
pub struct TlsTransfer {
    pub time: Duration,
    pub cipher_suite: String,
}

/// Sends `bytes` in total, split evenly over `streams` mutual-TLS connections on 127.0.0.1 (a
/// sender and a receiver thread each) in `TCP_WRITE`-byte writes, and returns the time from the
/// first connect to the last receiver having read its last byte. The handshakes are timed too:
/// a migration pays for them as well.
pub fn loopback_rustls(bytes: u64, streams: u32) -> Result<TlsTransfer, TlsLimitError> {
    let (source, dest) = (Identity::generate(), Identity::generate());
    let client = tls::client_config(&source, dest.public())?;
    let server = tls::server_config(&dest, source.public())?;
    let streams = u64::from(streams.max(1));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let address = listener.local_addr()?;

    let started = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for k in 0..streams {
        let share = share(bytes, streams, k);
        let tcp = TcpStream::connect(address)?;
        let (accepted, _) = listener.accept()?;
        let server = Arc::clone(&server);
        receivers.push(thread::spawn(move || -> Result<u64, TlsLimitError> {
            let mut stream = StreamOwned::new(ServerConnection::new(server)?, accepted);
            Ok(drain(&mut stream)?)
        }));
        let client = Arc::clone(&client);
        senders.push(thread::spawn(move || -> Result<String, TlsLimitError> {
            let connection = ClientConnection::new(client, tls::server_name())?;
            let mut stream = StreamOwned::new(connection, tcp);
            send_bytes(&mut stream, share)?;
            // A clean TLS end of stream ends the receiver's loop.
            stream.conn.send_close_notify();
            stream.flush()?;
            let suite = stream
                .conn
                .negotiated_cipher_suite()
                .map_or_else(|| "none".to_owned(), |s| format!("{:?}", s.suite()));
            Ok(suite)
        }));
    }
    let mut cipher_suite = String::new();
    for sender in senders {
        cipher_suite = sender.join().map_err(|_| TlsLimitError::Panicked)??;
    }
    let mut received = 0;
    for receiver in receivers {
        received += receiver.join().map_err(|_| TlsLimitError::Panicked)??;
    }
    let time = started.elapsed();
    if received != bytes {
        return Err(TlsLimitError::Short {
            sent: bytes,
            received,
        });
    }
    Ok(TlsTransfer { time, cipher_suite })
}

/// Like [`loopback_rustls`], over the migration's own connections (`migrator::transport`:
/// the same handshake, `Hello` and `Welcome`, then bulk writes with a TLS `close_notify` at
/// the end).
pub fn loopback_migration_tls(bytes: u64, streams: u32) -> Result<TlsTransfer, TlsLimitError> {
    let (source, dest) = (Identity::generate(), Identity::generate());
    let (source_public, dest_public) = (source.public(), dest.public());
    let lanes = u16::try_from(streams.clamp(1, 16)).unwrap_or(1);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let address = listener.local_addr()?.to_string();
    let started = Instant::now();
    let acceptor = thread::spawn(move || {
        let deadline = Instant::now() + transport::HANDSHAKE_TIMEOUT;
        let secs = transport::HANDSHAKE_TIMEOUT.as_secs();
        transport::accept(&listener, &dest, source_public, deadline, secs)
    });
    let opened = transport::open(&address, &source, dest_public, lanes)?;
    let accepted = acceptor.join().map_err(|_| TlsLimitError::Panicked)??;
    let receivers: Vec<_> = accepted
        .into_iter()
        .map(|mut stream| {
            thread::spawn(move || -> Result<u64, TlsLimitError> { Ok(drain(&mut stream)?) })
        })
        .collect();
    let cipher_suite = opened
        .first()
        .and_then(transport::SecureStream::cipher_suite)
        .unwrap_or_else(|| "none".to_owned());
    let count = opened.len() as u64;
    let senders: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(k, mut stream)| {
            let share = share(bytes, count, k as u64);
            thread::spawn(move || -> Result<(), TlsLimitError> {
                send_bytes(&mut stream, share)?;
                stream.flush()?;
                stream.close();
                Ok(())
            })
        })
        .collect();
    for sender in senders {
        sender.join().map_err(|_| TlsLimitError::Panicked)??;
    }
    let mut received = 0;
    for receiver in receivers {
        received += receiver.join().map_err(|_| TlsLimitError::Panicked)??;
    }
    let time = started.elapsed();
    if received != bytes {
        return Err(TlsLimitError::Short {
            sent: bytes,
            received,
        });
    }
    Ok(TlsTransfer { time, cipher_suite })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_limits::TCP_WRITE;

    #[test]
    fn moves_every_byte_over_mutual_tls() {
        // Not a whole number of writes, and not evenly divisible between the streams.
        for streams in [1, 2] {
            let bytes = 3 * TCP_WRITE as u64 + 17;
            let transfer = loopback_rustls(bytes, streams).expect("loopback TLS");
            assert!(transfer.time > Duration::ZERO);
            assert_eq!(transfer.cipher_suite, "TLS13_AES_128_GCM_SHA256");
            let transfer = loopback_migration_tls(bytes, streams).expect("migration TLS");
            assert!(transfer.time > Duration::ZERO);
            assert_eq!(transfer.cipher_suite, "TLS13_AES_128_GCM_SHA256");
        }
    }
}
