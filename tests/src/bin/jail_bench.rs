//! jail-bench: what the sandbox costs. Time to the first console byte and VMM memory overhead
//! of the bench guest under `vmm run --seccomp off`, `vmm run` (seccomp on, the default) and
//! `vmm jail` (seccomp, namespaces, pivot_root, dropped privileges, a cgroup), side by side.
//! Target (issue 12): jailing adds at most 2 ms to the first console byte. Needs root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use laundromat_tests::{
    machine::Machine,
    process::{command_line, BoundedChild},
    smaps::{self, MemoryUsage},
    stats::Summary,
    workspace::{Image, Workspace},
};
use serde::Serialize;

const MEM_MIB: u64 = 256;
const BANNER: &str = "bench: booted";
/// What jailing may add to the median time to the first console byte.
const TARGET_ADDED_MS: f64 = 2.0;
/// Where `vmm jail` mounts a VM's root (its supervisor removes it at the end).
const JAIL_ROOTS: &str = "/run/laundromat/jail";

#[derive(Parser)]
#[command(
    name = "jail-bench",
    about = "Boot time to first console byte and VMM memory overhead: unfiltered, seccomp, \
             jailed (needs root)"
)]
struct Args {
    /// Timed runs per configuration, after one untimed warm-up run each.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// The uid and gid the jailed VM runs as.
    #[arg(long, default_value_t = 60_300)]
    uid: u32,
    /// The longest any VM may take to print or end, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// How long a memory run lets the guest run after it booted, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// One way of starting the same VM.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    SeccompOff,
    Seccomp,
    Jailed,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::SeccompOff, Mode::Seccomp, Mode::Jailed];

    fn label(self) -> &'static str {
        match self {
            Mode::SeccompOff => "run --seccomp off",
            Mode::Seccomp => "run (seccomp on)",
            Mode::Jailed => "jail",
        }
    }
}

#[derive(Serialize)]
struct Timing {
    mode: Mode,
    command: String,
    #[serde(flatten)]
    ms: Summary,
}

#[derive(Serialize)]
struct MemoryRun {
    mode: Mode,
    /// The VM process's RSS besides guest RAM.
    vmm_overhead_mib: f64,
    /// The jail's supervising process (outside the jail), whole RSS; 0 unjailed.
    supervisor_rss_mib: f64,
    overhead_mib: f64,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    runs: u32,
    first_byte_ms: Vec<Timing>,
    /// Median jailed minus median `run` (seccomp on in both).
    jail_added_ms: f64,
    jail_added_target_ms: f64,
    memory: Vec<MemoryRun>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jail-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The same VM under `mode`; `id` names the jail.
fn command(vmm: &Path, kernel: &Path, mode: Mode, cmdline: &str, id: &str, uid: u32) -> Command {
    let mut command = Command::new(vmm);
    command.env("VMM_LOG", "warn");
    match mode {
        Mode::Jailed => {
            let ids = uid.to_string();
            command.args(["jail", "--id", id, "--uid", &ids, "--gid", &ids]);
        }
        Mode::SeccompOff => {
            command.args(["run", "--seccomp", "off"]);
        }
        Mode::Seccomp => {
            command.arg("run");
        }
    }
    command.args(["--boot", "bench", "--kernel"]).arg(kernel);
    command.args(["--mem", &MEM_MIB.to_string(), "--cmdline", cmdline]);
    command
}

fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid only reads.
    ensure!(unsafe { libc::geteuid() } == 0, "vmm jail needs root");
    ensure!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: this benchmark needs KVM"
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    let workspace = Workspace::locate()?;
    let vmm = workspace.vmm()?;
    let kernel = workspace.image(Image::Bench)?;
    let id = format!("jail-bench-{}", std::process::id());

    // The guest ends itself soon after its banner, so each jailed run also pays for the
    // supervisor's cleanup before the next one starts, as a real host would.
    let boot_cmdline = "workload=idle report-ms=1000 exit-after-ms=200";
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..=args.runs {
        for (mode, samples) in Mode::ALL.into_iter().zip(&mut samples) {
            eprintln!(
                "jail-bench: first console byte, {}, {}",
                mode.label(),
                if round == 0 {
                    "warm-up".to_owned()
                } else {
                    format!("run {round}/{}", args.runs)
                }
            );
            let mut cmd = command(&vmm, &kernel, mode, boot_cmdline, &id, args.uid);
            let mut child = BoundedChild::spawn(mode.label(), &mut cmd)?;
            let elapsed = child.first_byte(timeout)?;
            child.wait_for(BANNER, timeout)?;
            wait_end(&mut child, timeout)?;
            ensure!(
                !jail_root(&id).exists(),
                "the jail left {} behind",
                jail_root(&id).display()
            );
            if round > 0 {
                samples.push(elapsed.as_secs_f64() * 1e3);
            }
        }
    }
    let first_byte_ms = Mode::ALL
        .into_iter()
        .zip(&samples)
        .map(|(mode, samples)| {
            let cmd = command(&vmm, &kernel, mode, boot_cmdline, &id, args.uid);
            Ok(Timing {
                mode,
                command: command_line(&cmd),
                ms: Summary::of(samples).context("no samples")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let jail_added_ms = first_byte_ms[2].ms.median - first_byte_ms[1].ms.median;

    let settle = Duration::from_millis(args.settle_ms);
    let memory = Mode::ALL
        .into_iter()
        .map(|mode| {
            let cmdline = "workload=idle report-ms=1000 exit-after-ms=30000";
            let mut cmd = command(&vmm, &kernel, mode, cmdline, &id, args.uid);
            measure_memory(mode, &mut cmd, settle, timeout)
        })
        .collect::<Result<Vec<_>>>()?;

    let report = Report {
        machine: Machine::detect(),
        runs: args.runs,
        first_byte_ms,
        jail_added_ms,
        jail_added_target_ms: TARGET_ADDED_MS,
        memory,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn jail_root(id: &str) -> PathBuf {
    Path::new(JAIL_ROOTS).join(id)
}

/// Waits for the VM to end by itself (its `exit-after-ms`).
fn wait_end(child: &mut BoundedChild, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while child.is_running()? {
        if Instant::now() > deadline {
            bail!("the VM did not end within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The jailed VM: the supervisor's only child, once it exists.
fn jailed_vm(supervisor: u32, timeout: Duration) -> Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let path = format!("/proc/{supervisor}/task/{supervisor}/children");
        let children = fs::read_to_string(path).unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Ok(pid);
        }
        ensure!(Instant::now() < deadline, "the jail started no VM");
        thread::sleep(Duration::from_millis(10));
    }
}

fn rss_kib(mappings: &[smaps::Mapping]) -> u64 {
    mappings.iter().map(|m| m.rss_kib).sum()
}

fn measure_memory(
    mode: Mode,
    command: &mut Command,
    settle: Duration,
    timeout: Duration,
) -> Result<MemoryRun> {
    eprintln!("jail-bench: memory, {}", mode.label());
    let mut child = BoundedChild::spawn(mode.label(), command)?;
    child.wait_for(BANNER, timeout)?;
    thread::sleep(settle);
    if !child.is_running()? {
        bail!(
            "the VMM exited before its memory was read; console:\n{}",
            child.console()
        );
    }
    let (vm_pid, supervisor_kib) = if mode == Mode::Jailed {
        let supervisor = smaps::read(child.pid())?;
        (jailed_vm(child.pid(), timeout)?, rss_kib(&supervisor))
    } else {
        (child.pid(), 0)
    };
    let usage = MemoryUsage::split(&smaps::read(vm_pid)?, MEM_MIB << 20)?;
    // SIGTERM, so that a jail's supervisor passes it on and cleans up; the VM ends itself
    // later in any case (exit-after-ms).
    // SAFETY: kill takes two integers; the pid is our child, not yet reaped.
    unsafe { libc::kill(child.pid() as libc::pid_t, libc::SIGTERM) };
    if wait_end(&mut child, timeout).is_err() {
        child.kill().context("cannot stop the VMM")?;
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(MemoryRun {
        mode,
        vmm_overhead_mib: mib(usage.overhead_kib()),
        supervisor_rss_mib: mib(supervisor_kib),
        overhead_mib: mib(usage.overhead_kib() + supervisor_kib),
    })
}

fn print_table(report: &Report) {
    let machine = &report.machine;
    println!("Laundromat sandbox benchmark (bench guest, --mem {MEM_MIB})");
    println!(
        "machine: {} CPUs, {}, Linux {}",
        machine.nproc, machine.cpu_model, machine.kernel
    );
    println!(
        "runs:    {} timed per configuration after 1 warm-up, interleaved",
        report.runs
    );
    println!();
    println!("Time to first console byte (ms)  min   median      p90      max");
    for t in &report.first_byte_ms {
        let Summary {
            min,
            median,
            p90,
            max,
            ..
        } = t.ms;
        println!(
            "  {:<22} {min:>8.2} {median:>8.2} {p90:>8.2} {max:>8.2}",
            t.mode.label()
        );
    }
    let met = report.jail_added_ms <= report.jail_added_target_ms;
    println!(
        "  jail adds (median jail - median run): {:.2} ms   (target <= {} ms: {})",
        report.jail_added_ms,
        report.jail_added_target_ms,
        if met { "met" } else { "MISSED" }
    );
    println!();
    println!("VMM memory overhead (MiB, RSS besides guest RAM, idle guest)");
    println!("  configuration          vmm   supervisor    total");
    for m in &report.memory {
        println!(
            "  {:<22} {:>6.2} {:>12.2} {:>8.2}",
            m.mode.label(),
            m.vmm_overhead_mib,
            m.supervisor_rss_mib,
            m.overhead_mib
        );
    }
    println!("  The supervisor is the `vmm jail` process that stays outside to clean up.");
    println!();
    println!("Commands:");
    for t in &report.first_byte_ms {
        println!("  {}", t.command);
    }
}
