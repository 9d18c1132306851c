//! hostd's Prometheus metrics, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Counters by label value. Label values are fixed strings chosen by hostd (never by a
/// client), so the number of series is bounded.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    downtime: Mutex<Histogram>,
}

/// Upper bounds of the migration downtime buckets, seconds: from the few milliseconds an idle
/// guest needs to the seconds that would mean something is wrong.
const DOWNTIME_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A Prometheus histogram: counts per bucket (not yet cumulative), the sum and the count.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; DOWNTIME_BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The counters hostd keeps, with their label name and help text.
const COUNTERS: &[(&str, &str, &str)] = &[
    (
        "hostd_admissions_total",
        "outcome",
        "VM admissions by outcome (admitted or the refusal).",
    ),
    (
        "hostd_payments_total",
        "outcome",
        "Payments by outcome (accepted or the refusal).",
    ),
    (
        "hostd_vms_reclaimed_total",
        "reason",
        "VMs stopped and freed, by reason.",
    ),
    (
        "hostd_redemptions_total",
        "outcome",
        "Claims sent to the broker, by outcome.",
    ),
    (
        "hostd_migrations_total",
        "outcome",
        "Outgoing migrations, by outcome.",
    ),
    (
        "hostd_incoming_migrations_total",
        "outcome",
        "Incoming migrations, by outcome (running here, or failed).",
    ),
    (
        "hostd_taps_total",
        "event",
        "VM taps created, removed (as their VM ended, or as orphans at start) and failures.",
    ),
];

/// Point-in-time values passed in at render time.
#[derive(Debug, Default)]
pub struct Gauges {
    pub vms_by_state: BTreeMap<&'static str, u64>,
    pub free_memory_mib: u64,
    pub free_vcpus: u64,
}

impl Metrics {
    pub fn inc(&self, name: &'static str, label: &'static str) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry((name, label)).or_default() += 1;
    }

    /// Records the downtime of a completed outgoing migration.
    pub fn observe_downtime(&self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let mut histogram = self.downtime.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = DOWNTIME_BUCKETS.iter().position(|&le| seconds <= le) {
            histogram.buckets[bucket] += 1;
        }
        histogram.sum += seconds;
        histogram.count += 1;
    }

    pub fn get(&self, name: &'static str, label: &'static str) -> u64 {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.get(&(name, label)).copied().unwrap_or(0)
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP hostd_vms VMs on this host, by state.");
        let _ = writeln!(out, "# TYPE hostd_vms gauge");
        for (state, count) in &gauges.vms_by_state {
            let _ = writeln!(out, "hostd_vms{{state=\"{state}\"}} {count}");
        }
        for (name, help, value) in [
            (
                "hostd_free_memory_mib",
                "Guest memory this host can still hand out.",
                gauges.free_memory_mib,
            ),
            (
                "hostd_free_vcpus",
                "vCPUs this host can still hand out.",
                gauges.free_vcpus,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (name, label, help) in COUNTERS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((series, value), count) in counters.range((*name, "")..) {
                if series != name {
                    break;
                }
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
            }
        }
        drop(counters);
        let histogram = self.downtime.lock().unwrap_or_else(|e| e.into_inner());
        let name = "hostd_migration_downtime_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Downtime of completed outgoing migrations (paused here to running there).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (le, count) in DOWNTIME_BUCKETS.iter().zip(histogram.buckets) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            histogram.count, histogram.sum, histogram.count
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let metrics = Metrics::default();
        metrics.inc("hostd_payments_total", "replayed");
        metrics.inc("hostd_payments_total", "replayed");
        metrics.inc("hostd_vms_reclaimed_total", "unpaid");
        let mut gauges = Gauges::default();
        gauges.vms_by_state.insert("running", 3);
        let text = metrics.render(&gauges);
        assert!(text.contains("hostd_payments_total{outcome=\"replayed\"} 2\n"));
        assert!(text.contains("hostd_vms_reclaimed_total{reason=\"unpaid\"} 1\n"));
        assert!(text.contains("hostd_vms{state=\"running\"} 3\n"));
        assert_eq!(metrics.get("hostd_payments_total", "replayed"), 2);
    }

    #[test]
    fn the_downtime_histogram_is_cumulative() {
        let metrics = Metrics::default();
        for seconds in [0.0004, 0.003, 0.003, 0.2, 7.0, f64::NAN, -1.0] {
            metrics.observe_downtime(seconds);
        }
        let text = metrics.render(&Gauges::default());
        for line in [
            "hostd_migration_downtime_seconds_bucket{le=\"0.001\"} 1\n",
            "hostd_migration_downtime_seconds_bucket{le=\"0.0025\"} 1\n",
            "hostd_migration_downtime_seconds_bucket{le=\"0.005\"} 3\n",
            "hostd_migration_downtime_seconds_bucket{le=\"0.25\"} 4\n",
            "hostd_migration_downtime_seconds_bucket{le=\"5\"} 4\n",
            "hostd_migration_downtime_seconds_bucket{le=\"+Inf\"} 5\n",
            "hostd_migration_downtime_seconds_count 5\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix("hostd_migration_downtime_seconds_sum "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!((sum - 7.2064).abs() < 1e-9, "{sum}");
    }
}
