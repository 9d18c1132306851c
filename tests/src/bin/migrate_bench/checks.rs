//! migrate-bench's per-run plumbing: what `vmm ctl migrate` is told, QMP commands, and the
//! checks run after each migration (memory identity, the guest going on, integrity).
use super::*;

/// What `vmm ctl migrate` is told besides the destination; what is not set keeps the VMM's
/// default (downtime target 300 ms, 30 rounds, 600 s).
#[derive(Clone, Copy, Default)]
pub(super) struct MigrateOptions {
    pub(super) max_rounds: Option<u32>,
    /// `--timeout-s`, with `--on-timeout force` so the migration always ends.
    pub(super) timeout_s: Option<u64>,
    pub(super) auto_converge: bool,
    /// `--connections`.
    pub(super) connections: Option<u32>,
}

impl MigrateOptions {
    pub(super) fn ctl_args(self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(connections) = self.connections {
            args.extend(["--connections".into(), connections.to_string()]);
        }
        if let Some(rounds) = self.max_rounds {
            args.extend(["--max-rounds".into(), rounds.to_string()]);
        }
        if let Some(timeout) = self.timeout_s {
            args.extend(["--timeout-s".into(), timeout.to_string()]);
            args.extend(["--on-timeout".into(), "force".into()]);
        }
        if self.auto_converge {
            args.push("--auto-converge".into());
        }
        args
    }
}

/// What `ours_migrate` leaves for the checks.
pub(super) struct OursRun {
    /// The source's console before the migration started, and what it printed during it.
    pub(super) console_before: String,
    pub(super) console_during: String,
    pub(super) dest: BoundedChild,
    pub(super) dest_sock: PathBuf,
}

pub(super) fn fill_ours(migration: &mut Migration, stats: &OurStats) {
    migration.status = stats.status.clone();
    migration.total_ms = stats.total_time_ms;
    migration.downtime_ms = stats.downtime_ms;
    migration.setup_ms = stats.setup_time_ms;
    migration.transferred_bytes = stats.ram.transferred;
    migration.rounds = stats.rounds.len() as u64;
    migration.reported_mbps = stats.ram.mbps;
    migration.dirty_pages_rate = stats.ram.dirty_pages_rate;
    migration.throttle_percent = u64::from(stats.cpu_throttle_percentage);
    migration.downtime_parts = Some(stats.downtime_parts.clone());
    migration.final_pages = stats.rounds.last().map_or(0, |r| r.pages);
    migration.set_throughput();
}

/// Runs one QMP command and logs it, as a line of the exact commands used.
pub(super) fn qmp_run(
    log: &mut Vec<String>,
    qmp: &mut Qmp,
    side: &str,
    command: &str,
    arguments: Value,
) -> Result<Value> {
    log.push(format!(
        "QMP {side}: {}",
        qmp::command_line(command, &arguments)
    ));
    qmp.execute(command, &arguments)
        .with_context(|| format!("QEMU {side}"))
}

/// Compares the two memory files page by page (the destination paused, the source stopped),
/// except what the guest rewrites all the time.
pub(super) fn check_memory(
    files: &MemFiles,
    guest: &PvhGuest,
    migration: &mut Migration,
) -> Result<()> {
    let comparison = compare_pages(&files.source, &files.dest, |address| {
        guest.changing_bytes(address)
    })?;
    let ok = comparison.pages_differing == 0 && comparison.pages_compared > 0;
    migration.integrity = match comparison.first_difference {
        None => format!("memory identical ({} pages)", comparison.pages_compared),
        Some(first) => format!(
            "{} of {} pages DIFFER, first at {first:#x}",
            comparison.pages_differing, comparison.pages_compared
        ),
    };
    migration.integrity_ok = Some(ok);
    if !ok {
        migration.problems.push(format!(
            "destination memory differs from the source: {}",
            migration.integrity
        ));
    }
    Ok(())
}

/// pvh-dirty prints a dot after every 2^20 page writes: one on the destination's console
/// shows the guest went on running its loop there.
pub(super) fn check_dot(dest: &mut BoundedChild, timeout: Duration, migration: &mut Migration) {
    let ok = dest.wait_for(".", timeout).is_ok();
    migration.integrity = if ok {
        "guest runs on (printed a dot)".into()
    } else {
        "guest printed nothing on the destination".into()
    };
    migration.integrity_ok = Some(ok);
}

/// Lets the bench guest run on the destination until it has verified two whole passes (and at
/// least one second), then reads its own verdict from its progress lines.
pub(super) fn check_bench(
    dest: &mut BoundedChild,
    timeout: Duration,
    migration: &mut Migration,
) -> Result<()> {
    let started = Instant::now();
    let waited = wait_until(timeout, || {
        let integrity = Integrity::of_console(&dest.console());
        Ok(started.elapsed() >= Duration::from_secs(1) && integrity.passes() >= 2)
    });
    let integrity = Integrity::of_console(&dest.console());
    let ok = integrity.clean() && waited.is_ok();
    migration.integrity = format!(
        "errors={} over {} passes ({} lines) on the destination",
        integrity.errors,
        integrity.passes(),
        integrity.lines
    );
    migration.integrity_ok = Some(ok);
    if !ok {
        let console = dest.console();
        let tail: Vec<&str> = console.lines().rev().take(12).collect();
        migration.problems.push(format!(
            "bench guest integrity check failed; destination console ends with:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(())
}

/// Waits until the bench guest has written its whole working set once (gen 1): before that,
/// every first write to a page is a fault that the host populates, far slower than the
/// steady state the benchmark is about.
pub(super) fn bench_populated(source: &mut BoundedChild, timeout: Duration) -> Result<()> {
    wait_until(timeout, || {
        ensure!(
            source.is_running()?,
            "the bench guest stopped before its first pass; console:\n{}",
            source.console()
        );
        let integrity = Integrity::of_console(&source.console());
        Ok(integrity
            .last_generation
            .is_some_and(|generation| generation >= 1))
    })
    .context("the bench guest did not finish its first pass")
}

/// Polls `done` until it is true or `timeout` passes.
pub(super) fn wait_until(timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() >= deadline {
            bail!("gave up after {timeout:?}");
        }
        thread::sleep(POLL);
    }
    Ok(())
}

pub(super) fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Keeps a run the harness could not finish in the results, with its error.
pub(super) fn record_error(migration: &mut Migration, outcome: Result<()>) {
    if let Err(error) = outcome {
        if migration.status.is_empty() {
            migration.status = "error".into();
        }
        migration.problems.push(format!("harness: {error:#}"));
    }
}
