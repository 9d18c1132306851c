//! demo: live-migrates a running bench guest from one namespace host to another while the guest
//! rewrites and verifies its own memory, and shows the migration and the guest's verdict as they
//! happen. See tests/README.md.

use std::{
    fmt::Display,
    fs, io,
    net::SocketAddrV4,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use laundromat_tests::{
    host_keys::HostKeys,
    netns::{self, Host, TestNetwork, BRIDGE, SUBNET},
    process::{command_line, BoundedChild, ProcessError},
    workspace::{Image, Workspace},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const HOST_A: &str = "host-a";
const HOST_B: &str = "host-b";
const MIGRATE: &str = "migrate";
/// The destination's port; the namespace is ours alone, so any port is free.
const PORT: u16 = 4444;
/// The migration's own time limit (`vmm ctl migrate --timeout-s`): after it the migrator
/// cancels and the VM stays on host-a.
const MIGRATE_TIMEOUT_S: u64 = 30;
/// Margin on every wait beyond how long its step should take.
const SLACK: Duration = Duration::from_secs(30);
/// How long a destination may take to exit after a failed migration.
const ABORT_WAIT: Duration = Duration::from_secs(5);
/// How often the console of every child is looked at.
const POLL: Duration = Duration::from_millis(20);
const PAGE: u64 = 4096;
const MIB: f64 = (1 << 20) as f64;

/// Set by the SIGINT/SIGTERM handler; every wait checks it.
static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Serialize)]
#[command(
    name = "demo",
    about = "Live-migrate a running guest between two network-namespace hosts and check its memory"
)]
struct Args {
    /// Working set the guest rewrites and verifies, in MiB.
    #[arg(long, default_value_t = 64)]
    wss: u64,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..))]
    vcpus: u8,
    /// Downtime target: switch over once the rest fits in it at the measured bandwidth.
    #[arg(long, default_value_t = 300)]
    downtime_ms: u64,
    /// When (guest clock) the guest verifies its memory a last time and exits, on host-b.
    #[arg(long, default_value_t = 8000)]
    exit_after_ms: u64,
    /// How long the guest runs on host-a before the migration starts.
    #[arg(long, default_value_t = 2000)]
    migrate_after_ms: u64,
    /// Print the result as JSON on stdout (the running commentary goes to stderr).
    #[arg(long)]
    json: bool,
    /// Rebuild the guest images and the VMM even if they exist.
    #[arg(long)]
    build: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out = Out { json: args.json };
    match run(&args, out) {
        Ok(outcome) => {
            if args.json {
                match serde_json::to_string_pretty(&outcome) {
                    Ok(json) => println!("{json}"),
                    Err(error) => eprintln!("demo: cannot print the result as JSON: {error}"),
                }
            }
            match outcome.ok {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            }
        }
        Err(error) => {
            eprintln!("demo: {error:#}");
            if args.json {
                // Scripts get an answer in the same shape either way.
                let problems = [format!("{error:#}")];
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "problems": problems })
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// Where the commentary goes: stdout, or stderr when stdout carries the JSON result.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn line(self, text: impl Display) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

#[derive(Serialize)]
struct Outcome {
    ok: bool,
    /// Why the demo failed; empty if it passed.
    problems: Vec<String>,
    args: Value,
    network: Value,
    commands: Vec<String>,
    /// The migration's per-round progress events, as `vmm ctl migrate` printed them.
    progress: Vec<Value>,
    /// Its final statistics (QEMU's names).
    migration: Option<Value>,
    guest: GuestCheck,
}

fn run(args: &Args, out: Out) -> Result<Outcome> {
    ensure!(
        args.exit_after_ms > args.migrate_after_ms,
        "--exit-after-ms must be later than --migrate-after-ms"
    );
    header(args, out);
    let workspace = Workspace::locate()?;
    let (vmm, bench) = ensure_built(&workspace, args.build, out)?;
    ensure!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the demo needs KVM"
    );
    // From here on the demo owns namespaces and processes: a signal must end it through the
    // cleanup below, not kill it outright.
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;

    let network = TestNetwork::create(&[HOST_A, HOST_B]).context("cannot create the hosts")?;
    show_network(&network, out);
    let result = migrate_and_check(args, out, &network, &vmm, &bench);
    // Every child has been killed and reaped by now (they lived inside `migrate_and_check`).
    let names = network.namespaces().join(", ");
    match network.delete() {
        Ok(()) => out.line(format_args!("[net] deleted {names}")),
        Err(error) => out.line(format_args!("[net] cleanup: {error}")),
    }
    result
}

fn header(args: &Args, out: Out) {
    out.line(format_args!(
        "Laundromat live-migration demo
  {HOST_A} and {HOST_B} are two network namespaces on a private bridge ({SUBNET}, which exists
  only inside them). {HOST_A} boots the bench guest ({vcpus} vCPUs, {mem} MiB), which rewrites
  and verifies {wss} MiB of its memory over and over. After {after} ms, {HOST_A}'s VMM
  live-migrates the running guest over TCP to {HOST_B} (pre-copy, downtime target {target} ms).
  The guest checks every page itself: `gen` (complete rewrite-and-verify passes) must keep
  rising and `errors` stay 0 until it exits at t={exit} ms on {HOST_B}.
",
        vcpus = args.vcpus,
        mem = args.mem,
        wss = args.wss,
        after = args.migrate_after_ms,
        target = args.downtime_ms,
        exit = args.exit_after_ms,
    ));
}

/// The VMM binary and the bench image, built first if missing (or if `force`).
fn ensure_built(workspace: &Workspace, force: bool, out: Out) -> Result<(PathBuf, PathBuf)> {
    let root = workspace.root();
    if force || workspace.image(Image::Bench).is_err() {
        build(out, root, Command::new("bash").arg("images/build.sh"))?;
    }
    if force || workspace.vmm().is_err() {
        // `cargo run` tells its program which cargo ran it.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        build(out, root, command.args(["build", "--release", "-p", "vmm"]))?;
    }
    let (vmm, bench) = (workspace.vmm()?, workspace.image(Image::Bench)?);
    out.line(format_args!(
        "[build] using {} and {}",
        vmm.display(),
        bench.display()
    ));
    Ok((vmm, bench))
}

/// Runs one build step in the workspace root; its progress shows on stderr so that stdout
/// stays clean for `--json`.
fn build(out: Out, root: &Path, command: &mut Command) -> Result<()> {
    let text = command_line(command);
    out.line(format_args!("[build] {text}"));
    let status = command
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()))
        .status()
        .with_context(|| format!("cannot run `{text}`"))?;
    ensure!(status.success(), "`{text}` failed ({status})");
    Ok(())
}

fn show_network(network: &TestNetwork, out: Out) {
    out.line(format_args!(
        "[net] switch: namespace {} with bridge {BRIDGE}",
        network.switch_namespace()
    ));
    for host in network.hosts() {
        out.line(format_args!(
            "[net] {}: namespace {}, eth0 {} on the bridge",
            host.name(),
            host.namespace(),
            host.addr()
        ));
    }
}

fn migrate_and_check(
    args: &Args,
    out: Out,
    network: &TestNetwork,
    vmm: &Path,
    bench: &Path,
) -> Result<Outcome> {
    let host = |name| network.host(name).context("the network lacks a host");
    let (host_a, host_b) = (host(HOST_A)?, host(HOST_B)?);
    let scratch = Scratch::create()?;
    let api_sock = scratch.0.join("host-a.sock");
    // Each host gets its identity; each side is told the other's public key.
    let keys = HostKeys::create(vmm, &scratch.0)?;
    let dest_addr = SocketAddrV4::new(host_b.addr(), PORT);
    let url = format!("tcp://{dest_addr}");

    let mut dest_command = vmm_in(host_b, vmm);
    dest_command
        .args(["run", "--incoming", &url])
        .args(keys.incoming_args());
    let dest = Watched::spawn(HOST_B, &mut dest_command, out)?;

    let mut source_command = vmm_in(host_a, vmm);
    let cmdline = format!(
        "workload=dirty wss={} report-ms=250 exit-after-ms={}",
        args.wss, args.exit_after_ms
    );
    source_command
        .args(["run", "--boot", "bench", "--kernel"])
        .arg(bench)
        .args(["--cmdline", &cmdline, "--mem", &args.mem.to_string()])
        .args(["--vcpus", &args.vcpus.to_string(), "--api-sock"])
        .arg(&api_sock);

    let mut migrate_command = Command::new(vmm);
    migrate_command
        .arg("ctl")
        .arg(&api_sock)
        .args(["migrate", &url])
        .args(keys.migrate_args())
        .args(["--downtime-ms", &args.downtime_ms.to_string()])
        .args(["--timeout-s", &MIGRATE_TIMEOUT_S.to_string()]);

    let mut session = Session {
        out,
        source: None,
        dest,
        migrate: None,
        progress: Vec::new(),
        stats: None,
    };
    session.until("host-b to listen", SLACK, |s| {
        s.dest.check_running()?;
        Ok(netns::is_listening(s.dest.pid(), dest_addr).unwrap_or(false))
    })?;
    session.source = Some(Watched::spawn(HOST_A, &mut source_command, out)?);
    session.until("the guest to start on host-a", SLACK, |s| {
        let source = s.source()?;
        source.check_running()?;
        Ok(source.lines.iter().any(|l| l.starts_with("bench: running")))
    })?;
    let started = Instant::now();
    let settle = Duration::from_millis(args.migrate_after_ms);
    session.until("the guest to run a while", settle + SLACK, |s| {
        s.source()?.check_running()?;
        Ok(started.elapsed() >= settle)
    })?;
    session.migrate = Some(Watched::spawn(MIGRATE, &mut migrate_command, out)?);
    let migrate_limit = Duration::from_secs(MIGRATE_TIMEOUT_S) + SLACK;
    session.until("the migration to end", migrate_limit, |s| {
        Ok(s.migrate.as_ref().is_some_and(Watched::finished))
    })?;

    let stats = session.stats.as_ref().map(Stats::parse).transpose()?;
    let completed = stats
        .as_ref()
        .is_some_and(|s| s.status == "completed" && s.ok);
    if completed {
        session.until("host-a's VMM to exit", SLACK, |s| {
            Ok(s.source()?.finished())
        })?;
        let guest_left = Duration::from_millis(args.exit_after_ms) + SLACK;
        session.until("the guest to finish on host-b", guest_left, |s| {
            Ok(s.dest.finished())
        })?;
    } else {
        // The source aborts the destination on failure; its own error says what it saw. A
        // destination that never heard of the migration keeps waiting: that is an answer too.
        let _ = session.until("host-b's VMM to give up", ABORT_WAIT, |s| {
            Ok(s.dest.finished())
        });
        check_stop()?;
    }
    session.pump()?;

    if let Some(stats) = &stats {
        print_stats(stats, args.downtime_ms, out);
    }
    let guest = GuestCheck::read(&session);
    if completed {
        guest.print(out);
    }
    let problems = verdict(&session, stats.as_ref(), &guest);
    print_verdict(&problems, &guest, out);
    let commands = [&dest_command, &source_command, &migrate_command]
        .map(command_line)
        .to_vec();
    Ok(Outcome {
        ok: problems.is_empty(),
        problems,
        args: serde_json::to_value(args)?,
        network: serde_json::json!({
            "subnet": SUBNET,
            "switch": network.switch_namespace(),
            "hosts": network.hosts(),
        }),
        commands,
        progress: session.progress,
        migration: session.stats,
        guest,
    })
}

/// Fails once SIGINT or SIGTERM has come, so that the caller unwinds through the cleanup.
fn check_stop() -> Result<()> {
    ensure!(!STOP.load(Ordering::SeqCst), "interrupted; stopping");
    Ok(())
}

/// `vmm` run inside `host`, logging only warnings. It runs in its own process group so that
/// Ctrl-C reaches only the demo, which then stops the VMMs itself; and if the demo is killed
/// outright, the kernel kills the VMM too (`setpriv` sets the parent-death signal, then execs
/// it). The namespaces left then are removed by the next run.
fn vmm_in(host: &Host, vmm: &Path) -> Command {
    let mut command = host.command("setpriv");
    command.args(["--pdeathsig", "KILL"]).arg(vmm);
    command.env("VMM_LOG", "warn").process_group(0);
    command
}

/// A private directory for the control socket, removed when dropped.
struct Scratch(PathBuf);

const SCRATCH_PREFIX: &str = "laundromat-demo-";

impl Scratch {
    fn create() -> Result<Self> {
        let temp = std::env::temp_dir();
        // Leftovers of demos that were killed outright: their pid is gone (or is ours now).
        for entry in fs::read_dir(&temp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX));
            let gone = |pid: &str| {
                pid.parse() == Ok(std::process::id()) || !Path::new("/proc").join(pid).exists()
            };
            if pid.is_some_and(|pid| pid.parse::<u32>().is_ok() && gone(pid)) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let dir = temp.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The running children and what they said so far.
struct Session {
    out: Out,
    source: Option<Watched>,
    dest: Watched,
    migrate: Option<Watched>,
    /// `vmm ctl migrate`'s progress events, and its final answer.
    progress: Vec<Value>,
    stats: Option<Value>,
}

impl Session {
    fn source(&mut self) -> Result<&mut Watched> {
        self.source.as_mut().context("host-a's VMM was not started")
    }

    /// Polls until `done`, showing output as it comes; fails on timeout or Ctrl-C.
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&mut Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_stop()?;
            self.pump()?;
            if done(self)? {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "gave up waiting for {what} after {timeout:?}"
            );
            thread::sleep(POLL);
        }
    }

    /// Shows every child's new console lines, prefixed with where it runs.
    fn pump(&mut self) -> Result<()> {
        let out = self.out;
        let source_done = match &mut self.source {
            Some(source) => {
                source.poll()?;
                source.show(out);
                source.finished()
            }
            None => false,
        };
        if let Some(migrate) = &mut self.migrate {
            migrate.poll()?;
            for line in migrate.take_unshown() {
                self.show_migrate_line(&line);
            }
        }
        self.dest.poll()?;
        // The destination speaks only after the switchover; holding its lines until host-a's
        // VMM is gone keeps the console in the guest's own order.
        if source_done || self.dest.finished() {
            self.dest.show(out);
        }
        Ok(())
    }

    fn show_migrate_line(&mut self, line: &str) {
        let label = format!("{MIGRATE:>7} |");
        match serde_json::from_str::<Value>(line) {
            Ok(event) if event.get("event").is_some() => {
                if let Ok(p) = serde_json::from_value::<Progress>(event.clone()) {
                    self.out.line(format_args!(
                        "{label} round {}: sent {:.1} MiB, {:.1} MiB dirty left, {:.0} Mbit/s, \
                         dirtying {} pages/s, expected downtime {:.0} ms",
                        p.round,
                        p.transferred as f64 / MIB,
                        p.remaining as f64 / MIB,
                        p.mbps,
                        p.dirty_pages_rate,
                        p.expected_downtime_ms
                    ));
                }
                self.progress.push(event);
            }
            Ok(answer) => {
                let status = answer["status"].as_str().unwrap_or("no status").to_owned();
                self.out.line(format_args!("{label} {status}"));
                self.stats = Some(answer);
            }
            Err(_) => self.out.line(format_args!("{label} {line}")),
        }
    }
}

/// A child whose console is shown line by line as it arrives.
struct Watched {
    label: &'static str,
    child: Option<BoundedChild>,
    pid: u32,
    /// Complete console lines so far, and how many have been shown.
    lines: Vec<String>,
    shown: usize,
    end: Option<End>,
}

/// How a child ended.
struct End {
    status: ExitStatus,
    /// Whether the last of `lines` was never finished with a newline.
    cut: bool,
    stderr: String,
}

/// Text no child prints; waiting for it ends only when a console closes (see `Watched::poll`).
const NEVER_PRINTED: &str = "\0\0never printed\0\0";
/// How long an exited child's console may take to be read to its end.
const DRAIN: Duration = Duration::from_secs(2);
/// How many times an exited child's stderr is looked at while it is still empty.
const STDERR_LOOKS: u32 = 5;

impl Watched {
    fn spawn(label: &'static str, command: &mut Command, out: Out) -> Result<Self> {
        out.line(format_args!("[{label}] {}", command_line(command)));
        let child = BoundedChild::spawn(label, command)?;
        Ok(Watched {
            label,
            pid: child.pid(),
            child: Some(child),
            lines: Vec::new(),
            shown: 0,
            end: None,
        })
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn finished(&self) -> bool {
        self.end.is_some()
    }

    /// Takes in new console lines; once the child has exited, reads its console to the end and
    /// records how it ended.
    fn poll(&mut self) -> Result<()> {
        let Some(child) = &mut self.child else {
            return Ok(());
        };
        let exited = !child.is_running()?;
        let stderr = match exited {
            true => drain(child),
            false => String::new(),
        };
        // The console stays far below BoundedChild's 1 MiB window, so it only grows and its
        // line count is a stable position.
        let console = child.console();
        let (complete, tail) = console.rsplit_once('\n').unwrap_or(("", &console));
        if console.contains('\n') {
            let new = complete.split('\n').skip(self.lines.len());
            self.lines
                .extend(new.map(|line| line.trim_end_matches('\r').to_owned()));
        }
        if !exited {
            return Ok(());
        }
        let cut = !tail.is_empty();
        if cut {
            self.lines.push(tail.to_owned());
        }
        // The child was reaped by `is_running`, so `kill` sends nothing and returns the status
        // it exited with.
        if let Some(child) = self.child.take() {
            let status = child.kill().context("cannot read an exit status")?;
            self.end = Some(End {
                status,
                cut,
                stderr,
            });
        }
        Ok(())
    }

    /// Fails if the child has ended, with what it printed last.
    fn check_running(&self) -> Result<()> {
        let Some(end) = &self.end else {
            return Ok(());
        };
        let last = self.lines.last().map_or("", String::as_str);
        bail!(
            "{}'s process ended early ({}); last console line: {last:?}; stderr: {:?}",
            self.label,
            end.status,
            end.stderr
        )
    }

    fn take_unshown(&mut self) -> Vec<String> {
        let new = self.lines[self.shown..].to_vec();
        self.shown = self.lines.len();
        new
    }

    /// Shows new guest console lines. The switchover can pause the guest in the middle of a
    /// line: the source's console then ends with the line's start and the destination's
    /// begins with its rest.
    fn show(&mut self, out: Out) {
        let label = format!("{:>7} |", self.label);
        let first = self.shown;
        let cut_at = match &self.end {
            Some(end) if end.cut => self.lines.len().checked_sub(1),
            _ => None,
        };
        for (index, line) in self.take_unshown().into_iter().enumerate() {
            let index = first + index;
            let lead = match index == 0 && !line.starts_with("bench:") {
                true => "...",
                false => "",
            };
            let cut = match Some(index) == cut_at {
                true => "...   (the console ends mid-line: a migrated guest goes on on host-b)",
                false => "",
            };
            out.line(format_args!("{label} {lead}{line}{cut}"));
        }
    }
}

/// Waits (bounded) until an exited child's console has been read to its end, and returns the
/// tail of its stderr. BoundedChild tells both only through a wait that fails: waiting for
/// text nobody prints ends with `Exited`, carrying the stderr tail, once the console has
/// closed. Its stderr reader may finish a moment after the console's, so an empty tail gets a
/// few more looks.
fn drain(child: &mut BoundedChild) -> String {
    let mut stderr = String::new();
    for attempt in 0..STDERR_LOOKS {
        if attempt > 0 {
            thread::sleep(POLL);
        }
        if let Err(ProcessError::Exited { stderr: tail, .. }) = child.wait_for(NEVER_PRINTED, DRAIN)
        {
            let tail = tail.to_string();
            stderr = tail
                .trim_start_matches("; its stderr ends with:\n")
                .trim()
                .to_owned();
        }
        if !stderr.is_empty() {
            break;
        }
    }
    stderr
}

/// `vmm ctl migrate`'s progress event.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Progress {
    round: u64,
    transferred: u64,
    remaining: u64,
    mbps: f64,
    dirty_pages_rate: u64,
    expected_downtime_ms: f64,
}

/// The final statistics, with QEMU's names.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct Stats {
    ok: bool,
    status: String,
    error: Option<String>,
    total_time_ms: f64,
    setup_time_ms: f64,
    downtime_ms: f64,
    expected_downtime_ms: f64,
    downtime_parts: DowntimeParts,
    ram: Ram,
    rounds: Vec<Round>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct DowntimeParts {
    final_pages_ms: f64,
    state_ms: f64,
    resume_ms: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct Ram {
    transferred: u64,
    total: u64,
    duplicate: u64,
    normal: u64,
    normal_bytes: u64,
    dirty_sync_count: u64,
    mbps: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", default)]
struct Round {
    round: u64,
    pages: u64,
    bytes: u64,
    duration_ms: f64,
}

impl Stats {
    fn parse(value: &Value) -> Result<Self> {
        Stats::deserialize(value).context("cannot read the migration's statistics")
    }
}

fn print_stats(stats: &Stats, target_ms: u64, out: Out) {
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
struct Report {
    t_ms: u64,
    gen: u64,
}

/// What the guest said about its memory, read from both consoles.
#[derive(Default, Serialize)]
struct GuestCheck {
    last_on_source: Option<Report>,
    first_on_destination: Option<Report>,
    final_gen: Option<u64>,
    final_errors: Option<u64>,
    /// The most errors any report showed.
    max_reported_errors: u64,
    integrity_error_lines: Vec<String>,
    source_exit: Option<String>,
    destination_exit: Option<String>,
    destination_exit_code: Option<i32>,
}

impl GuestCheck {
    fn read(session: &Session) -> Self {
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

    fn print(&self, out: Out) {
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
fn exit_text(status: ExitStatus) -> String {
    status
        .code()
        .map_or_else(|| status.to_string(), |code| format!("exit code {code}"))
}

/// A progress line's time and generation, if it is a whole one (a cut line may end in a
/// truncated number, so its last field is not trusted).
fn report(line: &str) -> Option<Report> {
    let rest = line.strip_prefix("bench: t=")?;
    let whole = rest.rsplit_once(' ').map_or("", |(whole, _)| whole);
    Some(Report {
        t_ms: rest.split_once("ms ")?.0.parse().ok()?,
        gen: field(whole, "gen")?,
    })
}

/// The number in `key=N` (or `key=Nms`, `key=N/s`) among a line's words.
fn field(line: &str, key: &str) -> Option<u64> {
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
fn verdict(session: &Session, stats: Option<&Stats>, guest: &GuestCheck) -> Vec<String> {
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

fn print_verdict(problems: &[String], guest: &GuestCheck, out: Out) {
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
