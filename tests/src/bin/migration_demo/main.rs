//! migration-demo: live-migrates a running bench guest from one namespace host to another while the guest
//! rewrites and verifies its own memory, and shows the migration and the guest's verdict as they
//! happen. See tests/README.md.

mod verdict;
mod watched;
use verdict::*;
use watched::*;

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
    name = "migration-demo",
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
