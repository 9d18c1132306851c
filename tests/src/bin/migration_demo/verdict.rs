//! What the demo reads from the VMMs (progress, statistics, the guest's own reports) and the
//! verdict it prints.
use super::*;

/// `vmm ctl migrate`'s progress event.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct Progress {
    pub(super) round: u64,
    pub(super) transferred: u64,
    pub(super) remaining: u64,
    pub(super) mbps: f64,
    pub(super) dirty_pages_rate: u64,
    pub(super) expected_downtime_ms: f64,
}

/// The final statistics, with QEMU's names.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
pub(super) struct Stats {
    pub(super) ok: bool,
    pub(super) status: String,
    pub(super) error: Option<String>,
    pub(super) total_time_ms: f64,
    pub(super) setup_time_ms: f64,
    pub(super) downtime_ms: f64,
    pub(super) expected_downtime_ms: f64,
    pub(super) downtime_parts: DowntimeParts,
    pub(super) ram: Ram,
    pub(super) rounds: Vec<Round>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
pub(super) struct DowntimeParts {
    pub(super) final_pages_ms: f64,
    pub(super) state_ms: f64,
    pub(super) resume_ms: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
pub(super) struct Ram {
    pub(super) transferred: u64,
    pub(super) total: u64,
    pub(super) duplicate: u64,
    pub(super) normal: u64,
    pub(super) normal_bytes: u64,
    pub(super) dirty_sync_count: u64,
    pub(super) mbps: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
pub(super) struct Round {
    pub(super) round: u64,
    pub(super) pages: u64,
    pub(super) bytes: u64,
    pub(super) duration_ms: f64,
}

impl Stats {
    pub(super) fn parse(value: &Value) -> Result<Self> {
        Stats::deserialize(value).context("cannot read the migration's statistics")
    }
}

pub(super) fn print_stats(stats: &Stats, target_ms: u64, out: Out) {
    let mib = |bytes: u64| bytes as f64 / MIB;
    let (ram, parts) = (&stats.ram, &stats.downtime_parts);
    let error = stats
        .error
        .as_ref()
        .map_or_else(String::new, |error| format!(" ({error})"));
    out.line(format_args!(
        "
Migration {HOST_A} -> {HOST_B}
  status                 {status}{error}
  total time             {total:9.1} ms
  setup time             {setup:9.1} ms
  downtime               {downtime:9.1} ms   (target {target_ms} ms, expected {expected:.1} ms)
    final dirty pages    {final_pages:9.1} ms
    vCPU + device state  {state:9.1} ms
    resume on {HOST_B}      {resume:9.1} ms
  transferred            {transferred:9.1} MiB  (guest RAM {total_mib:.0} MiB)
  zero pages             {zero:9}      ({zero_mib:.1} MiB never sent)
  pages sent             {normal:9}      ({normal_mib:.1} MiB)
  throughput             {mbps:9.0} Mbit/s
  rounds                 {rounds:9}      (dirty-log syncs {syncs})",
        status = stats.status,
        total = stats.total_time_ms,
        setup = stats.setup_time_ms,
        downtime = stats.downtime_ms,
        expected = stats.expected_downtime_ms,
        final_pages = parts.final_pages_ms,
        state = parts.state_ms,
        resume = parts.resume_ms,
        transferred = mib(ram.transferred),
        total_mib = mib(ram.total),
        zero = ram.duplicate,
        zero_mib = mib(ram.duplicate * PAGE),
        normal = ram.normal,
        normal_mib = mib(ram.normal_bytes),
        mbps = ram.mbps,
        rounds = stats.rounds.len(),
        syncs = ram.dirty_sync_count,
    ));
    let last = stats.rounds.len().saturating_sub(1);
    for (index, round) in stats.rounds.iter().enumerate() {
        // The last round of a completed migration is the stop-and-copy one.
        let paused = stats.status == "completed" && index == last;
        out.line(format_args!(
            "    round {:<3} {:9} pages {:8.1} MiB {:9.1} ms{}",
            round.round,
            round.pages,
            mib(round.bytes),
            round.duration_ms,
            if paused { "   (VM paused)" } else { "" }
        ));
    }
}

/// A progress report of the guest: `bench: t=..ms gen=N ... errors=N`.
#[derive(Clone, Serialize)]
pub(super) struct Report {
    pub(super) t_ms: u64,
    pub(super) gen: u64,
}

/// What the guest said about its memory, read from both consoles.
#[derive(Default, Serialize)]
pub(super) struct GuestCheck {
    pub(super) last_on_source: Option<Report>,
    pub(super) first_on_destination: Option<Report>,
    pub(super) final_gen: Option<u64>,
    pub(super) final_errors: Option<u64>,
    /// The most errors any report showed.
    pub(super) max_reported_errors: u64,
    pub(super) integrity_error_lines: Vec<String>,
    pub(super) source_exit: Option<String>,
    pub(super) destination_exit: Option<String>,
    pub(super) destination_exit_code: Option<i32>,
}

impl GuestCheck {
    pub(super) fn read(session: &Session) -> Self {
        let source = session.source.as_ref();
        let source_lines = source.map_or(&[][..], |s| &s.lines[..]);
        let dest_lines = &session.dest.lines[..];
        let all = || source_lines.iter().chain(dest_lines);
        let done = dest_lines
            .iter()
            .find_map(|line| line.strip_prefix("bench: done "));
        let exit = |w: &Watched| w.end.as_ref().map(|end| exit_text(end.status));
        GuestCheck {
            // The last line on host-a may be cut short; `report` ignores a cut field.
            last_on_source: source_lines.iter().rev().find_map(|l| report(l)),
            first_on_destination: dest_lines.iter().find_map(|l| report(l)),
            final_gen: done.and_then(|d| field(d, "gen")),
            final_errors: done.and_then(|d| field(d, "errors")),
            max_reported_errors: all().filter_map(|l| field(l, "errors")).max().unwrap_or(0),
            integrity_error_lines: all()
                .filter(|l| l.contains("integrity error"))
                .cloned()
                .collect(),
            source_exit: source.and_then(exit),
            destination_exit: exit(&session.dest),
            destination_exit_code: session.dest.end.as_ref().and_then(|end| end.status.code()),
        }
    }

    pub(super) fn print(&self, out: Out) {
        let report = |r: &Option<Report>| {
            r.as_ref()
                .map_or("none".into(), |r| format!("t={}ms gen={}", r.t_ms, r.gen))
        };
        let done = match (self.final_gen, self.final_errors) {
            (Some(gen), Some(errors)) => format!("bench: done gen={gen} errors={errors}"),
            _ => "none".into(),
        };
        let unknown = "unknown";
        out.line(format_args!(
            "
Guest integrity (the guest verifies every page it wrote)
  last report on {HOST_A}    {before}
  first report on {HOST_B}   {after}
  final line on {HOST_B}     {done}
  integrity error lines    {lines}
  {HOST_A} vmm               {source_exit}
  {HOST_B} vmm (the guest)   {dest_exit}",
            before = report(&self.last_on_source),
            after = report(&self.first_on_destination),
            lines = self.integrity_error_lines.len(),
            source_exit = self.source_exit.as_deref().unwrap_or(unknown),
            dest_exit = self.destination_exit.as_deref().unwrap_or(unknown),
        ));
    }
}

/// "exit code N", or how else the process ended.
pub(super) fn exit_text(status: ExitStatus) -> String {
    status
        .code()
        .map_or_else(|| status.to_string(), |code| format!("exit code {code}"))
}

/// A progress line's time and generation, if it is a whole one (a cut line may end in a
/// truncated number, so its last field is not trusted).
pub(super) fn report(line: &str) -> Option<Report> {
    let rest = line.strip_prefix("bench: t=")?;
    let whole = rest.rsplit_once(' ').map_or("", |(whole, _)| whole);
    Some(Report {
        t_ms: rest.split_once("ms ")?.0.parse().ok()?,
        gen: field(whole, "gen")?,
    })
}

/// The number in `key=N` (or `key=Nms`, `key=N/s`) among a line's words.
pub(super) fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|word| {
        let value = word.strip_prefix(key)?.strip_prefix('=')?;
        value
            .trim_end_matches("ms")
            .trim_end_matches("/s")
            .parse()
            .ok()
    })
}

/// Everything that went wrong; empty if the demo passed.
pub(super) fn verdict(session: &Session, stats: Option<&Stats>, guest: &GuestCheck) -> Vec<String> {
    let mut problems = Vec::new();
    let migrate_end = session.migrate.as_ref().and_then(|m| m.end.as_ref());
    if !stats.is_some_and(|s| s.status == "completed" && s.ok) {
        let why = match (stats, migrate_end) {
            (Some(stats), _) => format!(
                "status {}: {}",
                stats.status,
                stats.error.as_deref().unwrap_or("no error given")
            ),
            (None, Some(end)) => format!("`vmm ctl migrate` {}: {}", end.status, end.stderr),
            (None, None) => "`vmm ctl migrate` gave no answer".into(),
        };
        problems.push(format!("the migration did not complete ({why})"));
        if session.source.as_ref().is_some_and(Watched::finished) {
            problems.push(format!(
                "the guest ended on {HOST_A} before the migration finished; try a larger \
                 --exit-after-ms"
            ));
        }
        problems.push(match &session.dest.end {
            Some(end) => format!(
                "{HOST_B}'s VMM exited with {}: {}",
                exit_text(end.status),
                end.stderr
            ),
            None => format!("{HOST_B}'s VMM was still waiting for the migration"),
        });
        return problems;
    }
    match session.source.as_ref().and_then(|s| s.end.as_ref()) {
        Some(end) if end.status.success() => {}
        Some(end) => problems.push(format!("host-a's VMM exited with {}", end.status)),
        None => problems.push("host-a's VMM did not exit after the migration".into()),
    }
    match (
        &guest.last_on_source,
        &guest.first_on_destination,
        guest.final_gen,
    ) {
        (Some(before), first, Some(last)) => {
            let first_gen = first.as_ref().map_or(last, |r| r.gen);
            if first_gen < before.gen {
                problems.push(format!(
                    "gen went back from {} on host-a to {first_gen} on host-b",
                    before.gen
                ));
            }
            if last <= before.gen {
                problems.push(format!(
                    "gen did not rise on host-b ({} before, {last} at the end)",
                    before.gen
                ));
            }
        }
        (None, _, _) => problems.push("host-a's guest printed no progress report".into()),
        (_, _, None) => problems.push("the guest printed no `bench: done` line on host-b".into()),
    }
    let errors = guest
        .final_errors
        .unwrap_or(0)
        .max(guest.max_reported_errors);
    if errors > 0 || !guest.integrity_error_lines.is_empty() {
        problems.push(format!(
            "the guest found {errors} integrity errors; first: {:?}",
            guest.integrity_error_lines.first()
        ));
    }
    if guest.destination_exit_code != Some(0) {
        problems.push(format!(
            "host-b's VMM (the guest) exited with {}: {}",
            guest.destination_exit.as_deref().unwrap_or("no status"),
            session
                .dest
                .end
                .as_ref()
                .map_or("", |end| end.stderr.as_str())
        ));
    }
    problems
}

pub(super) fn print_verdict(problems: &[String], guest: &GuestCheck, out: Out) {
    out.line("");
    if problems.is_empty() {
        let gen = |r: &Option<Report>| r.as_ref().map_or(0, |r| r.gen);
        out.line(format_args!(
            "PASS: the migration completed; gen never went back ({} last on host-a, {} first on \
             host-b) and rose to {} on host-b; the guest found 0 integrity errors.",
            gen(&guest.last_on_source),
            gen(&guest.first_on_destination),
            guest.final_gen.unwrap_or(0)
        ));
    } else {
        out.line("FAIL:");
        for problem in problems {
            out.line(format_args!("  - {problem}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_progress_reports_and_ignores_cut_fields() {
        let line = "bench: t=2997ms gen=27 pages=467968 rate=13375/s errors=0";
        let r = report(line).expect("a report");
        assert_eq!((r.t_ms, r.gen), (2997, 27));
        assert_eq!(field(line, "errors"), Some(0));
        assert_eq!(field(line, "rate"), Some(13375));
        // Cut in the middle of gen: the number may be short, so it is not used.
        assert!(report("bench: t=2997ms gen=2").is_none());
        assert_eq!(report("bench: t=2997ms gen=27 pa").map(|r| r.gen), Some(27));
        assert!(report("ate=13375/s errors=0").is_none());
        assert_eq!(field("bench: done gen=131 errors=0", "gen"), Some(131));
        assert_eq!(field("xgen=1", "gen"), None);
    }

    #[test]
    fn keeps_a_cut_last_line_and_the_exit_status() {
        let mut shell = Command::new("sh");
        shell.args([
            "-c",
            "printf 'bench: one\\nbench: t=1ms gen=2 pa'; echo oops >&2; exit 3",
        ]);
        let out = Out { json: true };
        let mut child = Watched::spawn("sh", &mut shell, out).expect("sh runs");
        for _ in 0..500 {
            child.poll().expect("a poll");
            if child.finished() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let end = child.end.as_ref().expect("sh ended within 5 s");
        assert_eq!(child.lines, ["bench: one", "bench: t=1ms gen=2 pa"]);
        assert!(end.cut);
        assert_eq!(end.status.code(), Some(3));
        assert_eq!(end.stderr, "oops");
        assert_eq!(report(&child.lines[1]).map(|r| r.gen), Some(2));
    }

    #[test]
    fn statistics_parse_with_qemu_names() {
        let json = serde_json::json!({
            "ok": true, "status": "completed", "downtime-ms": 25.7,
            "downtime-parts": {"final-pages-ms": 6.2, "state-ms": 5.6, "resume-ms": 4.3},
            "ram": {"transferred": 106521056, "duplicate": 49102, "dirty-sync-count": 2},
            "rounds": [{"round": 0, "pages": 16434, "bytes": 67313888, "duration-ms": 865.9}]
        });
        let stats = Stats::parse(&json).expect("statistics");
        assert!(stats.ok);
        assert_eq!(stats.ram.duplicate, 49102);
        assert_eq!(stats.rounds[0].pages, 16434);
        assert!((stats.downtime_parts.state_ms - 5.6).abs() < 1e-9);
    }
}
