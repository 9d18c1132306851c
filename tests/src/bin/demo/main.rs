//! demo: the whole Laundromat story on one machine, with the product's own commands.
//!
//! A broker on SQLite and two hosts running `hostd`, each in a network namespace of its own; a
//! tenant who is topped up, buys a boot token, injects a memory-dirtying bench guest into
//! host-a and pays as it runs; a live migration to host-b while paying; the tenant stops
//! paying and host-b reclaims the VM after the grace period; both hosts redeem, the token
//! expires and what is left in escrow is refunded. At the end the ledger, which must add up,
//! and `broker check`. See tests/README.md.

mod cli;
mod ledger;
mod payments;
mod services;
mod tenant;
use cli::*;
use ledger::*;
use payments::*;
use services::*;

use std::{
    fmt::Display,
    io,
    path::{Path, PathBuf},
    process::{Command, ExitCode, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use laundromat_tests::{
    netns::{Host, TestNetwork},
    process::{command_line, BoundedChild},
    workspace::{Image, Workspace},
};
use serde::Serialize;
use serde_json::Value;

const BROKER: &str = "broker";
const HOST_A: &str = "host-a";
const HOST_B: &str = "host-b";
/// The demo's cluster id: tokens name it, hosts serve it.
const CLUSTER: &str = "d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3";
const BROKER_PORT: u16 = 7300;
const HOSTD_PORT: u16 = 8480;
/// Margin on every wait beyond how long its step should take.
const SLACK: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Set by the SIGINT/SIGTERM handler; every wait checks it.
static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Serialize, Clone)]
#[command(
    name = "demo",
    about = "The whole Laundromat story: a broker, two hosts, a paid VM, a live migration, \
             reclaim, redemption, refund and the ledger"
)]
struct Args {
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Working set the guest rewrites and verifies, in MiB.
    #[arg(long, default_value_t = 32)]
    wss: u64,
    /// Price per link, in the smallest currency unit.
    #[arg(long, default_value_t = 5)]
    price: u64,
    /// Run time one link buys, ms.
    #[arg(long, default_value_t = 1000)]
    period_ms: u64,
    /// Chain length: the most links the tenant can pay.
    #[arg(long, default_value_t = 100)]
    links: u64,
    /// How long the token stays valid, s; after it (and the broker's grace) the rest is refunded.
    #[arg(long, default_value_t = 45)]
    valid_for_s: u64,
    /// Seconds an unpaid VM keeps running before its host reclaims it.
    #[arg(long, default_value_t = 2)]
    grace_s: u64,
    /// How long the tenant pays on host-a before migrating, s.
    #[arg(long, default_value_t = 4)]
    migrate_after_s: u64,
    /// How long the tenant keeps paying on host-b after the migration, s.
    #[arg(long, default_value_t = 4)]
    pay_after_s: u64,
    /// Print the result as JSON on stdout (the running commentary goes to stderr).
    #[arg(long)]
    json: bool,
    /// Rebuild the guest images and the binaries even if they exist.
    #[arg(long)]
    build: bool,
}

/// Where the commentary goes: stdout, or stderr when stdout carries the JSON result.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
    /// Polling: the same command many times over is not shown.
    quiet: bool,
}

impl Out {
    fn quiet(self) -> Self {
        Out {
            quiet: true,
            ..self
        }
    }

    fn line(self, text: impl Display) {
        if self.quiet {
            return;
        }
        match self.json {
            true => eprintln!("{text}"),
            false => println!("{text}"),
        }
    }

    fn step(self, text: impl Display) {
        self.line(format_args!("\n== {text}"));
    }
}

/// Everything the demo found, printed as JSON with `--json`.
#[derive(Serialize, Default)]
struct Outcome {
    ok: bool,
    problems: Vec<String>,
    /// The migration's statistics, as `laundromat vm migrate --json` printed them.
    migration: Value,
    /// The most errors the guest reported about its own memory.
    guest_errors: Option<u64>,
    /// Whether host-b reclaimed the VM once payment stopped.
    reclaimed: bool,
    /// The links each host accepted, by the payer's receipts and the hosts' counts.
    payments: Option<Payments>,
    ledger: Option<Ledger>,
    broker_check: Value,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out = Out {
        json: args.json,
        quiet: false,
    };
    let outcome = match run(&args, out) {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("demo: {error:#}");
            Outcome {
                problems: vec![format!("{error:#}")],
                ..Outcome::default()
            }
        }
    };
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

fn check_stop() -> Result<()> {
    ensure!(!STOP.load(Ordering::Relaxed), "interrupted");
    Ok(())
}

/// Polls `probe` until it gives a value, `timeout` passes or the demo is interrupted.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        if let Some(value) = probe()? {
            return Ok(value);
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        thread::sleep(POLL);
    }
}

fn run(args: &Args, out: Out) -> Result<Outcome> {
    let workspace = Workspace::locate()?;
    let bin = ensure_built(&workspace, args.build, out)?;
    let kernel = workspace.image(Image::Bench)?;
    ensure!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: the demo needs KVM"
    );
    // From here on the demo owns namespaces and processes: a signal must end it through the
    // cleanup below, not kill it outright.
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let dir = tempfile::Builder::new()
        .prefix("laundromat-demo")
        .tempdir()?;
    let network = TestNetwork::create(&[BROKER, HOST_A, HOST_B])?;
    let tools = Tools {
        bin,
        dir: dir.path().to_owned(),
    };
    let result =
        Story::new(args, out, &tools, &network, &kernel).and_then(|mut story| story.tell());
    // The story's services are stopped by now; anything of theirs still running goes too.
    let leftovers = kill_leftovers(dir.path());
    if leftovers > 0 {
        eprintln!("demo: killed {leftovers} process(es) the services left behind");
    }
    let cleanup = network.delete();
    let outcome = result?;
    cleanup.context("cannot delete the demo's network namespaces")?;
    Ok(outcome)
}

/// Builds the binaries and the bench guest unless they are there; the directory of binaries.
fn ensure_built(workspace: &Workspace, force: bool, out: Out) -> Result<PathBuf> {
    let root = workspace.root();
    let bin = root.join("target/release");
    let binaries = ["vmm", "hostd", "broker", "laundromat"];
    if force || binaries.iter().any(|b| !bin.join(b).exists()) {
        out.step("building vmm, hostd, broker and laundromat");
        let status = Command::new("cargo")
            .current_dir(root)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "vmm",
                "-p",
                "hostd",
                "-p",
                "broker",
            ])
            .status()?;
        ensure!(status.success(), "cargo build failed ({status})");
    }
    if force || workspace.image(Image::Bench).is_err() {
        out.step("building the bench guest");
        let status = Command::new("bash")
            .current_dir(root)
            .args(["images/build.sh", "bench"])
            .status()?;
        ensure!(status.success(), "images/build.sh failed ({status})");
    }
    Ok(bin)
}

/// The demo's actors and what they have learned so far.
struct Story<'a> {
    args: &'a Args,
    out: Out,
    tools: &'a Tools,
    kernel: &'a Path,
    /// The tenant's laptop shares the broker's namespace.
    laptop: &'a Host,
    /// The tenant's key and token state (`laundromat --config-dir`).
    tenant_dir: String,
    broker: Service,
    hosts: [Hostd; 2],
    outcome: Outcome,
}

impl<'a> Story<'a> {
    fn new(
        args: &'a Args,
        out: Out,
        tools: &'a Tools,
        network: &'a TestNetwork,
        kernel: &'a Path,
    ) -> Result<Self> {
        let host = |name| network.host(name).context("the demo network lacks a host");
        let laptop = host(BROKER)?;
        out.step("the operator starts a broker (SQLite)");
        let broker = Service::broker(tools, laptop, out)?;
        out.step("two hosts start hostd and the operator registers them");
        let hosts = [
            Hostd::start(tools, host(HOST_A)?, &broker, args.grace_s, out)?,
            Hostd::start(tools, host(HOST_B)?, &broker, args.grace_s, out)?,
        ];
        Ok(Story {
            args,
            out,
            tools,
            kernel,
            laptop,
            tenant_dir: tools.dir.join("tenant").to_string_lossy().into_owned(),
            broker,
            hosts,
            outcome: Outcome::default(),
        })
    }

    fn tell(&mut self) -> Result<Outcome> {
        self.tenant()?;
        let token = self.buy()?;
        let vm = self.inject(&token)?;
        let mut payer = self.pay(&vm)?;
        self.wait_paying(&mut payer, self.args.migrate_after_s)?;
        self.migrate(&vm)?;
        self.wait_paying(&mut payer, self.args.pay_after_s)?;
        self.outcome.guest_errors = Some(self.guest_errors(&vm)?);
        self.out.step("the tenant stops paying (Ctrl-C)");
        payer.stop(self)?;
        self.reclaim()?;
        let state = self.refund(&token)?;
        let mut payments = Payments::tally(self, &payer.receipts)?;
        payments.print(self.out);
        let ledger = Ledger::read(self, &state)?;
        ledger.print(self.out);
        payments.check_earnings(&ledger, self.args.price);
        self.out.step("the operator checks the ledger's invariants");
        self.outcome.broker_check = self.broker.check(self.tools, self.out)?;
        self.outcome.problems = verdict(&self.outcome, &ledger, &payments);
        self.outcome.ledger = Some(ledger);
        self.outcome.payments = Some(payments);
        self.outcome.ok = self.outcome.problems.is_empty();
        print_verdict(&self.outcome, self.out);
        Ok(std::mem::take(&mut self.outcome))
    }

    /// "host-a" or "host-b" for a hostd URL; the URL itself for any other.
    fn host_name<'u>(&self, url: &'u str) -> &'u str {
        [HOST_A, HOST_B]
            .into_iter()
            .zip(&self.hosts)
            .find(|(_, host)| host.url() == url)
            .map_or(url, |(name, _)| name)
    }
}
