//! The network announce after a migration, as QEMU makes it: RARP frames from the guest's
//! MAC, broadcast on the destination's tap, several times with growing gaps. Bridges between
//! here and the clients learn the MAC's new port from them; the guest need not do anything.
use std::sync::Arc;
use std::time::Duration;

use super::{Mac, Net};

/// Frames sent, and the gap before the first repeat; each later gap is `STEP` longer
/// (QEMU's defaults: 5 rounds, 50 ms, +100 ms).
pub const ROUNDS: u32 = 5;
const FIRST_GAP: Duration = Duration::from_millis(50);
const STEP: Duration = Duration::from_millis(100);
const ETHERTYPE_RARP: u16 = 0x8035;
/// The shortest Ethernet frame without its FCS.
const MIN_FRAME: usize = 60;

/// A RARP "reverse request" with `mac` as sender and target, broadcast.
pub fn rarp_frame(mac: Mac) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    f[22..28].copy_from_slice(&mac.0); // sender hardware address
                                       // sender protocol address 0.0.0.0
    f[32..38].copy_from_slice(&mac.0); // target hardware address
                                       // target protocol address 0.0.0.0, then padding
    f
}

/// The gaps between announce frames.
pub fn gaps() -> impl Iterator<Item = Duration> {
    (0..ROUNDS - 1).map(|i| FIRST_GAP + STEP * i)
}

/// Sends the first announce frame now, on the caller's thread. The destination calls it as
/// soon as it is committed, before its vCPUs start: then the bridges learn the new port before
/// the guest's own first frames go out, and frames for the guest wait in the tap until the VM
/// runs. Waiting for a thread of its own took milliseconds on a busy host.
pub fn first(net: &Net) {
    send(net, &rarp_frame(net.mac()));
}

/// Sends the repeats of the announce ([`gaps`] apart, after [`first`]) on a thread of their
/// own, so the VM runs meanwhile.
pub fn repeat(net: Arc<Net>) {
    let spawned = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            let frame = rarp_frame(net.mac());
            for gap in gaps() {
                std::thread::sleep(gap);
                send(&net, &frame);
            }
            tracing::info!(mac = %net.mac(), tap = net.tap().name(), rounds = ROUNDS, "announced the guest's MAC");
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the announce thread: {e}");
    }
}

fn send(net: &Net, frame: &[u8]) {
    if let Err(e) = net.inject_to_host(frame) {
        tracing::warn!("cannot announce {} on {}: {e}", net.mac(), net.tap().name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_rarp_reverse_request() {
        let mac = Mac([0x52, 0x54, 0, 1, 2, 3]);
        let f = rarp_frame(mac);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[32..38], &mac.0);
        assert!(f[38..].iter().all(|&b| b == 0));
        let g: Vec<_> = gaps().map(|d| d.as_millis()).collect();
        assert_eq!(g, [50, 150, 250, 350]);
    }
}
