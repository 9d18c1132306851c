//! Client-side time series of an HTTP load, from packet timestamps: `tcpdump -tt -n` output on
//! the client's interface, one line per packet. A request is a packet to the server's port whose
//! payload starts with a method (`HTTP: GET ...`); a reply is a packet from it that starts a
//! response (`HTTP: HTTP/1.1 ...`); a reset is any RST. The latency of a reply is measured from
//! the oldest unanswered request on its connection (HTTP/1.1 answers in order). Retransmitted
//! segments (data at or below what the same side already sent on the connection) are neither a
//! new request nor a new reply: they are the same one again.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// The client's SYN: it waits for the server from here.
    Connect,
    /// The server's SYN-ACK.
    Accept,
    Request,
    Reply {
        latency_s: Option<f64>,
    },
    Reset,
    /// The client's FIN: it asks nothing more on this connection (or gave up waiting).
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the epoch, as tcpdump printed it.
    pub t: f64,
    /// The connection: the client's port.
    pub conn: u16,
    pub kind: Kind,
}

/// `a.b.c.d.port` as tcpdump prints an endpoint.
fn endpoint(s: &str) -> Option<SocketAddrV4> {
    let s = s.trim_end_matches(':');
    let (ip, port) = s.rsplit_once('.')?;
    Some(SocketAddrV4::new(ip.parse().ok()?, port.parse().ok()?))
}

/// The end of the data in a segment, from tcpdump's `seq A:B` (relative sequence numbers).
fn seq_end(line: &str) -> Option<u32> {
    let rest = &line[line.find(", seq ")? + 6..];
    let range = rest.split([',', ' ']).next()?;
    range.split_once(':')?.1.parse().ok()
}

/// Per connection: the highest sequence end each side has sent, and the client's requests
/// waiting for a reply.
#[derive(Default)]
struct Flow {
    client_end: u32,
    server_end: u32,
    open: VecDeque<f64>,
}

/// The events of `server`'s HTTP traffic in a tcpdump text capture, in capture order.
pub fn parse(text: &str, server: SocketAddrV4) -> Vec<Event> {
    let mut flows: HashMap<u16, Flow> = HashMap::new();
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
        let (to_server, conn) = match (src == server, dst == server) {
            (false, true) => (true, src.port()),
            (true, false) => (false, dst.port()),
            _ => continue,
        };
        let event = |kind| Event { t, conn, kind };
        if line.contains("Flags [R") {
            out.push(event(Kind::Reset));
            continue;
        }
        if line.contains("Flags [S]") && to_server {
            // A new connection (or its SYN again): its sequence numbers start afresh.
            flows.insert(conn, Flow::default());
            out.push(event(Kind::Connect));
            continue;
        }
        if line.contains("Flags [S.]") && !to_server {
            out.push(event(Kind::Accept));
            continue;
        }
        let flow = flows.entry(conn).or_default();
        if to_server && line.contains("Flags [F") {
            out.push(event(Kind::Close));
        }
        let Some((_, payload)) = line.split_once(": HTTP: ") else {
            continue;
        };
        // A segment that ends no later than what this side already sent is a retransmission.
        if let Some(end) = seq_end(line) {
            let seen = if to_server {
                &mut flow.client_end
            } else {
                &mut flow.server_end
            };
            if end <= *seen {
                continue;
            }
            *seen = end;
        }
        if to_server && !payload.starts_with("HTTP/") {
            flow.open.push_back(t);
            out.push(event(Kind::Request));
        } else if !to_server && payload.starts_with("HTTP/1.") {
            let latency_s = flow.open.pop_front().map(|s| t - s);
            out.push(event(Kind::Reply { latency_s }));
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
            _ => {}
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

/// The client-visible outage between `from` and `to` (epoch seconds), in ms: the longest time
/// during which the client was waiting for the server (a SYN or a request of some connection
/// unanswered) and no answer (a SYN-ACK or a reply, on any connection) arrived. Unlike
/// [`longest_gap_ms`], time when the client asked nothing (between the bursts of a paced load)
/// is not outage. A wait that the client gives up (its FIN, or a reset) ends there and counts.
pub fn longest_wait_ms(events: &[Event], from: f64, to: f64) -> f64 {
    let (start, end) = longest_wait(events, from, to);
    (end - start) * 1e3
}

/// When the wait of [`longest_wait_ms`] began and ended (epoch seconds; equal if the client
/// never waited).
pub fn longest_wait(events: &[Event], from: f64, to: f64) -> (f64, f64) {
    waits(events, from, to)
        .into_iter()
        .fold(
            (from, from),
            |l, w| if w.1 - w.0 > l.1 - l.0 { w } else { l },
        )
}

/// Every wait of the client between `from` and `to` (see [`longest_wait_ms`]): when it began
/// and when an answer (or the client giving up) ended it, clipped to the window.
pub fn waits(events: &[Event], from: f64, to: f64) -> Vec<(f64, f64)> {
    #[derive(Default)]
    struct Waiting {
        connect: bool,
        requests: u32,
    }
    let mut pending: HashMap<u16, Waiting> = HashMap::new();
    // Since when the client has been waiting with no answer at all.
    let mut since: Option<f64> = None;
    let mut out = Vec::new();
    let mut close = |since: Option<f64>, t: f64| {
        if let Some(s) = since.filter(|_| t >= from) {
            out.push((s.max(from), t.min(to)));
        }
    };
    for e in events.iter().take_while(|e| e.t <= to) {
        let w = pending.entry(e.conn).or_default();
        match e.kind {
            Kind::Connect | Kind::Request => {
                if e.kind == Kind::Connect {
                    w.connect = true;
                } else {
                    w.requests += 1;
                }
                since.get_or_insert(e.t);
                continue;
            }
            Kind::Accept => w.connect = false,
            Kind::Reply { .. } => w.requests = w.requests.saturating_sub(1),
            Kind::Reset | Kind::Close => {
                let gave_up = w.connect || w.requests > 0;
                pending.remove(&e.conn);
                if gave_up {
                    close(since, e.t);
                }
                if pending.values().all(|w| !w.connect && w.requests == 0) {
                    since = None;
                }
                continue;
            }
        }
        // An answer: whatever the client was waiting for, the server is there.
        close(since, e.t);
        pending.retain(|_, w| w.connect || w.requests > 0);
        since = (!pending.is_empty()).then_some(e.t);
    }
    close(since, to);
    out
}

/// The longest latency of a reply between `from` and `to` (epoch seconds), in ms.
pub fn max_latency_ms(events: &[Event], from: f64, to: f64) -> Option<f64> {
    events
        .iter()
        .filter(|e| e.t >= from && e.t <= to)
        .filter_map(|e| match e.kind {
            Kind::Reply { latency_s } => latency_s,
            _ => None,
        })
        .reduce(f64::max)
        .map(|s| s * 1e3)
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
        let kinds: Vec<Kind> = e.iter().map(|e| e.kind).collect();
        assert_eq!(kinds.len(), 6);
        assert_eq!(kinds[0], Kind::Connect);
        let Kind::Reply { latency_s: Some(l) } = kinds[2] else {
            panic!("{:?}", e[2]);
        };
        assert!((l - 0.002).abs() < 1e-9);
        assert_eq!((e[5].kind, e[5].conn), (Kind::Reset, 5002));
    }

    /// Two connections 50 ms apart, each answered in 1 ms: the client never waits long,
    /// although no reply comes for 49 ms between them.
    const PACED: &str = "\
1.000000 IP 10.77.0.3.6000 > 10.77.0.100.80: Flags [S], seq 0, win 64240, length 0
1.000200 IP 10.77.0.100.80 > 10.77.0.3.6000: Flags [S.], seq 0, ack 1, win 16384, length 0
1.000300 IP 10.77.0.3.6000 > 10.77.0.100.80: Flags [P.], seq 1:78, ack 1, win 63, length 77: HTTP: GET / HTTP/1.1
1.001300 IP 10.77.0.100.80 > 10.77.0.3.6000: Flags [P.], seq 1:94, ack 78, win 16384, length 93: HTTP: HTTP/1.1 200 OK
1.001400 IP 10.77.0.3.6000 > 10.77.0.100.80: Flags [F.], seq 78, ack 94, win 63, length 0
1.050000 IP 10.77.0.3.6001 > 10.77.0.100.80: Flags [S], seq 0, win 64240, length 0
1.050200 IP 10.77.0.100.80 > 10.77.0.3.6001: Flags [S.], seq 0, ack 1, win 16384, length 0
1.050300 IP 10.77.0.3.6001 > 10.77.0.100.80: Flags [P.], seq 1:78, ack 1, win 63, length 77: HTTP: GET / HTTP/1.1
1.051300 IP 10.77.0.100.80 > 10.77.0.3.6001: Flags [P.], seq 1:94, ack 78, win 16384, length 93: HTTP: HTTP/1.1 200 OK
";

    #[test]
    fn idle_time_between_paced_connections_is_no_outage() {
        let e = parse(PACED, server());
        assert!((longest_gap_ms(&e, 1.0, 1.06) - 50.0).abs() < 1e-6);
        assert!((longest_wait_ms(&e, 1.0, 1.06) - 1.0).abs() < 1e-6);
    }

    /// A request lost at the switchover and sent again 200 ms later, while another connection
    /// is answered 30 ms in: the client waited with nothing coming back for 30.5 ms, and later
    /// for 170 ms; the retransmitted request is the same request, answered once.
    const LOST: &str = "\
2.000000 IP 10.77.0.3.7000 > 10.77.0.100.80: Flags [P.], seq 1:78, ack 1, win 63, length 77: HTTP: GET / HTTP/1.1
2.030000 IP 10.77.0.3.7001 > 10.77.0.100.80: Flags [S], seq 0, win 64240, length 0
2.030500 IP 10.77.0.100.80 > 10.77.0.3.7001: Flags [S.], seq 0, ack 1, win 16384, length 0
2.030600 IP 10.77.0.3.7001 > 10.77.0.100.80: Flags [P.], seq 1:78, ack 1, win 63, length 77: HTTP: GET / HTTP/1.1
2.031000 IP 10.77.0.100.80 > 10.77.0.3.7001: Flags [P.], seq 1:94, ack 78, win 16384, length 93: HTTP: HTTP/1.1 200 OK
2.200000 IP 10.77.0.3.7000 > 10.77.0.100.80: Flags [P.], seq 1:78, ack 1, win 63, length 77: HTTP: GET / HTTP/1.1
2.201000 IP 10.77.0.100.80 > 10.77.0.3.7000: Flags [P.], seq 1:94, ack 78, win 16384, length 93: HTTP: HTTP/1.1 200 OK
";

    #[test]
    fn a_lost_request_keeps_the_client_waiting_until_it_is_answered() {
        let e = parse(LOST, server());
        let requests = e.iter().filter(|e| e.kind == Kind::Request).count();
        assert_eq!(requests, 2, "the retransmission is not a new request");
        let Some(Kind::Reply { latency_s: Some(l) }) = e.last().map(|e| e.kind) else {
            panic!("{e:?}");
        };
        assert!((l - 0.201).abs() < 1e-9, "latency from the first send: {l}");
        assert!((longest_wait_ms(&e, 2.0, 2.3) - 170.0).abs() < 1e-6);
        let (start, end) = longest_wait(&e, 2.0, 2.3);
        assert!((start - 2.031).abs() < 1e-9 && (end - 2.201).abs() < 1e-9);
        let ms: Vec<f64> = waits(&e, 2.0, 2.3)
            .iter()
            .map(|w| ((w.1 - w.0) * 1e4).round() / 10.0)
            .collect();
        assert_eq!(ms, [30.5, 0.5, 170.0]);
        assert!((max_latency_ms(&e, 2.0, 2.3).unwrap() - 201.0).abs() < 1e-6);
        assert!((max_latency_ms(&e, 2.0, 2.1).unwrap() - 0.4).abs() < 1e-6);
        // Nothing answers the first request before 2.25: the wait runs to the window's end.
        assert!((longest_wait_ms(&e, 2.0, 2.15) - 119.0).abs() < 1e-6);
    }

    #[test]
    fn a_wait_the_client_gives_up_counts_until_it_gives_up() {
        let text = "\
3.000000 IP 10.77.0.3.8000 > 10.77.0.100.80: Flags [P.], seq 1:78, ack 1, win 63, length 77: HTTP: GET / HTTP/1.1
3.500000 IP 10.77.0.3.8000 > 10.77.0.100.80: Flags [F.], seq 78, ack 1, win 63, length 0
";
        let e = parse(text, server());
        assert!((longest_wait_ms(&e, 3.0, 4.0) - 500.0).abs() < 1e-6);
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
