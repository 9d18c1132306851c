//! What `laundromat vm migrate` shows while the source hostd streams a migration's progress:
//! a live bar on a terminal (bytes sent of this round's total, the round, what is left, the
//! rate and the expected downtime), or one plain line per event otherwise, so that scripts and
//! logs read the same facts.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// How the progress is shown.
pub enum MigrationProgress {
    /// A bar on stderr, redrawn as the rounds go.
    Bar(ProgressBar),
    /// One line per event on stderr.
    Lines,
}

const TEMPLATE: &str = "{spinner} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} {wide_msg}";

impl MigrationProgress {
    /// A bar when stderr is a terminal and the output is not `--json`; plain lines otherwise.
    pub fn for_stderr(json: bool) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Self::Lines;
        }
        Self::Bar(Self::bar(ProgressDrawTarget::stderr()))
    }

    /// A bar drawn to `target` (hidden in tests).
    pub fn bar(target: ProgressDrawTarget) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(0), target);
        // The template is a constant: it always parses, but a failure must not abort a move.
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("asking the destination to prepare");
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// Shows one line of the source's stream.
    pub fn show(&self, line: &Value) {
        match self {
            Self::Lines => eprintln!("{}", describe(line)),
            Self::Bar(bar) => update(bar, line),
        }
    }

    /// Ends the display: a completed bar is cleared (the summary line follows), a failed one
    /// stays on screen with why.
    pub fn finish(&self, outcome: Result<(), &str>) {
        if let Self::Bar(bar) = self {
            match outcome {
                Ok(()) => bar.finish_and_clear(),
                Err(why) => bar.abandon_with_message(format!("migration failed: {why}")),
            }
        }
    }
}

/// Moves the bar to what one stream line reports.
fn update(bar: &ProgressBar, line: &Value) {
    match line["event"].as_str() {
        Some("progress") => {
            let sent = line["transferred"].as_u64().unwrap_or(0);
            let left = line["remaining"].as_u64().unwrap_or(0);
            bar.set_length(sent.saturating_add(left));
            bar.set_position(sent);
            bar.set_message(round_text(line));
        }
        Some("started") => bar.set_message(format!(
            "pre-copy to {}",
            line["to"].as_str().unwrap_or("the destination")
        )),
        Some(_) => bar.set_message(describe(line).trim_start().to_owned()),
        None => {}
    }
}

/// A pre-copy round: its number, what is left, the rate, and the downtime expected now.
fn round_text(line: &Value) -> String {
    format!(
        "round {}: {} MiB left at {:.0} Mbit/s, expected downtime {:.0} ms",
        line["round"],
        line["remaining"].as_u64().unwrap_or(0) >> 20,
        line["mbps"].as_f64().unwrap_or(0.0),
        line["expected-downtime-ms"].as_f64().unwrap_or(0.0),
    )
}

/// One progress line as a tenant reads it.
pub fn describe(line: &Value) -> String {
    match line["event"].as_str() {
        Some("progress") => format!("  {}", round_text(line)),
        Some("switchover") => match line["error"].as_str() {
            Some(why) => format!("  switchover refused at link {}: {why}", line["index"]),
            None => format!("  switchover at link {}", line["index"]),
        },
        Some("started") => format!("  started, to {}", line["to"].as_str().unwrap_or("?")),
        Some(event) => match line["message"].as_str() {
            Some(message) => format!("  {event}: {message}"),
            None => format!("  {event}"),
        },
        None => format!("  {line}"),
    }
}

/// The final line: outcome, rounds, bytes sent, downtime and total time.
pub fn summary(vm: &str, result: &Value) -> String {
    let stats = &result["stats"];
    let status = result["status"].as_str().unwrap_or("unknown");
    let place = if status == "completed" {
        format!(
            "now on {}",
            result["url"].as_str().unwrap_or("the destination")
        )
    } else {
        "still on its source".to_owned()
    };
    format!(
        "vm {vm} {status}: {place}; {} rounds, {} MiB sent, downtime {:.0} ms, total {:.0} ms",
        stats["rounds"].as_array().map_or(0, Vec::len),
        stats["ram"]["transferred"].as_u64().unwrap_or(0) >> 20,
        stats["downtime-ms"].as_f64().unwrap_or(0.0),
        stats["total-time-ms"].as_f64().unwrap_or(0.0),
    )
}

/// Why a migration did not complete, from the stream: the `vmm`'s error, or the refused
/// switchover's, or just the outcome.
pub fn failure_reason(lines: &[Value], result: &Value) -> String {
    let status = result["status"].as_str().unwrap_or("unknown");
    let why = result["stats"]["error"].as_str().or_else(|| {
        lines
            .iter()
            .rev()
            .find_map(|line| (line["event"] == "switchover").then(|| line["error"].as_str())?)
    });
    match why {
        Some(why) => format!("{status} ({why})"),
        None => status.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn progress(round: u32, sent: u64, left: u64) -> Value {
        json!({"event": "progress", "round": round, "transferred": sent, "remaining": left,
               "mbps": 812.4, "expected-downtime-ms": 3.6})
    }

    #[test]
    fn the_bar_follows_the_rounds() {
        let bar = MigrationProgress::bar(ProgressDrawTarget::hidden());
        let shown = MigrationProgress::Bar(bar.clone());
        shown.show(&json!({"event": "started", "to": "host-b"}));
        assert_eq!(bar.message(), "pre-copy to host-b");
        shown.show(&progress(1, 48 << 20, 16 << 20));
        assert_eq!((bar.position(), bar.length()), (48 << 20, Some(64 << 20)));
        assert_eq!(
            bar.message(),
            "round 1: 16 MiB left at 812 Mbit/s, expected downtime 4 ms"
        );
        shown.show(&progress(2, 60 << 20, 1 << 20));
        assert_eq!((bar.position(), bar.length()), (60 << 20, Some(61 << 20)));
        assert!(bar.message().starts_with("round 2: 1 MiB left"));
        shown.show(&json!({"event": "switchover", "index": 7, "commit": true}));
        assert_eq!(bar.message(), "switchover at link 7");
        shown.finish(Ok(()));
        assert!(bar.is_finished());
    }

    #[test]
    fn a_failed_migration_leaves_the_bar_with_why() {
        let bar = MigrationProgress::bar(ProgressDrawTarget::hidden());
        let shown = MigrationProgress::Bar(bar.clone());
        shown.show(&progress(1, 10, 10));
        shown.finish(Err("failed (the destination refused)"));
        assert!(bar.is_finished());
        assert_eq!(
            bar.message(),
            "migration failed: failed (the destination refused)"
        );
        assert_eq!(bar.position(), 10, "the bar stays where it stopped");
    }

    #[test]
    fn plain_lines_and_the_summary_name_every_figure() {
        assert_eq!(
            describe(&progress(3, 0, 5 << 20)),
            "  round 3: 5 MiB left at 812 Mbit/s, expected downtime 4 ms"
        );
        let refused = json!({"event": "switchover", "index": 9, "commit": false,
                             "error": "the broker refused the lease handover"});
        assert_eq!(
            describe(&refused),
            "  switchover refused at link 9: the broker refused the lease handover"
        );
        let result = json!({"event": "result", "status": "completed", "url": "http://b",
            "stats": {"rounds": [{}, {}, {}], "ram": {"transferred": 70u64 << 20},
                      "downtime-ms": 12.4, "total-time-ms": 950.0}});
        assert_eq!(
            summary("vm-1", &result),
            "vm vm-1 completed: now on http://b; 3 rounds, 70 MiB sent, downtime 12 ms, total 950 ms"
        );
        let failed = json!({"event": "result", "status": "failed", "stats": null});
        assert_eq!(
            summary("vm-1", &failed),
            "vm vm-1 failed: still on its source; 0 rounds, 0 MiB sent, downtime 0 ms, total 0 ms"
        );
        assert_eq!(
            failure_reason(&[refused.clone(), failed.clone()], &failed),
            "failed (the broker refused the lease handover)"
        );
        let vmm_error = json!({"status": "cancelled", "stats": {"error": "pre-copy timed out"}});
        assert_eq!(
            failure_reason(&[refused], &vmm_error),
            "cancelled (pre-copy timed out)"
        );
        assert_eq!(failure_reason(&[], &failed), "failed");
    }
}
