//! Client-side time series of an HTTP load, from packet timestamps: `tcpdump -tt -n` output on
//! the client's interface, one line per packet. A request is a packet to the server's port whose
//! payload starts with a method (`HTTP: GET ...`); a reply is a packet from it that starts a
//! response (`HTTP: HTTP/1.1 ...`); a reset is any RST. The latency of a reply is measured from
//! the oldest unanswered request on its connection (HTTP/1.1 answers in order).
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Request,
    Reply { latency_s: Option<f64> },
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the epoch, as tcpdump printed it.
    pub t: f64,
    pub kind: Kind,
}

/// `a.b.c.d.port` as tcpdump prints an endpoint.
fn endpoint(s: &str) -> Option<SocketAddrV4> {
    let s = s.trim_end_matches(':');
    let (ip, port) = s.rsplit_once('.')?;
    Some(SocketAddrV4::new(ip.parse().ok()?, port.parse().ok()?))
}

/// The events of `server`'s HTTP traffic in a tcpdump text capture, in capture order.
pub fn parse(text: &str, server: SocketAddrV4) -> Vec<Event> {
    let mut open: HashMap<u16, VecDeque<f64>> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(t), Some("IP"), Some(src), Some(">"), Some(dst)) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            continue;
        };
        let (Ok(t), Some(src), Some(dst)) = (t.parse::<f64>(), endpoint(src), endpoint(dst)) else {
            continue;
        };
        let (to_server, client) = match (src == server, dst == server) {
            (false, true) => (true, src.port()),
            (true, false) => (false, dst.port()),
            _ => continue,
        };
        if line.contains("Flags [R") {
            out.push(Event {
                t,
                kind: Kind::Reset,
            });
            continue;
        }
        let Some((_, payload)) = line.split_once(": HTTP: ") else {
            continue;
        };
        if to_server && !payload.starts_with("HTTP/") {
            open.entry(client).or_default().push_back(t);
            out.push(Event {
                t,
                kind: Kind::Request,
            });
        } else if !to_server && payload.starts_with("HTTP/1.") {
            let sent = open.get_mut(&client).and_then(|q| q.pop_front());
            let latency_s = sent.map(|s| t - s);
            out.push(Event {
                t,
                kind: Kind::Reply { latency_s },
            });
        }
    }
    out
}

/// One interval of a series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bin {
    /// Start of the interval, seconds from the series' origin.
    pub t_s: f64,
    pub replies_per_s: f64,
    /// Mean latency of the interval's replies; `None` with no reply.
    pub latency_ms: Option<f64>,
    pub resets: u64,
}

/// Events binned by `width_s` from `origin` (epoch seconds) over `duration_s`.
pub fn bins(events: &[Event], origin: f64, width_s: f64, duration_s: f64) -> Vec<Bin> {
    let n = (duration_s / width_s).ceil().max(0.0) as usize;
    let mut out: Vec<Bin> = (0..n)
        .map(|i| Bin {
            t_s: i as f64 * width_s,
            ..Bin::default()
        })
        .collect();
    let mut lat_sum = vec![(0.0, 0u64); n];
    for e in events {
        let rel = e.t - origin;
        if rel < 0.0 {
            continue;
        }
        let Some(b) = out.get_mut((rel / width_s) as usize) else {
            continue;
        };
        match e.kind {
            Kind::Reply { latency_s } => {
                b.replies_per_s += 1.0 / width_s;
                if let Some(l) = latency_s {
                    let s = &mut lat_sum[(rel / width_s) as usize];
                    s.0 += l * 1e3;
                    s.1 += 1;
                }
            }
            Kind::Reset => b.resets += 1,
            Kind::Request => {}
        }
    }
    for (b, (sum, count)) in out.iter_mut().zip(lat_sum) {
        b.latency_ms = (count > 0).then(|| sum / count as f64);
    }
    out
}

/// The longest time without a reply between `from` and `to` (epoch seconds), in ms.
pub fn longest_gap_ms(events: &[Event], from: f64, to: f64) -> f64 {
    let mut last = from;
    let mut gap: f64 = 0.0;
    for e in events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Reply { .. }))
    {
        if e.t < from || e.t > to {
            continue;
        }
        gap = gap.max(e.t - last);
        last = e.t;
    }
    gap.max(to - last) * 1e3
}

/// Replies per second between `from` and `to` (epoch seconds).
pub fn reply_rate(events: &[Event], from: f64, to: f64) -> f64 {
    let n = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Reply { .. }) && e.t >= from && e.t < to)
        .count();
    n as f64 / (to - from).max(1e-9)
}

/// The median reply latency in ms, if any reply was matched to its request.
pub fn median_latency_ms(events: &[Event]) -> Option<f64> {
    let mut l: Vec<f64> = events
        .iter()
        .filter_map(|e| match e.kind {
            Kind::Reply { latency_s } => latency_s,
            _ => None,
        })
        .collect();
    l.sort_by(f64::total_cmp);
    l.get(l.len() / 2).map(|s| s * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &str = "\
100.000000 IP 10.77.0.3.5000 > 10.77.0.100.80: Flags [S], seq 1, win 64240, length 0
100.001000 IP 10.77.0.3.5000 > 10.77.0.100.80: Flags [P.], seq 1:78, ack 1, win 63, length 77: HTTP: GET / HTTP/1.1
100.003000 IP 10.77.0.100.80 > 10.77.0.3.5000: Flags [P.], seq 1:94, ack 78, win 16384, length 93: HTTP: HTTP/1.1 200 OK
100.150000 IP 10.77.0.3.5001 > 10.77.0.100.80: Flags [P.], seq 1:78, ack 1, win 63, length 77: HTTP: GET / HTTP/1.1
100.160000 IP 10.77.0.100.80 > 10.77.0.3.5001: Flags [P.], seq 1:94, ack 78, win 16384, length 93: HTTP: HTTP/1.1 200 OK
100.170000 IP 10.77.0.100.80 > 10.77.0.3.5002: Flags [R.], seq 0, ack 1, win 0, length 0
100.180000 IP 10.77.0.9.80 > 10.77.0.3.5003: Flags [P.], length 93: HTTP: HTTP/1.1 200 OK
garbage line
";

    fn server() -> SocketAddrV4 {
        "10.77.0.100:80".parse().unwrap()
    }

    #[test]
    fn finds_requests_replies_and_resets_of_one_server() {
        let e = parse(CAPTURE, server());
        assert_eq!(e.len(), 5);
        let Kind::Reply { latency_s: Some(l) } = e[1].kind else {
            panic!("{:?}", e[1]);
        };
        assert!((l - 0.002).abs() < 1e-9);
        assert_eq!(e[4].kind, Kind::Reset);
    }

    #[test]
    fn bins_gaps_rates_and_latency() {
        let e = parse(CAPTURE, server());
        let b = bins(&e, 100.0, 0.1, 0.3);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].replies_per_s, 10.0);
        assert_eq!(b[1].replies_per_s, 10.0);
        assert_eq!(b[1].resets, 1);
        assert!((b[1].latency_ms.unwrap() - 10.0).abs() < 1e-6);
        assert_eq!(b[2].latency_ms, None);
        assert!((longest_gap_ms(&e, 100.0, 100.2) - 157.0).abs() < 1e-6);
        assert!((reply_rate(&e, 100.0, 101.0) - 2.0).abs() < 1e-9);
        assert!((median_latency_ms(&e).unwrap() - 10.0).abs() < 1e-6);
    }
}
