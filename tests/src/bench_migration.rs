//! Reading what a live migration left behind: the JSON lines `vmm ctl SOCK migrate` prints,
//! the bench guest's progress lines (its own integrity check), and a free TCP port to migrate
//! over.

use std::{
    io,
    net::{Ipv4Addr, TcpListener},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MigrationOutputError {
    #[error("`vmm ctl migrate` printed no final statistics line; its output was:\n{0}")]
    NoFinalLine(String),
    #[error("`vmm ctl migrate` printed statistics of an unexpected shape: {line:?}")]
    BadStats {
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The final line of `vmm ctl SOCK migrate`: QEMU-style statistics (see `migrator::stats`).
/// Read with defaults so that a failed migration, which leaves most fields at zero, parses.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct OurStats {
    pub ok: bool,
    pub status: String,
    pub total_time_ms: f64,
    pub setup_time_ms: f64,
    pub downtime_ms: f64,
    pub downtime_parts: DowntimeParts,
    pub expected_downtime_ms: f64,
    pub ram: OurRam,
    pub cpu_throttle_percentage: u8,
    pub rounds: Vec<OurRound>,
    /// Which rule ended pre-copy, as the VMM reports it.
    pub stop_reason: Option<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct DowntimeParts {
    pub final_pages_ms: f64,
    /// Of the final pages: stopping the vCPUs and reading the last dirty log (0 from a VMM
    /// that does not report them).
    pub pause_ms: f64,
    pub final_sync_ms: f64,
    pub state_ms: f64,
    pub resume_ms: f64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct OurRam {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    pub duplicate: u64,
    pub normal: u64,
    pub dirty_sync_count: u64,
    pub dirty_pages_rate: u64,
    pub mbps: f64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct OurRound {
    pub round: u32,
    pub pages: u64,
    pub bytes: u64,
    pub duration_ms: f64,
    pub dirty_pages: u64,
}

/// One `{"event":"progress",...}` line, printed after each pre-copy round's dirty-log read.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", default)]
pub struct OurProgress {
    pub round: u32,
    pub remaining: u64,
    pub expected_downtime_ms: f64,
    pub cpu_throttle_percentage: u8,
}

/// Splits the output of `vmm ctl SOCK migrate` into its progress lines and final statistics
/// (the last JSON line that is not an event). Lines that are not JSON are ignored.
pub fn parse_ctl_output(text: &str) -> Result<(Vec<OurProgress>, OurStats), MigrationOutputError> {
    let mut progress = Vec::new();
    let mut last = None;
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if value.get("event").is_some() {
            // A progress line of another shape is not worth failing a benchmark over.
            progress.extend(serde_json::from_value(value).ok());
        } else {
            last = Some(line);
        }
    }
    let line = last.ok_or_else(|| MigrationOutputError::NoFinalLine(text.to_owned()))?;
    let stats = serde_json::from_str(line).map_err(|source| MigrationOutputError::BadStats {
        line: line.to_owned(),
        source,
    })?;
    Ok((progress, stats))
}

/// Why our pre-copy stopped, inferred from its statistics, for a VMM that does not say
/// (`OurStats::stop_reason` is what a newer one reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The rest fit the downtime target at the measured bandwidth.
    Converged,
    /// `--max-rounds` was reached.
    RoundCap,
    /// 3× guest RAM had been sent.
    ThreeTimesRam,
    /// The timeout forced (or cancelled) the switchover.
    Timeout,
    /// The migration did not get as far as a switchover.
    None,
}

impl StopReason {
    /// Applies the stop rules of `migrator::source` to the statistics, in the same order.
    pub fn infer(
        stats: &OurStats,
        progress: &[OurProgress],
        downtime_target_ms: f64,
        max_rounds: u32,
    ) -> StopReason {
        let Some(last) = progress.last() else {
            return StopReason::None;
        };
        if last.expected_downtime_ms <= downtime_target_ms {
            StopReason::Converged
        } else if last.round >= max_rounds {
            StopReason::RoundCap
        } else if stats.ram.total > 0 && stats.ram.transferred >= 3 * stats.ram.total {
            StopReason::ThreeTimesRam
        } else {
            StopReason::Timeout
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            StopReason::Converged => "converged",
            StopReason::RoundCap => "round cap",
            StopReason::ThreeTimesRam => "3x RAM sent",
            StopReason::Timeout => "timeout",
            StopReason::None => "-",
        }
    }
}

/// A progress or final line of the bench guest:
/// `bench: t=1026ms gen=506 pages=2099200 rate=2098631/s errors=0` or
/// `bench: done gen=1608 errors=0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchLine {
    pub generation: u64,
    pub errors: u64,
    /// Pages written per second since the previous line (progress lines only).
    pub rate: Option<u64>,
}

pub fn parse_bench_line(line: &str) -> Option<BenchLine> {
    let rest = line.trim().strip_prefix("bench: ")?;
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
    };
    let number = |key: &str| field(key)?.parse().ok();
    Some(BenchLine {
        generation: number("gen")?,
        errors: number("errors")?,
        rate: field("rate").and_then(|rate| rate.strip_suffix("/s")?.parse().ok()),
    })
}

/// What a bench guest's console says about the integrity of its memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Integrity {
    /// Progress lines seen.
    pub lines: usize,
    pub first_generation: Option<u64>,
    pub last_generation: Option<u64>,
    /// The largest `errors=` count (the guest's count is cumulative).
    pub errors: u64,
    /// The write rate on the last progress line, pages per second.
    pub last_rate: Option<u64>,
    /// `integrity error in page ...` lines.
    pub error_lines: usize,
}

impl Integrity {
    pub fn of_console(console: &str) -> Integrity {
        let mut integrity = Integrity::default();
        for line in console.lines() {
            if line.contains("integrity error") {
                integrity.error_lines += 1;
            }
            let Some(parsed) = parse_bench_line(line) else {
                continue;
            };
            integrity.lines += 1;
            integrity.first_generation.get_or_insert(parsed.generation);
            integrity.last_generation = Some(parsed.generation);
            integrity.errors = integrity.errors.max(parsed.errors);
            integrity.last_rate = parsed.rate.or(integrity.last_rate);
        }
        integrity
    }

    /// Whole passes (write, then verify) the guest completed since its first line here.
    pub fn passes(&self) -> u64 {
        match (self.first_generation, self.last_generation) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => 0,
        }
    }

    /// The guest verified at least one whole pass and found nothing wrong.
    pub fn clean(&self) -> bool {
        self.passes() >= 1 && self.errors == 0 && self.error_lines == 0
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now: the kernel picks it, so two calls
/// give distinct ports and other users' fixed ports are avoided.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTL_OUTPUT: &str = r#"{"cpu-throttle-percentage":0,"dirty-pages-rate":35544,"elapsed-ms":465.2,"event":"progress","expected-downtime-ms":460.7,"mbps":1165.1,"remaining":67108864,"round":0,"status":"active","transferred":67133648}
{"cpu-throttle-percentage":0,"dirty-pages-rate":150649,"elapsed-ms":563.9,"event":"progress","expected-downtime-ms":89.1,"mbps":5453.7,"remaining":60743680,"round":1,"status":"active","transferred":134242640}
{"cpu-throttle-percentage":0,"downtime-ms":63.5,"downtime-parts":{"final-pages-ms":57.6,"resume-ms":0.9,"state-ms":2.7},"expected-downtime-ms":89.1,"ok":true,"ram":{"dirty-pages-rate":150649,"dirty-sync-count":2,"duplicate":49146,"mbps":5453.7,"normal":49158,"normal-bytes":201351168,"remaining":0,"total":268435456,"transferred":201351632},"rounds":[{"bytes":67133648,"dirty-pages":16390,"duration-ms":460.9,"pages":16390,"round":0},{"bytes":67108992,"dirty-pages":16384,"duration-ms":98.4,"pages":16384,"round":1},{"bytes":67108992,"dirty-pages":16384,"duration-ms":57.6,"pages":16384,"round":2}],"setup-time-ms":4.0,"status":"completed","total-time-ms":628.1}
"#;

    #[test]
    fn splits_ctl_output_into_progress_and_stats() {
        let (progress, stats) = parse_ctl_output(CTL_OUTPUT).expect("parses");
        assert_eq!(progress.len(), 2);
        assert_eq!(progress[1].round, 1);
        assert!(stats.ok);
        assert_eq!(stats.status, "completed");
        assert_eq!(stats.rounds.len(), 3);
        assert_eq!(stats.ram.transferred, 201_351_632);
        assert!((stats.downtime_parts.final_pages_ms - 57.6).abs() < 1e-9);
        assert_eq!(
            StopReason::infer(&stats, &progress, 300.0, 30),
            StopReason::Converged
        );
        assert_eq!(
            StopReason::infer(&stats, &progress, 50.0, 1),
            StopReason::RoundCap
        );
        assert_eq!(
            StopReason::infer(&stats, &progress, 50.0, 30),
            StopReason::Timeout
        );
    }

    #[test]
    fn a_failed_migration_still_parses() {
        let failed = r#"{"cpu-throttle-percentage":0,"downtime-ms":0.0,"error":"cannot open the migration connection: the destination refused this host (TLS alert BadCertificate)","ok":false,"ram":{"total":0},"rounds":[],"status":"failed","total-time-ms":2.4}"#;
        let (progress, stats) = parse_ctl_output(failed).expect("parses");
        assert!(progress.is_empty() && !stats.ok);
        assert_eq!(stats.status, "failed");
        assert!(stats
            .error
            .as_deref()
            .is_some_and(|e| e.contains("refused this host")));
        assert_eq!(
            StopReason::infer(&stats, &progress, 300.0, 30),
            StopReason::None
        );
        assert!(matches!(
            parse_ctl_output("vmm ctl: cannot connect\n"),
            Err(MigrationOutputError::NoFinalLine(_))
        ));
    }

    #[test]
    fn reads_bench_lines() {
        assert_eq!(
            parse_bench_line("bench: t=1026ms gen=506 pages=2099200 rate=2098631/s errors=0"),
            Some(BenchLine {
                generation: 506,
                errors: 0,
                rate: Some(2_098_631)
            })
        );
        assert_eq!(
            parse_bench_line("bench: done gen=1608 errors=2"),
            Some(BenchLine {
                generation: 1608,
                errors: 2,
                rate: None
            })
        );
        assert_eq!(parse_bench_line("bench: booted vcpus=2 ram=256MiB"), None);
        assert_eq!(parse_bench_line("pvh-dirty: up"), None);
    }

    #[test]
    fn integrity_needs_a_whole_clean_pass() {
        let console = "bench: t=250ms gen=3 pages=1 rate=1/s errors=0\n\
                       bench: t=500ms gen=5 pages=1 rate=1/s errors=0\n";
        let clean = Integrity::of_console(console);
        assert_eq!((clean.lines, clean.passes()), (2, 2));
        assert!(clean.clean());
        assert!(!Integrity::of_console("bench: t=250ms gen=3 errors=0\n").clean());
        let broken = Integrity::of_console(
            "bench: t=250ms gen=3 errors=0\n\
             bench: vcpu 1: integrity error in page 0x107: expected page 0x107 gen 1, found \
             page 0x107 gen 1 with a bad checksum\n\
             bench: t=500ms gen=5 errors=1\n",
        );
        assert_eq!((broken.errors, broken.error_lines), (1, 1));
        assert!(!broken.clean());
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port().expect("a port");
        assert_ne!(port, 0);
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    }
}
