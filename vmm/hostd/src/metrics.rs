//! hostd's Prometheus metrics, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Counters by label value. Label values are fixed strings chosen by hostd (never by a
/// client), so the number of series is bounded.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
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
}
