//! What the VM's taps saw at a migration's switchover, from `tcpdump -e -n -tt` captures on the
//! source's and the destination's tap: when the guest last sent on the source, which frames
//! still went there afterwards (lost, unless read just before the pause), when the
//! destination announced the guest's MAC (RARP) and when frames first left and reached the guest
//! on the destination. Together with the client's replies this places every part of a
//! client-visible outage.

/// One captured frame, as far as the switchover is concerned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    /// Seconds since the epoch, as tcpdump printed it.
    pub t: f64,
    pub from_guest: bool,
    pub to_guest: bool,
    /// A RARP announce (ethertype 0x8035).
    pub rarp: bool,
}

/// The frames from or to `mac` (`aa:bb:cc:dd:ee:ff`, lower case as tcpdump prints it) in a
/// `tcpdump -e -n -tt` text capture.
pub fn frames(text: &str, mac: &str) -> Vec<Frame> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(t), Some(src), Some(">"), Some(dst)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Ok(t) = t.parse::<f64>() else {
            continue;
        };
        let (from_guest, to_guest) = (src == mac, dst.trim_end_matches(',') == mac);
        if !from_guest && !to_guest {
            continue;
        }
        out.push(Frame {
            t,
            from_guest,
            to_guest,
            rarp: line.contains("(0x8035)"),
        });
    }
    out
}

/// The switchover as the two taps saw it (epoch seconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// The guest's last frame on the source's tap: it stopped running there by then.
    pub source_last_out: Option<f64>,
    /// Frames for the guest that reached the source's tap after that: lost, unless the guest
    /// read them before it was paused.
    pub lost: usize,
    pub last_lost: Option<f64>,
    /// The destination's first RARP announce.
    pub rarp: Option<f64>,
    /// The guest's first frame on the destination that is not an announce.
    pub dest_first_out: Option<f64>,
    /// The first frame for the guest on the destination's tap after `source_last_out`.
    pub dest_first_in: Option<f64>,
}

impl Timeline {
    /// Reads the switchover from the source's and the destination's tap captures.
    pub fn new(source: &[Frame], dest: &[Frame]) -> Self {
        // The destination's announce floods back into the source's tap: not the guest's.
        let source_last_out = source
            .iter()
            .filter(|f| f.from_guest && !f.rarp)
            .map(|f| f.t)
            .reduce(f64::max);
        let after = |f: &&Frame| source_last_out.is_none_or(|s| f.t > s);
        let lost: Vec<f64> = source
            .iter()
            .filter(|f| f.to_guest)
            .filter(after)
            .map(|f| f.t)
            .collect();
        let first = |keep: &dyn Fn(&Frame) -> bool| {
            dest.iter()
                .filter(after)
                .filter(|f| keep(f))
                .map(|f| f.t)
                .reduce(f64::min)
        };
        Timeline {
            source_last_out,
            lost: lost.len(),
            last_lost: lost.iter().copied().reduce(f64::max),
            rarp: first(&|f| f.rarp),
            dest_first_out: first(&|f| f.from_guest && !f.rarp),
            dest_first_in: first(&|f| f.to_guest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "52:54:00:77:01:01";

    const SOURCE: &str = "\
10.000000 52:54:00:77:01:01 > 6e:11:22:33:44:55, ethertype IPv4 (0x0800), length 160: 10.77.0.100.80 > 10.77.0.3.5000: Flags [P.], length 93: HTTP: HTTP/1.1 200 OK
10.002000 6e:11:22:33:44:55 > 52:54:00:77:01:01, ethertype IPv4 (0x0800), length 143: 10.77.0.3.5001 > 10.77.0.100.80: Flags [P.], length 77: HTTP: GET / HTTP/1.1
10.003000 6e:11:22:33:44:55 > 52:54:00:77:01:01, ethertype IPv4 (0x0800), length 66: 10.77.0.3.5002 > 10.77.0.100.80: Flags [S], length 0
10.004000 6e:11:22:33:44:55 > 02:00:00:00:00:09, ethertype IPv4 (0x0800), length 66: 10.77.0.3.5003 > 10.77.0.9.80: Flags [S], length 0
10.005000 52:54:00:77:01:01 > ff:ff:ff:ff:ff:ff, ethertype Reverse ARP (0x8035), length 60: Reverse Request who-is 52:54:00:77:01:01 tell 52:54:00:77:01:01, length 46
";
    const DEST: &str = "\
9.000000 6e:11:22:33:44:55 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 10.77.0.100 tell 10.77.0.3, length 28
10.005000 52:54:00:77:01:01 > ff:ff:ff:ff:ff:ff, ethertype Reverse ARP (0x8035), length 60: Reverse Request who-is 52:54:00:77:01:01 tell 52:54:00:77:01:01, length 46
10.006000 6e:11:22:33:44:55 > 52:54:00:77:01:01, ethertype IPv4 (0x0800), length 66: 10.77.0.3.5004 > 10.77.0.100.80: Flags [S], length 0
10.006500 52:54:00:77:01:01 > 6e:11:22:33:44:55, ethertype IPv4 (0x0800), length 66: 10.77.0.100.80 > 10.77.0.3.5004: Flags [S.], length 0
garbage
";

    #[test]
    fn places_the_switchover_from_both_taps() {
        let (source, dest) = (frames(SOURCE, MAC), frames(DEST, MAC));
        assert_eq!(source.len(), 4, "the frame for another MAC is not ours");
        assert_eq!(dest.len(), 3);
        assert!(dest[0].rarp && dest[0].from_guest);
        let t = Timeline::new(&source, &dest);
        assert_eq!(
            t,
            Timeline {
                source_last_out: Some(10.0),
                lost: 2,
                last_lost: Some(10.003),
                rarp: Some(10.005),
                dest_first_out: Some(10.0065),
                dest_first_in: Some(10.006),
            }
        );
    }

    #[test]
    fn nothing_captured_is_nothing_known() {
        assert_eq!(Timeline::new(&[], &[]), Timeline::default());
    }
}
