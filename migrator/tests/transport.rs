//! The migration transport on loopback, without a VM: pinned keys both ways, refusals that do
//! not end a destination's wait, lanes of one session, the deadline, and tampering.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use migrator::identity::Identity;
use migrator::transport::{self, SecureStream, TransportError};
use migrator::wire::{self, Message};

struct Ends {
    src: Identity,
    dst: Identity,
    listener: TcpListener,
    addr: String,
}

fn ends() -> Ends {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    Ends {
        src: Identity::generate(),
        dst: Identity::generate(),
        listener,
        addr,
    }
}

type Accepted = std::thread::JoinHandle<Result<Vec<SecureStream>, TransportError>>;

/// Runs the destination's accept on a thread for up to `secs`.
fn accept_in_background(e: &Ends, secs: u64) -> Accepted {
    let listener = e.listener.try_clone().unwrap();
    let dst = Identity::from_signing_key(e.dst.signing_key().clone());
    let peer = e.src.public();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        transport::accept(&listener, &dst, peer, deadline, secs)
    })
}

#[test]
fn pinned_keys_carry_data_both_ways_over_several_lanes() {
    let e = ends();
    let t = accept_in_background(&e, 20);
    let mut lanes = transport::open(&e.addr, &e.src, e.dst.public(), 3).unwrap();
    let mut got = t.join().unwrap().unwrap();
    assert_eq!((lanes.len(), got.len()), (3, 3));
    for (i, (a, b)) in lanes.iter_mut().zip(got.iter_mut()).enumerate() {
        let round = i as u32;
        wire::send(a, &Message::RoundEnd { round }).unwrap();
        assert_eq!(wire::recv(b).unwrap(), Message::RoundEnd { round });
        wire::send(b, &Message::Ready).unwrap();
        assert_eq!(wire::recv(a).unwrap(), Message::Ready);
    }
}

#[test]
fn strangers_and_garbage_are_refused_and_the_source_still_gets_in() {
    let e = ends();
    let t = accept_in_background(&e, 20);
    let mut garbage = TcpStream::connect(&e.addr).unwrap();
    garbage.write_all(&[0x16; 64]).unwrap();
    drop(garbage);
    let stranger = Identity::generate();
    let refused = transport::open(&e.addr, &stranger, e.dst.public(), 1).unwrap_err();
    assert!(
        matches!(refused, TransportError::Refused { .. }),
        "{refused}"
    );
    // The source expecting another destination refuses this one.
    let wrong = transport::open(&e.addr, &e.src, stranger.public(), 1).unwrap_err();
    assert!(
        wrong.to_string().contains(&format!(
            "presented the key {}, but {} was expected",
            e.dst.public(),
            stranger.public()
        )),
        "{wrong}"
    );
    let lanes = transport::open(&e.addr, &e.src, e.dst.public(), 1).unwrap();
    assert_eq!(lanes.len(), 1);
    assert_eq!(t.join().unwrap().unwrap().len(), 1);
}

#[test]
fn a_destination_nobody_reaches_stops_at_its_deadline() {
    let e = ends();
    let started = Instant::now();
    let r = accept_in_background(&e, 1).join().unwrap();
    assert!(matches!(r, Err(TransportError::Deadline(1))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_flipped_byte_after_the_handshake_is_detected() {
    let e = ends();
    let t = accept_in_background(&e, 20);
    // A proxy that flips one byte once the source has sent more than its handshake.
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let dst_addr = e.addr.clone();
    std::thread::spawn(move || {
        let (mut src, _) = proxy.accept().unwrap();
        let mut dst = TcpStream::connect(dst_addr).unwrap();
        let (mut dst_r, mut src_w) = (dst.try_clone().unwrap(), src.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut dst_r, &mut src_w));
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let mut flipped = false;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // The handshake and Hello are a few kilobytes; the big write comes after.
            if !flipped && total + n > 64 << 10 {
                buf[n / 2] ^= 1;
                flipped = true;
            }
            total += n;
            if dst.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut lanes = transport::open(&proxy_addr, &e.src, e.dst.public(), 1).unwrap();
    let mut got = t.join().unwrap().unwrap();
    let state = Message::State(vec![0xab; 1 << 20]);
    let _ = wire::send(&mut lanes[0], &state);
    let r = wire::recv(&mut got[0]);
    assert!(r.is_err(), "a tampered stream was accepted: {r:?}");
}
