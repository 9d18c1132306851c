//! The figures, the targets' verdicts, the CSV and the plot of httperf-bench.

use std::fs;

use anyhow::Result;
use laundromat_tests::{
    packet_series::{self, Bin},
    plot::{self, Line, Mark, Panel},
    switchover::Timeline,
};

use crate::{Args, RateResult, Run, BIN_S, TARGET_OUTAGE_SLACK_MS, TARGET_PRECOPY_RATIO};

fn bins(run: &Run, seconds: u64) -> Vec<Bin> {
    packet_series::bins(&run.events, run.origin, BIN_S, seconds as f64)
}

/// The switchover's steps in ms from the guest's last frame on host-a, next to the client's
/// longest wait, and the client's waits that the switchover itself touched: those in progress
/// between the guest's last frame on host-a and its first on host-b, when it ran nowhere.
/// `allowed` is the outage target, which this wait is put next to (the verdict stays on the
/// whole stretch's longest wait).
fn print_timeline(t: &Timeline, longest: (f64, f64), waits: &[(f64, f64)], allowed: f64) {
    let Some(zero) = t.source_last_out else {
        println!("  switchover: the guest sent nothing on host-a's tap");
        return;
    };
    let at =
        |t: Option<f64>| t.map_or("never".to_string(), |t| format!("{:+.1}", (t - zero) * 1e3));
    println!(
        "  switchover, ms from the guest's last frame on host-a: client's longest wait {} to {}; \
         frames for the guest on host-a after that {} (last {}); host-b: RARP {}, first frame \
         from the guest {}, first frame for it {}",
        at(Some(longest.0)),
        at(Some(longest.1)),
        t.lost,
        at(t.last_lost),
        at(t.rarp),
        at(t.dest_first_out),
        at(t.dest_first_in),
    );
    let back = t.dest_first_out.unwrap_or(f64::INFINITY);
    let across = waits
        .iter()
        .filter(|w| w.0 <= back && w.1 >= zero)
        .map(|w| (w.1 - w.0) * 1e3)
        .reduce(f64::max);
    match across {
        Some(ms) => println!(
            "  the client's longest wait across the switchover: {ms:.1} ms (within the target's \
             {allowed:.1} ms: {})",
            if ms <= allowed { "yes" } else { "no" }
        ),
        None => println!(
            "  the client's longest wait across the switchover: none (it asked nothing meanwhile)"
        ),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

pub fn report(r: &RateResult, args: &Args) -> bool {
    let secs = args.seconds as f64;
    // Steady rates over the middle of the run, away from ramp-up and the tail.
    let steady = |run: &Run| {
        packet_series::reply_rate(&run.events, run.origin + 1.0, run.origin + secs - 1.0)
    };
    let (nginx_rate, guest_rate) = (steady(&r.nginx), steady(&r.steady));
    let m = &r.migration;
    let precopy_s = m.switchover() - m.start;
    let precopy = packet_series::reply_rate(
        &r.moving.events,
        m.start,
        m.switchover().max(m.start + BIN_S),
    );
    // From 0.5 s before the migration to 0.5 s after it, and the same stretch of the steady run.
    let (from, to) = (m.start - 0.5, m.end + 0.5);
    let (s_from, s_to) = (
        r.steady.origin + (from - r.moving.origin),
        r.steady.origin + (to - r.moving.origin),
    );
    let (wait_start, wait_end) = packet_series::longest_wait(&r.moving.events, from, to);
    let outage = (wait_end - wait_start) * 1e3;
    let steady_outage = packet_series::longest_wait_ms(&r.steady.events, s_from, s_to);
    let gap = packet_series::longest_gap_ms(&r.moving.events, from, to);
    let steady_gap = packet_series::longest_gap_ms(&r.steady.events, s_from, s_to);
    let worst = packet_series::max_latency_ms(&r.moving.events, from, to).unwrap_or(0.0);
    let rtt = packet_series::median_latency_ms(&r.steady.events).unwrap_or(0.0);
    let allowed = m.stats.downtime_ms + rtt + TARGET_OUTAGE_SLACK_MS;
    let failed = r.moving.totals.errors;
    println!(
        "\n== {} requests/s ({} per connection) ==",
        r.rate, args.calls
    );
    println!(
        "  replies/s steady: nginx {nginx_rate:.1}, guest {guest_rate:.1} (ratio {:.2})",
        guest_rate / nginx_rate.max(1e-9)
    );
    println!(
        "  replies/s during pre-copy ({:.0} ms) {precopy:.1} (ratio to steady {:.2}); migration total {:.0} ms",
        precopy_s * 1e3,
        precopy / guest_rate.max(1e-9),
        m.stats.total_time_ms
    );
    let parts = &m.stats.downtime_parts;
    println!(
        "  client-visible outage {outage:.1} ms (steady run, same stretch: {steady_outage:.1}); \
         migration downtime {:.1} ms (final pages {:.1}, state {:.1}, resume {:.1}); RTT {rtt:.2} ms",
        m.stats.downtime_ms, parts.final_pages_ms, parts.state_ms, parts.resume_ms
    );
    println!(
        "  longest gap between replies {gap:.1} ms (steady run, same stretch: {steady_gap:.1}: \
         the load's own pauses); slowest reply {worst:.1} ms"
    );
    print_timeline(
        &r.timeline,
        (wait_start, wait_end),
        &packet_series::waits(&r.moving.events, from, to),
        allowed,
    );
    println!(
        "  httperf: nginx {}/{} replies, steady {}/{}, migrating {}/{}; failed connections: {} / {} / {}",
        r.nginx.totals.replies, r.nginx.totals.connections * u64::from(args.calls),
        r.steady.totals.replies, r.steady.totals.connections * u64::from(args.calls),
        r.moving.totals.replies, r.moving.totals.connections * u64::from(args.calls),
        r.nginx.totals.errors, r.steady.totals.errors, failed
    );
    let checks = [
        (
            format!("outage <= downtime + RTT + 10 ms ({allowed:.1} ms)"),
            outage <= allowed,
        ),
        ("no failed connections".to_string(), failed == 0),
        (
            format!("pre-copy throughput >= {TARGET_PRECOPY_RATIO} x steady"),
            precopy >= TARGET_PRECOPY_RATIO * guest_rate,
        ),
    ];
    for (what, ok) in &checks {
        println!("  target {what}: {}", verdict(*ok));
    }
    checks.iter().all(|(_, ok)| *ok)
}

pub fn write_outputs(results: &[RateResult], args: &Args) -> Result<()> {
    fs::create_dir_all(&args.out)?;
    let mut csv = String::from("rate,peer,t_s,replies_per_s,latency_ms,resets\n");
    for r in results {
        for (peer, run) in [
            ("nginx", &r.nginx),
            ("guest-steady", &r.steady),
            ("guest-migrating", &r.moving),
        ] {
            for b in bins(run, args.seconds) {
                let lat = b.latency_ms.map_or(String::new(), |l| format!("{l:.3}"));
                csv.push_str(&format!(
                    "{},{peer},{:.1},{:.0},{lat},{}\n",
                    r.rate, b.t_s, b.replies_per_s, b.resets
                ));
            }
        }
    }
    let csv_path = args.out.join("httperf-bench.csv");
    fs::write(&csv_path, csv)?;
    let Some(r) = results.last() else {
        return Ok(());
    };
    let lines = |f: &dyn Fn(&Bin) -> Option<f64>| -> Vec<Line> {
        [
            ("nginx (native)", &r.nginx),
            ("guest, steady", &r.steady),
            ("guest, migrating", &r.moving),
        ]
        .into_iter()
        .map(|(name, run)| Line {
            name: name.into(),
            points: bins(run, args.seconds)
                .iter()
                .map(|b| (b.t_s, f(b)))
                .collect(),
        })
        .collect()
    };
    let m = &r.migration;
    let o = r.moving.origin;
    let marks = [
        Mark {
            label: "migration starts".into(),
            t: m.start - o,
        },
        Mark {
            label: "switchover".into(),
            t: m.switchover() - o,
        },
        Mark {
            label: "running on host-b".into(),
            t: m.end - o,
        },
    ];
    let panels = [
        Panel {
            y_label: "replies/s (100 ms bins)".into(),
            lines: lines(&|b| Some(b.replies_per_s)),
        },
        Panel {
            y_label: "mean latency (ms)".into(),
            lines: lines(&|b| b.latency_ms),
        },
    ];
    let png = args.out.join("httperf-bench.png");
    let title = format!(
        "httperf at {} requests/s: the bench guest migrating host-a -> host-b",
        r.rate
    );
    plot::draw(&png, &title, &panels, &marks)?;
    println!("\nwrote {} and {}", csv_path.display(), png.display());
    Ok(())
}
