//! migrate-bench's analysis and report: medians and ratios over the runs, each target's
//! verdict, and the printed tables.
use super::*;

/// A target's verdict: a figure against its bound.
#[derive(Serialize)]
pub(super) struct Verdict {
    value: Option<f64>,
    target: f64,
    /// The value must reach the target rather than stay under it.
    at_least: bool,
    met: bool,
}

impl Verdict {
    /// Met when `value` is at most (or, with `at_least`, at least) `target`; a missing value
    /// never meets it.
    pub(super) fn new(value: Option<f64>, target: f64, at_least: bool) -> Self {
        let met = value.is_some_and(|v| if at_least { v >= target } else { v <= target });
        Verdict {
            value,
            target,
            at_least,
            met,
        }
    }

    pub(super) fn show(&self, unit: &str) -> String {
        let value = self
            .value
            .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}{unit}"));
        // A verdict against a peer that did not run (`--vmm`) is no verdict.
        let word = match (self.value, self.met) {
            (None, _) => "not measured",
            (Some(_), true) => "met",
            (Some(_), false) => "MISSED",
        };
        let bound = if self.at_least { ">=" } else { "<=" };
        format!("{value} (target {bound} {}{unit}): {word}", self.target)
    }
}

/// `field` summarised over the completed runs of `vmm` (one run is its own median).
pub(super) fn summary(
    runs: &[Migration],
    vmm: Vmm,
    field: fn(&Migration) -> f64,
) -> Option<Summary> {
    let samples: Vec<f64> = runs
        .iter()
        .filter(|m| m.vmm == vmm && m.completed())
        .map(field)
        .collect();
    Summary::of(&samples)
}

pub(super) fn median(runs: &[Migration], vmm: Vmm, field: fn(&Migration) -> f64) -> Option<f64> {
    summary(runs, vmm, field).map(|s| s.median)
}

pub(super) fn medians(runs: &[Migration], vmm: Vmm) -> Medians {
    Medians {
        vmm,
        runs: runs.iter().filter(|m| m.vmm == vmm).count(),
        completed: runs
            .iter()
            .filter(|m| m.vmm == vmm && m.completed())
            .count(),
        total_ms: summary(runs, vmm, |m| m.total_ms),
        downtime_ms: summary(runs, vmm, |m| m.downtime_ms),
        transferred_bytes: median(runs, vmm, |m| m.transferred_bytes as f64),
        rounds: median(runs, vmm, |m| m.rounds as f64),
        throughput_gbit: median(runs, vmm, |m| m.throughput_gbit),
    }
}

/// The idle case's targets, on the medians of its runs.
pub(super) fn targets(idle: &[Migration], limits: &Limits) -> Targets {
    let total = |vmm| median(idle, vmm, |m| m.total_ms);
    let throughput = median(idle, Vmm::Ours, |m| m.throughput_gbit);
    let vs_total = |peer| {
        Verdict::new(
            divide(total(Vmm::Ours), total(peer)),
            TARGET_TOTAL_VS_QEMU_BEST,
            false,
        )
    };
    let vs_link = |link: &Summary| {
        Verdict::new(
            divide(throughput, Some(link.median)),
            TARGET_THROUGHPUT_VS_TCP,
            true,
        )
    };
    Targets {
        total_vs_qemu_best: vs_total(Vmm::QemuBest),
        total_vs_qemu_tls: vs_total(Vmm::QemuTls),
        downtime_ms: Verdict::new(
            median(idle, Vmm::Ours, |m| m.downtime_ms),
            TARGET_DOWNTIME_MS,
            false,
        ),
        throughput_vs_tcp: vs_link(&limits.tcp_gbit),
        throughput_vs_tcp_streams: vs_link(&limits.tcp_streams_gbit),
        throughput_vs_tls_streams: divide(throughput, Some(limits.tls_streams_gbit.median)),
        tls_vs_tcp_streams: divide(
            Some(limits.tls_streams_gbit.median),
            Some(limits.tcp_streams_gbit.median),
        ),
    }
}

/// A working set's target over its runs: our median downtime at most QEMU best's.
pub(super) fn working_set_target(runs: &[Migration]) -> WorkingSetTarget {
    let downtime = |vmm| summary(runs, vmm, |m| m.downtime_ms);
    let (ours, best) = (downtime(Vmm::Ours), downtime(Vmm::QemuBest));
    let ratio = divide(ours.map(|s| s.median), best.map(|s| s.median));
    WorkingSetTarget {
        scenario: runs.first().map(|m| m.scenario.clone()).unwrap_or_default(),
        ours_downtime_ms: ours,
        qemu_best_downtime_ms: best,
        downtime_vs_qemu_best: Verdict::new(ratio, 1.0, false),
    }
}

/// `a / b`, when both exist and b is not zero.
pub(super) fn divide(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Ours over each QEMU setting, medians of the completed runs of one scenario.
pub(super) fn ratio(runs: &[Migration]) -> Ratio {
    let ratio = |field: fn(&Migration) -> f64, peer| {
        divide(median(runs, Vmm::Ours, field), median(runs, peer, field))
    };
    Ratio {
        scenario: runs.first().map(|m| m.scenario.clone()).unwrap_or_default(),
        total_vs_qemu_default: ratio(|m| m.total_ms, Vmm::QemuDefault),
        total_vs_qemu_best: ratio(|m| m.total_ms, Vmm::QemuBest),
        total_vs_qemu_tls: ratio(|m| m.total_ms, Vmm::QemuTls),
        downtime_vs_qemu_default: ratio(|m| m.downtime_ms, Vmm::QemuDefault),
        downtime_vs_qemu_best: ratio(|m| m.downtime_ms, Vmm::QemuBest),
        downtime_vs_qemu_tls: ratio(|m| m.downtime_ms, Vmm::QemuTls),
    }
}

/// Where pre-copy stops converging without auto-converge, and what auto-converge does there.
pub(super) fn bench_findings(runs: &[Migration]) -> Vec<String> {
    let rate_label = |rate: u64| match rate {
        0 => "unlimited".to_owned(),
        rate => format!("{rate} pages/s"),
    };
    // Unlimited (0) is the highest rate.
    let order = |m: &&Migration| {
        m.rate
            .map_or(u64::MAX, |r| if r == 0 { u64::MAX } else { r })
    };
    let mut plain: Vec<&Migration> = runs.iter().filter(|m| !m.auto_converge).collect();
    plain.sort_by_key(order);
    let mut findings = Vec::new();
    let converged = |m: &Migration| m.completed() && m.stop == StopReason::Converged.label();
    match plain.iter().find(|m| !converged(m)) {
        None => findings.push("pre-copy converged at every rate measured".to_owned()),
        Some(first) => {
            let rate = first.rate.unwrap_or(0);
            let below = plain
                .iter()
                .take_while(|m| converged(m))
                .last()
                .and_then(|m| m.rate)
                .map_or_else(|| "no rate measured".to_owned(), rate_label);
            findings.push(format!(
                "without auto-converge pre-copy converges up to {below}; at {} it stops by \
                 {} after {} rounds with {:.0} ms downtime ({})",
                rate_label(rate),
                first.stop,
                first.rounds,
                first.downtime_ms,
                first.status
            ));
            let with = runs
                .iter()
                .find(|m| m.auto_converge && m.rate == first.rate);
            if let Some(with) = with {
                findings.push(format!(
                    "with auto-converge at {}: throttle {}%, stops by {} after {} rounds, \
                     {:.0} ms downtime ({})",
                    rate_label(rate),
                    with.throttle_percent,
                    with.stop,
                    with.rounds,
                    with.downtime_ms,
                    with.status
                ));
            }
        }
    }
    let before = plain.iter().filter_map(|m| m.guest_rate_before).max();
    let during = plain.iter().filter_map(|m| m.guest_rate_during).max();
    if let (Some(before), Some(during)) = (before, during) {
        findings.push(format!(
            "the guest wrote up to {before} pages/s before migrating, but at most {during} \
             pages/s while its dirty log was being tracked"
        ));
    }
    let bad: Vec<String> = runs
        .iter()
        .filter(|m| m.integrity_ok != Some(true))
        .map(|m| {
            format!(
                "{}{}",
                m.rate.map(rate_label).unwrap_or_default(),
                if m.auto_converge { " +ac" } else { "" }
            )
        })
        .collect();
    findings.push(if bad.is_empty() {
        "integrity: every destination guest verified its memory with errors=0".to_owned()
    } else {
        format!("integrity NOT confirmed for: {}", bad.join(", "))
    });
    findings
}

pub(super) fn print_report(report: &Report) {
    let machine = &report.machine;
    println!("Laundromat live-migration benchmark");
    println!(
        "machine: {} CPUs, {}, Linux {}; load average {} at start, {} at end",
        machine.nproc, machine.cpu_model, machine.kernel, report.loadavg_start, report.loadavg_end
    );
    print_limits(&report.limits);

    println!();
    println!(
        "1. Idle pvh-dirty guest (wss={IDLE_WSS_MIB}), {IDLE_MEM_MIB} MiB of random memory from \
         identical memory files; median of {} run(s)",
        report.idle_runs
    );
    println!(
        "  {:<14} {:>4} {:>20} {:>22} {:>9} {:>6} {:>8}",
        "vmm",
        "done",
        "total ms (min..max)",
        "downtime ms (min..max)",
        "sent MiB",
        "rounds",
        "Gbit/s"
    );
    for m in &report.idle_medians {
        let range = |s: Option<Summary>| {
            s.map_or_else(
                || "-".to_owned(),
                |s| format!("{:.0} ({:.0}..{:.0})", s.median, s.min, s.max),
            )
        };
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        println!(
            "  {:<14} {:>4} {:>20} {:>22} {:>9} {:>6} {:>8}",
            m.vmm.label(),
            format!("{}/{}", m.completed, m.runs),
            range(m.total_ms),
            range(m.downtime_ms),
            opt(m.transferred_bytes.map(|b| b / f64::from(1 << 20)), 0),
            opt(m.rounds, 0),
            opt(m.throughput_gbit, 2),
        );
    }
    println!("  every run:");
    print_runs(&report.idle);
    let targets = &report.targets;
    println!("  targets:");
    let n = report.connections;
    println!(
        "    total time, ours / QEMU best (plain):        {}",
        targets.total_vs_qemu_best.show("x")
    );
    println!(
        "    total time, ours / QEMU TLS:                 {}",
        targets.total_vs_qemu_tls.show("x")
    );
    println!(
        "    downtime, ours:                              {}",
        targets.downtime_ms.show(" ms")
    );
    println!(
        "    throughput, ours / loopback TCP, 1 stream:   {}",
        targets.throughput_vs_tcp.show("x")
    );
    println!(
        "    throughput, ours / loopback TCP, {n} streams:  {}",
        targets.throughput_vs_tcp_streams.show("x")
    );
    let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}x"));
    println!(
        "  not targets: ours / raw TLS, {n} streams: {}; raw TLS / raw TCP, {n} streams: {}",
        show(targets.throughput_vs_tls_streams),
        show(targets.tls_vs_tcp_streams)
    );
    print_parts(&report.idle);

    println!();
    println!(
        "2. pvh-dirty working sets, {WSS_MEM_MIB} MiB anonymous RAM, {} run(s) each (QEMU is \
         forced to switch over after {} s)",
        report.wss_runs, report.qemu_converge_secs
    );
    print_runs(&report.working_sets);
    print_parts(&report.working_sets);
    let range = |s: &Option<Summary>| {
        s.as_ref().map_or_else(
            || "n/a".to_owned(),
            |s| format!("{:.1} ms ({:.1}..{:.1})", s.median, s.min, s.max),
        )
    };
    println!("  Targets (medians; min..max):");
    for t in &report.working_set_targets {
        println!(
            "    {}: downtime ours {} vs QEMU best {}; ours / QEMU best: {}",
            t.scenario,
            range(&t.ours_downtime_ms),
            range(&t.qemu_best_downtime_ms),
            t.downtime_vs_qemu_best.show("x")
        );
    }

    println!();
    println!("Ratios ours / QEMU (below 1 is better for ours)");
    println!(
        "  {:<24} {:>13} {:>10} {:>9} {:>12} {:>9} {:>8}",
        "scenario",
        "total/default",
        "total/best",
        "total/TLS",
        "down/default",
        "down/best",
        "down/TLS"
    );
    for ratio in &report.ratios {
        let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
        println!(
            "  {:<24} {:>13} {:>10} {:>9} {:>12} {:>9} {:>8}",
            ratio.scenario,
            show(ratio.total_vs_qemu_default),
            show(ratio.total_vs_qemu_best),
            show(ratio.total_vs_qemu_tls),
            show(ratio.downtime_vs_qemu_default),
            show(ratio.downtime_vs_qemu_best),
            show(ratio.downtime_vs_qemu_tls)
        );
    }

    println!();
    println!(
        "3. bench guest, workload=dirty wss={BENCH_WSS_MIB} MiB, {BENCH_VCPUS} vCPUs, \
         {BENCH_MEM_MIB} MiB, ours only (--max-rounds {BENCH_MAX_ROUNDS} --timeout-s \
         {BENCH_TIMEOUT_S} --on-timeout force)"
    );
    print_runs(&report.bench);
    for finding in &report.bench_findings {
        println!("  {finding}");
    }

    let problems: Vec<&Migration> = [&report.idle, &report.working_sets, &report.bench]
        .into_iter()
        .flatten()
        .filter(|m| !m.problems.is_empty())
        .collect();
    if !problems.is_empty() {
        println!();
        println!("Problems");
        for m in problems {
            for problem in &m.problems {
                println!("  {}, {}: {problem}", m.scenario, describe(m));
            }
        }
    }

    println!();
    println!("Notes");
    for line in NOTES {
        println!("  {line}");
    }
    println!(
        "  ours = vmm ctl migrate --connections {}: mutual TLS 1.3 (rustls), pinned ed25519 keys.",
        report.connections
    );
    println!(
        "  QEMU best = multifd with {} channels, max-bandwidth {UNLIMITED_BANDWIDTH} B/s, \
         downtime-limit {DOWNTIME_TARGET_MS} ms, plaintext.",
        report.connections
    );
    println!(
        "  QEMU TLS = QEMU best with tls-creds-x509 on both ends (certtool CA, ed25519 keys, \
         verify-peer=on, priority {QEMU_TLS_PRIORITY})."
    );

    println!();
    println!("Commands (first run of each; ports and socket names differ per run)");
    let mut seen: Vec<(String, String)> = Vec::new();
    for m in [&report.idle, &report.working_sets, &report.bench]
        .into_iter()
        .flatten()
    {
        let key = (m.scenario.clone(), describe(m));
        if seen.contains(&key) {
            continue;
        }
        println!("  {}, {}:", key.0, key.1);
        for command in &m.commands {
            println!("    {command}");
        }
        seen.push(key);
    }
}

/// The machine's limits: loopback TCP and TLS, one stream and as many as our connections, and
/// memcpy.
pub(super) fn print_limits(limits: &Limits) {
    println!();
    println!("Physical limits (median of 3 transfers / 5 copies; min..max)");
    let gib = limits.tcp_bytes >> 30;
    let kib = limits.tcp_write_bytes >> 10;
    let line = |what: String, s: &Summary| {
        println!(
            "  {what:<44} {:>6.2} Gbit/s ({:.2}..{:.2})",
            s.median, s.min, s.max
        )
    };
    let n = limits.streams;
    line(
        format!("loopback TCP, 1 stream, {gib} GiB in {kib} KiB writes:"),
        &limits.tcp_gbit,
    );
    line(
        format!("loopback TCP, {n} streams:"),
        &limits.tcp_streams_gbit,
    );
    line(
        "loopback TLS, our connections, 1 stream:".into(),
        &limits.tls_gbit,
    );
    line(
        format!("loopback TLS, our connections, {n} streams:"),
        &limits.tls_streams_gbit,
    );
    line(
        "loopback TLS, rustls defaults, 1 stream:".into(),
        &limits.rustls_gbit,
    );
    line(
        format!("loopback TLS, rustls defaults, {n} streams:"),
        &limits.rustls_streams_gbit,
    );
    println!(
        "  TLS = mutual TLS 1.3, pinned ed25519 keys, {}; our connections = \
         migrator::transport; TLS / TCP = {:.2} (1 \
         stream), {:.2} ({n} streams)",
        limits.cipher_suite,
        limits.tls_gbit.median / limits.tcp_gbit.median,
        limits.tls_streams_gbit.median / limits.tcp_streams_gbit.median,
    );
    println!(
        "  memcpy, {} MiB buffer: {:.2} GB/s ({:.2}..{:.2})",
        limits.memcpy_bytes >> 20,
        limits.memcpy_gbyte.median,
        limits.memcpy_gbyte.min,
        limits.memcpy_gbyte.max
    );
}

/// Our downtime's parts, per run.
pub(super) fn print_parts(runs: &[Migration]) {
    for m in runs.iter().filter(|m| m.vmm == Vmm::Ours) {
        if let Some(p) = &m.downtime_parts {
            println!(
                "  {}: downtime {:.1} ms = final pages {:.1} (pause {:.1}, dirty log \
                 {:.1}, {} pages sent) + state {:.1} + resume {:.1}",
                row_label(m),
                m.downtime_ms,
                p.final_pages_ms,
                p.pause_ms,
                p.final_sync_ms,
                m.final_pages,
                p.state_ms,
                p.resume_ms
            );
        }
    }
}

pub(super) fn describe(m: &Migration) -> String {
    let mut text = m.vmm.label().to_owned();
    if let Some(rate) = m.rate {
        text += &match rate {
            0 => ", rate unlimited".to_owned(),
            rate => format!(", rate {rate}/s"),
        };
    }
    if m.auto_converge {
        text += ", auto-converge";
    }
    text
}

pub(super) fn print_runs(runs: &[Migration]) {
    println!(
        "  {:<22} {:>9} {:>8} {:>7} {:>8} {:>8} {:>6} {:>6} {:>7} {:>11} {:>4}  {:<16} check",
        "run",
        "status",
        "total ms",
        "down ms",
        "wall ms",
        "sent MiB",
        "rounds",
        "Gbit/s",
        "dirty/s",
        "guest/s",
        "thr%",
        "stopped by"
    );
    for m in runs {
        let label = row_label(m);
        let check = match m.integrity_ok {
            Some(true) => format!("ok: {}", m.integrity),
            Some(false) => format!("FAILED: {}", m.integrity),
            None => "-".to_owned(),
        };
        let guest_rate = match (m.guest_rate_before, m.guest_rate_during) {
            (None, None) => "-".to_owned(),
            (before, during) => format!("{}>{}", thousands(before), thousands(during)),
        };
        println!(
            "  {:<22} {:>9} {:>8.1} {:>7.1} {:>8.1} {:>8.1} {:>6} {:>6.2} {:>7} {:>11} {:>4}  {:<16} {}",
            label,
            m.status,
            m.total_ms,
            m.downtime_ms,
            m.wall_ms,
            m.transferred_bytes as f64 / f64::from(1 << 20),
            m.rounds,
            m.throughput_gbit,
            thousands(Some(m.dirty_pages_rate)),
            guest_rate,
            m.throttle_percent,
            m.stop,
            check
        );
    }
}

/// A rate in thousands ("412k"), or "-".
pub(super) fn thousands(rate: Option<u64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{}k", (r + 500) / 1000))
}

/// A short name for a table row; the section heading says the rest.
pub(super) fn row_label(m: &Migration) -> String {
    match (m.rate, m.scenario.strip_prefix("pvh-dirty ")) {
        (Some(0), _) => format!(
            "rate unlimited{}",
            if m.auto_converge { ", ac" } else { "" }
        ),
        (Some(rate), _) => format!("rate {rate}/s{}", if m.auto_converge { ", ac" } else { "" }),
        (None, Some(wss)) => format!("{wss}, {}", m.vmm.label()),
        (None, None) => format!("{}, run {}", m.vmm.label(), m.run),
    }
}
