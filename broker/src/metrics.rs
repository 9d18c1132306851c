//! Prometheus counters, in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// (operation, status) -> (count, seconds).
type Counters = BTreeMap<(&'static str, u16), (u64, f64)>;

/// Requests by operation and status, and the time spent on them.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<Counters>,
}

impl Metrics {
    pub fn observe(&self, operation: &'static str, status: u16, seconds: f64) {
        if let Ok(mut requests) = self.requests.lock() {
            let entry = requests.entry((operation, status)).or_default();
            entry.0 += 1;
            entry.1 += seconds;
        }
    }

    /// The exposition text, with `extra` gauges (name, help, value) appended.
    pub fn render(&self, extra: &[(&str, &str, i64)]) -> String {
        let mut out = String::new();
        let requests = match self.requests.lock() {
            Ok(requests) => requests.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        out.push_str("# HELP broker_requests_total Requests answered, by operation and status.\n");
        out.push_str("# TYPE broker_requests_total counter\n");
        for ((op, status), (count, _)) in &requests {
            let _ = writeln!(
                out,
                "broker_requests_total{{op=\"{op}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP broker_request_seconds_total Time spent answering, by operation and status.\n",
        );
        out.push_str("# TYPE broker_request_seconds_total counter\n");
        for ((op, status), (_, seconds)) in &requests {
            let _ = writeln!(
                out,
                "broker_request_seconds_total{{op=\"{op}\",status=\"{status}\"}} {seconds:.6}"
            );
        }
        for (name, help, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
