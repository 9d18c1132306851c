//! migrate-bench: live migration with Laundromat's VMM side by side with QEMU on the same PVH
//! guest (an idle 1 GiB guest with random memory, then dirtying working sets), the bench guest
//! under growing write rates (ours only), and the machine's own limits (loopback TCP, memcpy).
//! See tests/README.md.

mod checks;
mod report;
use checks::*;
use report::*;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use laundromat_tests::{
    bench_files::{compare_pages, write_random, ScratchDir, PAGE},
    bench_idle::{self, IdleRun, IdleSetup},
    bench_limits::{self, gbit_per_s, gbyte_per_s},
    bench_migration::{
        free_port, parse_ctl_output, DowntimeParts, Integrity, OurStats, StopReason,
    },
    bench_peers::{find_qemu, require_kvm, QEMU_MICROVM},
    host_keys::HostKeys,
    machine::Machine,
    netns,
    process::{command_line, BoundedChild},
    qmp::{self, capabilities, Qmp},
    stats::Summary,
    workspace::{Image, Workspace},
};
use serde::Serialize;
use serde_json::{json, Value};

/// pvh-dirty's first dot, after 2^20 page writes: it has rewritten its whole working set (at
/// most 4000 MiB) with a non-zero pass counter, so it is dirtying in its steady state. Both
/// VMMs migrate from that point. (Its pass 0 writes zeros, which look like untouched memory.)
const PVH_DIRTYING: &str = " MiB at 0x200000\r\n.";
/// pvh-dirty's image (code, data and stack) and where its working set starts.
const PVH_IMAGE: Range<u64> = (1 << 20)..(1 << 20) + (8 << 10);
const PVH_WSS_BASE: u64 = 2 << 20;
/// pvh-dirty writes its pass counter into the first word of each working-set page.
const PVH_COUNTER_BYTES: usize = 4;
/// The idle case: 1 GiB of random memory, a 1 MiB working set (nearly idle).
const IDLE_MEM_MIB: u64 = 1024;
const IDLE_WSS_MIB: u64 = 1;
/// The dirtying cases: RAM for the largest working set (it needs 2 + wss MiB).
const WSS_MEM_MIB: u64 = 512;
/// The bench guest's dirty workload: working set, RAM, vCPUs and progress interval.
const BENCH_WSS_MIB: u64 = 256;
const BENCH_MEM_MIB: u64 = 512;
const BENCH_VCPUS: u32 = 2;
const BENCH_REPORT_MS: u64 = 250;
/// Bounds for the bench runs, so that a guest that dirties faster than the link still ends.
const BENCH_MAX_ROUNDS: u32 = 30;
const BENCH_TIMEOUT_S: u64 = 20;
/// Our default downtime target and round cap, and QEMU's default downtime-limit.
const DOWNTIME_TARGET_MS: f64 = 300.0;
const DEFAULT_MAX_ROUNDS: u32 = 30;
/// QEMU "best": multifd channels, and a bandwidth cap (bytes/s) high enough to be no cap.
const MULTIFD_CHANNELS: u64 = 2;
const UNLIMITED_BANDWIDTH: u64 = 1_000_000_000_000;
/// QEMU's largest downtime-limit (2000 s): setting it makes QEMU switch over at once.
const QEMU_FORCE_DOWNTIME_MS: u64 = 2_000_000;
/// Targets for the idle 1 GiB case.
const TARGET_TOTAL_VS_QEMU_BEST: f64 = 0.7;
const TARGET_DOWNTIME_MS: f64 = 20.0;
const TARGET_THROUGHPUT_VS_TCP: f64 = 0.7;
/// The notes under the table: what the columns mean.
const NOTES: &[&str] = &[
    "total and down ms are each VMM's own figures. Our downtime runs from pausing the source",
    "to the destination's acknowledgement that the VM runs; QEMU's ends when the source has",
    "sent everything (the destination's resume is not in it). wall ms = from the migrate",
    "command to the harness seeing the end. rounds: ours = passes over memory including the",
    "final one; QEMU = its dirty-sync-count. Gbit/s = sent / total time. dirty/s = the dirty",
    "rate the VMM measured last, pages/s (QEMU reports 0 when it did not measure one).",
    "guest/s = the bench guest's own write rate on its last 250 ms line before > during the",
    "migration (a paced guest runs above its rate while it catches up with its schedule).",
    "thr% = auto-converge's vCPU throttle at the end. ac = --auto-converge.",
];
/// How often the harness polls QEMU and consoles.
const POLL: Duration = Duration::from_millis(10);

#[derive(Parser)]
#[command(
    name = "migrate-bench",
    about = "Live migration, ours vs QEMU: idle 1 GiB random memory, dirtying guests, write rates"
)]
struct Args {
    /// Runs of the idle 1 GiB case per VMM setting (the table shows medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// A reduced set: one idle run, the 64 MiB working set only, two write rates, 1 GiB over
    /// loopback TCP.
    #[arg(long)]
    quick: bool,
    /// The QEMU binary to compare with.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU's `-M` value (the memory backend is added to it).
    #[arg(long, default_value = QEMU_MICROVM)]
    qemu_machine: String,
    /// Where the scratch directory for memory files and sockets goes. The default is
    /// /dev/shm (if present) so that the file-backed guest RAM stays in memory and is never
    /// written back to disk while being measured.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// How long QEMU may pre-copy before the harness forces the switchover (as our
    /// `--on-timeout force` does), in seconds.
    #[arg(long, default_value_t = BENCH_TIMEOUT_S)]
    qemu_converge_secs: u64,
    /// The longest any other wait may take (a boot, a migration's end, a check), in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Run only the idle bench guests with untouched memory (256 MiB, 1 GiB, 4 GiB).
    #[arg(long)]
    idle_untouched_only: bool,
}

/// Who migrates, with which settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Vmm {
    #[default]
    Ours,
    QemuDefault,
    QemuBest,
}

impl Vmm {
    const ALL: [Vmm; 3] = [Vmm::Ours, Vmm::QemuDefault, Vmm::QemuBest];

    fn label(self) -> &'static str {
        match self {
            Vmm::Ours => "ours",
            Vmm::QemuDefault => "QEMU defaults",
            Vmm::QemuBest => "QEMU best",
        }
    }
}

/// One migration's figures, in the same units for both VMMs.
#[derive(Clone, Debug, Default, Serialize)]
struct Migration {
    scenario: String,
    vmm: Vmm,
    /// The run's number, for scenarios run more than once.
    run: u32,
    /// For the bench guest: the write rate (pages/s, 0 = unlimited) and auto-converge.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<u64>,
    auto_converge: bool,
    /// "completed", another VMM status, or "error" when the harness could not finish the run.
    status: String,
    /// The VMM's own total time and downtime.
    total_ms: f64,
    downtime_ms: f64,
    setup_ms: f64,
    /// From the migrate command to the harness seeing the end.
    wall_ms: f64,
    transferred_bytes: u64,
    /// Ours: passes over memory, the final one included; QEMU: its dirty-sync-count.
    rounds: u64,
    /// transferred / total time.
    throughput_gbit: f64,
    /// The link rate the VMM itself reports (ram.mbps).
    reported_mbps: f64,
    /// The dirty rate the VMM measured in its last round, pages per second.
    dirty_pages_rate: u64,
    /// Bench guest: the write rate it printed last before the migration started, and last
    /// while it was migrating (if it printed a line then), pages per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_rate_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_rate_during: Option<u64>,
    throttle_percent: u64,
    /// Why pre-copy stopped.
    stop: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    downtime_parts: Option<DowntimeParts>,
    /// What was checked after the switchover, and whether it passed.
    integrity: String,
    integrity_ok: Option<bool>,
    /// A VMM misbehaviour or a harness error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
    commands: Vec<String>,
}

impl Migration {
    fn new(scenario: &str, vmm: Vmm) -> Self {
        Migration {
            scenario: scenario.to_owned(),
            vmm,
            ..Migration::default()
        }
    }

    fn completed(&self) -> bool {
        self.status == "completed"
    }

    fn set_throughput(&mut self) {
        self.throughput_gbit = gbit_per_s(
            self.transferred_bytes,
            Duration::from_secs_f64(self.total_ms / 1e3),
        );
    }
}

/// The PVH guest both VMMs boot, with its RAM in memory files or anonymous.
struct PvhGuest {
    wss_mib: u64,
    mem_mib: u64,
    files: Option<MemFiles>,
}

struct MemFiles {
    source: PathBuf,
    dest: PathBuf,
}

impl PvhGuest {
    fn cmdline(&self) -> String {
        format!("wss={}", self.wss_mib)
    }

    /// How many leading bytes of the page at `address` the guest may rewrite after the
    /// switchover, so the two memory files may differ there: its stack (in the image) and the
    /// counter word of each working-set page.
    fn changing_bytes(&self, address: u64) -> usize {
        if PVH_IMAGE.contains(&address) {
            PAGE as usize
        } else if (PVH_WSS_BASE..PVH_WSS_BASE + (self.wss_mib << 20)).contains(&address) {
            PVH_COUNTER_BYTES
        } else {
            0
        }
    }
}

#[derive(Serialize)]
struct Limits {
    tcp_bytes: u64,
    tcp_write_bytes: usize,
    tcp_gbit: Summary,
    memcpy_bytes: usize,
    memcpy_gbyte: Summary,
}

#[derive(Serialize)]
struct Targets {
    total_vs_qemu_best: Verdict,
    downtime_ms: Verdict,
    throughput_vs_tcp: Verdict,
}

#[derive(Serialize)]
struct Verdict {
    value: Option<f64>,
    target: f64,
    /// The value must reach the target rather than stay under it.
    at_least: bool,
    met: bool,
}

impl Verdict {
    /// Met when `value` is at most (or, with `at_least`, at least) `target`; a missing value
    /// never meets it.
    fn new(value: Option<f64>, target: f64, at_least: bool) -> Self {
        let met = value.is_some_and(|v| if at_least { v >= target } else { v <= target });
        Verdict {
            value,
            target,
            at_least,
            met,
        }
    }

    fn show(&self, unit: &str) -> String {
        let value = self
            .value
            .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}{unit}"));
        let word = if self.met { "met" } else { "MISSED" };
        let bound = if self.at_least { ">=" } else { "<=" };
        format!("{value} (target {bound} {}{unit}): {word}", self.target)
    }
}

/// Medians of one VMM setting over the idle runs.
#[derive(Clone, Serialize)]
struct Medians {
    vmm: Vmm,
    runs: usize,
    completed: usize,
    total_ms: Option<Summary>,
    downtime_ms: Option<Summary>,
    transferred_bytes: Option<f64>,
    rounds: Option<f64>,
    throughput_gbit: Option<f64>,
}

#[derive(Serialize)]
struct Ratio {
    scenario: String,
    total_vs_qemu_default: Option<f64>,
    total_vs_qemu_best: Option<f64>,
    downtime_vs_qemu_default: Option<f64>,
    downtime_vs_qemu_best: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    /// /proc/loadavg before and after: other work on the machine shows up here.
    loadavg_start: String,
    loadavg_end: String,
    quick: bool,
    idle_runs: u32,
    qemu_converge_secs: u64,
    limits: Limits,
    idle_untouched: Vec<IdleRun>,
    idle: Vec<Migration>,
    idle_medians: Vec<Medians>,
    targets: Targets,
    working_sets: Vec<Migration>,
    ratios: Vec<Ratio>,
    bench: Vec<Migration>,
    bench_findings: Vec<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("migrate-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let workspace = Workspace::locate()?;
    let qemu = find_qemu(&args.qemu)?;
    require_kvm()?;
    let tmp_dir = args.tmp_dir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    let scratch = ScratchDir::new(&tmp_dir, "migrate-bench")?;
    let mut bench = Bench {
        vmm: workspace.vmm()?,
        qemu,
        qemu_machine: args.qemu_machine.clone(),
        pvh: workspace.image(Image::PvhDirty)?,
        bench: workspace.image(Image::Bench)?,
        keys: HostKeys::create(&workspace.vmm()?, scratch.path())?,
        scratch,
        timeout: Duration::from_secs(args.timeout_secs),
        qemu_converge: Duration::from_secs(args.qemu_converge_secs),
        next_id: 0,
    };
    let loadavg_start = loadavg();
    let idle_runs = if args.quick { 1 } else { args.runs };

    let idle_untouched = bench_idle::run_all(&IdleSetup {
        vmm: &bench.vmm,
        bench_image: &bench.bench,
        scratch: bench.scratch.path(),
        timeout: bench.timeout,
        dest_args: &bench.keys.incoming_args(),
        source_args: &bench.keys.migrate_args(),
    });
    if args.idle_untouched_only {
        match args.json {
            true => println!("{}", serde_json::to_string_pretty(&idle_untouched)?),
            false => bench_idle::print(&idle_untouched),
        }
        return Ok(());
    }

    // The limits first, while no guest competes for the CPUs.
    let limits = measure_limits(args.quick)?;

    let idle = bench.idle_runs(idle_runs)?;
    let idle_medians: Vec<Medians> = Vmm::ALL.iter().map(|&v| medians(&idle, v)).collect();
    let targets = targets(&idle, &limits);

    let working_sets_mib: &[u64] = if args.quick { &[64] } else { &[64, 256] };
    let mut working_sets = Vec::new();
    for &wss_mib in working_sets_mib {
        for vmm in Vmm::ALL {
            let guest = PvhGuest {
                wss_mib,
                mem_mib: WSS_MEM_MIB,
                files: None,
            };
            let scenario = format!("pvh-dirty wss={wss_mib} MiB");
            eprintln!("migrate-bench: {scenario}, {}", vmm.label());
            working_sets.push(bench.pvh_migration(&scenario, vmm, &guest));
        }
    }
    let mut ratios = vec![ratio(&idle)];
    ratios.extend(working_sets.chunks(Vmm::ALL.len()).map(ratio));

    let rates: &[u64] = if args.quick {
        &[200_000, 0]
    } else {
        &[50_000, 200_000, 500_000, 1_000_000, 0]
    };
    let mut bench_runs = Vec::new();
    for &rate in rates {
        for auto_converge in [false, true] {
            bench_runs.push(bench.bench_migration(rate, auto_converge));
        }
    }
    let bench_findings = bench_findings(&bench_runs);

    let report = Report {
        machine: Machine::detect(),
        loadavg_start,
        loadavg_end: loadavg(),
        quick: args.quick,
        idle_runs,
        qemu_converge_secs: args.qemu_converge_secs,
        limits,
        idle_untouched,
        idle,
        idle_medians,
        targets,
        working_sets,
        ratios,
        bench: bench_runs,
        bench_findings,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
        bench_idle::print(&report.idle_untouched);
    }
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Loopback TCP (3 transfers) and memcpy (5 copies of 256 MiB).
fn measure_limits(quick: bool) -> Result<Limits> {
    let tcp_bytes: u64 = if quick { 1 << 30 } else { 2 << 30 };
    eprintln!("migrate-bench: limits: loopback TCP, memcpy");
    let mut tcp = Vec::new();
    for _ in 0..3 {
        tcp.push(gbit_per_s(
            tcp_bytes,
            bench_limits::loopback_tcp(tcp_bytes)?,
        ));
    }
    let memcpy_bytes = 256 << 20;
    let memcpy: Vec<f64> = bench_limits::memcpy(memcpy_bytes, 5)
        .into_iter()
        .map(|time| gbyte_per_s(memcpy_bytes as u64, time))
        .collect();
    Ok(Limits {
        tcp_bytes,
        tcp_write_bytes: bench_limits::TCP_WRITE,
        tcp_gbit: Summary::of(&tcp).context("no TCP samples")?,
        memcpy_bytes,
        memcpy_gbyte: Summary::of(&memcpy).context("no memcpy samples")?,
    })
}

/// What every run needs: the programs, the scratch directory, the time bounds.
struct Bench {
    vmm: PathBuf,
    qemu: PathBuf,
    qemu_machine: String,
    pvh: PathBuf,
    bench: PathBuf,
    scratch: ScratchDir,
    timeout: Duration,
    qemu_converge: Duration,
    /// The identities our source and destination authenticate each other with.
    keys: HostKeys,
    /// Numbers the sockets, so no two children ever share one.
    next_id: u32,
}

impl Bench {
    fn scratch_file(&mut self, stem: &str, extension: &str) -> PathBuf {
        self.next_id += 1;
        self.scratch
            .join(&format!("{stem}-{}.{extension}", self.next_id))
    }

    /// The idle case: one random file, copied afresh before each run so that every VMM starts
    /// from the same contents; the VMMs take turns so machine noise hits them alike.
    fn idle_runs(&mut self, runs: u32) -> Result<Vec<Migration>> {
        let random = self.scratch.join("random.img");
        eprintln!("migrate-bench: writing {IDLE_MEM_MIB} MiB of random bytes");
        write_random(&random, IDLE_MEM_MIB << 20, 0x6c61_756e_6472_6f6d)?;
        let files = MemFiles {
            source: self.scratch.join("source.img"),
            dest: self.scratch.join("dest.img"),
        };
        let guest = PvhGuest {
            wss_mib: IDLE_WSS_MIB,
            mem_mib: IDLE_MEM_MIB,
            files: Some(files),
        };
        let mut results = Vec::new();
        for run in 1..=runs {
            for vmm in Vmm::ALL {
                eprintln!(
                    "migrate-bench: idle 1 GiB, {}, run {run}/{runs}",
                    vmm.label()
                );
                let files = guest.files.as_ref().context("the idle guest has files")?;
                fs::copy(&random, &files.source).context("cannot copy the random file")?;
                remove_if_present(&files.dest)?;
                let mut migration = self.pvh_migration("idle 1 GiB random", vmm, &guest);
                migration.run = run;
                results.push(migration);
                remove_if_present(&files.source)?;
                remove_if_present(&files.dest)?;
            }
        }
        remove_if_present(&random)?;
        Ok(results)
    }

    /// One migration of the PVH guest; a run the harness cannot finish is recorded as an error
    /// rather than ending the benchmark.
    fn pvh_migration(&mut self, scenario: &str, vmm: Vmm, guest: &PvhGuest) -> Migration {
        let mut migration = Migration::new(scenario, vmm);
        let outcome = match vmm {
            Vmm::Ours => self.ours_pvh(guest, &mut migration),
            Vmm::QemuDefault | Vmm::QemuBest => self.qemu_pvh(guest, vmm, &mut migration),
        };
        record_error(&mut migration, outcome);
        migration
    }

    fn bench_migration(&mut self, rate: u64, auto_converge: bool) -> Migration {
        let scenario = format!("bench dirty wss={BENCH_WSS_MIB} MiB");
        eprintln!(
            "migrate-bench: {scenario}, rate={rate}, auto-converge {}",
            if auto_converge { "on" } else { "off" }
        );
        let mut migration = Migration::new(&scenario, Vmm::Ours);
        migration.rate = Some(rate);
        migration.auto_converge = auto_converge;
        let outcome = self.ours_bench(rate, &mut migration);
        record_error(&mut migration, outcome);
        migration
    }

    fn vmm_command(&self) -> Command {
        let mut command = Command::new(&self.vmm);
        command.env("VMM_LOG", "warn");
        command
    }

    fn ours_pvh(&mut self, guest: &PvhGuest, migration: &mut Migration) -> Result<()> {
        let mut source = self.vmm_command();
        source
            .args(["run", "--boot", "pvh", "--kernel"])
            .arg(&self.pvh)
            .args(["--cmdline", &guest.cmdline()])
            .args(["--mem", &guest.mem_mib.to_string()]);
        if let Some(files) = &guest.files {
            source.arg("--mem-file").arg(&files.source);
        }
        let dest_file = guest.files.as_ref().map(|files| files.dest.as_path());
        let timeout = self.timeout;
        let ready = |source: &mut BoundedChild| Ok(source.wait_for(PVH_DIRTYING, timeout)?);
        let defaults = MigrateOptions::default();
        let mut run = self.ours_migrate(source, ready, dest_file, defaults, migration)?;
        if !migration.completed() {
            return Ok(());
        }
        match &guest.files {
            Some(files) => {
                // Freeze the destination so its memory file holds still while it is read.
                self.ctl(&run.dest_sock, &["pause"])?;
                check_memory(files, guest, migration)?;
            }
            None => check_dot(&mut run.dest, self.timeout, migration),
        }
        Ok(())
    }

    fn ours_bench(&mut self, rate: u64, migration: &mut Migration) -> Result<()> {
        let cmdline =
            format!("workload=dirty wss={BENCH_WSS_MIB} rate={rate} report-ms={BENCH_REPORT_MS}");
        let mut source = self.vmm_command();
        source
            .args(["run", "--boot", "bench", "--kernel"])
            .arg(&self.bench)
            .args(["--cmdline", &cmdline])
            .args(["--mem", &BENCH_MEM_MIB.to_string()])
            .args(["--vcpus", &BENCH_VCPUS.to_string()]);
        let options = MigrateOptions {
            max_rounds: Some(BENCH_MAX_ROUNDS),
            timeout_s: Some(BENCH_TIMEOUT_S),
            auto_converge: migration.auto_converge,
        };
        let timeout = self.timeout;
        let ready = |source: &mut BoundedChild| bench_populated(source, timeout);
        let mut run = self.ours_migrate(source, ready, None, options, migration)?;
        migration.guest_rate_before = Integrity::of_console(&run.console_before).last_rate;
        migration.guest_rate_during = Integrity::of_console(&run.console_during).last_rate;
        if migration.completed() {
            check_bench(&mut run.dest, self.timeout, migration)?;
        }
        Ok(())
    }

    /// Starts a destination and the `source` VMM, waits until `ready` returns, migrates with
    /// `vmm ctl ... migrate` and `options`, and fills `migration` from the statistics. Returns
    /// the destination, still running, for the caller's checks.
    fn ours_migrate(
        &mut self,
        mut source: Command,
        ready: impl FnOnce(&mut BoundedChild) -> Result<()>,
        dest_mem_file: Option<&Path>,
        options: MigrateOptions,
        migration: &mut Migration,
    ) -> Result<OursRun> {
        let port = free_port().context("no free TCP port")?;
        let url = format!("tcp://127.0.0.1:{port}");
        let (source_sock, dest_sock) = (
            self.scratch_file("ours-source", "sock"),
            self.scratch_file("ours-dest", "sock"),
        );
        let mut dest = self.vmm_command();
        dest.args(["run", "--incoming", &url])
            .args(self.keys.incoming_args())
            .arg("--api-sock")
            .arg(&dest_sock);
        if let Some(file) = dest_mem_file {
            dest.arg("--mem-file").arg(file);
        }
        source.arg("--api-sock").arg(&source_sock);
        let mut ctl = self.vmm_command();
        ctl.arg("ctl")
            .arg(&source_sock)
            .args(["migrate", &url])
            .args(self.keys.migrate_args())
            .args(options.ctl_args());
        migration.commands = [&dest, &source, &ctl].map(command_line).to_vec();

        let mut dest = BoundedChild::spawn("our destination", &mut dest)?;
        let mut source = BoundedChild::spawn("our source", &mut source)?;
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        wait_until(self.timeout, || {
            Ok(netns::is_listening(dest.pid(), address)?)
        })
        .context("our destination never listened")?;
        ready(&mut source)?;
        wait_until(self.timeout, || Ok(source_sock.exists()))
            .context("our source never opened its control socket")?;

        let console_before = source.console();
        let started = Instant::now();
        let mut ctl = BoundedChild::spawn("vmm ctl migrate", &mut ctl)?;
        // Only the final statistics line has "ok"; our timeout is a bound, not a measurement.
        let bound = self.timeout + Duration::from_secs(BENCH_TIMEOUT_S);
        ctl.wait_for("\"ok\":", bound)?;
        migration.wall_ms = started.elapsed().as_secs_f64() * 1e3;
        // The statistics line may still be arriving: it is complete once `vmm ctl` exits.
        wait_until(self.timeout, || Ok(!ctl.is_running()?))
            .context("`vmm ctl migrate` did not exit after its statistics")?;
        let (progress, stats) = parse_ctl_output(&ctl.console())?;
        let console_during = source.console();
        let console_during = console_during
            .strip_prefix(&console_before)
            .unwrap_or_default()
            .to_owned();
        fill_ours(migration, &stats);
        let max_rounds = options.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS);
        let stop = StopReason::infer(&stats, &progress, DOWNTIME_TARGET_MS, max_rounds);
        migration.stop = (stats.stop_reason.clone()).unwrap_or_else(|| stop.label().to_owned());
        if migration.completed() {
            // The source must exit, and with status 0, once the destination runs the VM.
            let exited = wait_until(self.timeout, || Ok(!source.is_running()?)).is_ok();
            let status = source.kill().context("cannot reap our source")?;
            if !exited || !status.success() {
                migration.problems.push(format!(
                    "the source VMM did not exit 0 after a completed migration ({})",
                    if exited {
                        status.to_string()
                    } else {
                        "still running".into()
                    }
                ));
            }
            if !dest.is_running()? {
                migration.problems.push(format!(
                    "the destination VMM exited after a completed migration; console:\n{}",
                    dest.console()
                ));
            }
        } else if let Some(error) = &stats.error {
            migration
                .problems
                .push(format!("migration {}: {error}", stats.status));
        }
        Ok(OursRun {
            console_before,
            console_during,
            dest,
            dest_sock,
        })
    }

    /// Runs `vmm ctl SOCK ARGS...` and checks it answered ok.
    fn ctl(&self, sock: &Path, args: &[&str]) -> Result<()> {
        let mut command = self.vmm_command();
        command.arg("ctl").arg(sock).args(args);
        let mut child = BoundedChild::spawn("vmm ctl", &mut command)?;
        child.wait_for("\"ok\":", self.timeout)?;
        let answer = child.console();
        ensure!(
            answer.contains("\"ok\":true"),
            "`{}` answered {answer}",
            command_line(&command)
        );
        Ok(())
    }

    /// QEMU's microvm on the PVH guest, RAM from `mem_file` (shared) or anonymous, driven over
    /// QMP at `qmp_sock`; a destination waits for `migrate-incoming`.
    fn qemu_command(
        &self,
        guest: &PvhGuest,
        mem_file: Option<&Path>,
        qmp_sock: &Path,
        incoming: bool,
    ) -> Command {
        let mut command = Command::new(&self.qemu);
        let mem = format!("{}M", guest.mem_mib);
        match mem_file {
            Some(file) => {
                command.args(["-M", &format!("{},memory-backend=mem", self.qemu_machine)]);
                let backend = format!(
                    "memory-backend-file,id=mem,size={mem},mem-path={},share=on",
                    file.display()
                );
                command.args(["-object", &backend]);
            }
            None => {
                command.args(["-M", &self.qemu_machine]);
            }
        }
        command.args(["-m", &mem, "-accel", "kvm", "-kernel"]);
        command
            .arg(&self.pvh)
            .args(["-append", &guest.cmdline()])
            .args(["-nodefaults", "-no-user-config", "-nographic"])
            .args(["-serial", "stdio", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()));
        if incoming {
            // The listening address comes later over QMP, after the capabilities are set.
            command.args(["-incoming", "defer"]);
        }
        command
    }

    fn qemu_pvh(&mut self, guest: &PvhGuest, vmm: Vmm, migration: &mut Migration) -> Result<()> {
        let port = free_port().context("no free TCP port")?;
        let uri = format!("tcp:127.0.0.1:{port}");
        let (source_qmp, dest_qmp) = (
            self.scratch_file("qemu-source", "qmp"),
            self.scratch_file("qemu-dest", "qmp"),
        );
        let files = guest.files.as_ref();
        let mut dest = self.qemu_command(guest, files.map(|f| f.dest.as_path()), &dest_qmp, true);
        let mut source =
            self.qemu_command(guest, files.map(|f| f.source.as_path()), &source_qmp, false);
        migration.commands = vec![command_line(&dest), command_line(&source)];

        let mut dest = BoundedChild::spawn("QEMU destination", &mut dest)?;
        let mut source = BoundedChild::spawn("QEMU source", &mut source)?;
        let mut dest_qmp = Qmp::connect(&dest_qmp, self.timeout)?;
        let mut source_qmp = Qmp::connect(&source_qmp, self.timeout)?;
        source.wait_for(PVH_DIRTYING, self.timeout)?;

        if vmm == Vmm::QemuBest {
            // Both ends must have multifd, and the same number of channels.
            for (side, qmp) in [("destination", &mut dest_qmp), ("source", &mut source_qmp)] {
                let multifd = capabilities(&[("multifd", true)]);
                qmp_run(
                    &mut migration.commands,
                    qmp,
                    side,
                    "migrate-set-capabilities",
                    multifd,
                )?;
                let channels = json!({ "multifd-channels": MULTIFD_CHANNELS });
                qmp_run(
                    &mut migration.commands,
                    qmp,
                    side,
                    "migrate-set-parameters",
                    channels,
                )?;
            }
            let limits = json!({
                "max-bandwidth": UNLIMITED_BANDWIDTH,
                "downtime-limit": DOWNTIME_TARGET_MS as u64,
            });
            qmp_run(
                &mut migration.commands,
                &mut source_qmp,
                "source",
                "migrate-set-parameters",
                limits,
            )?;
        }
        qmp_run(
            &mut migration.commands,
            &mut dest_qmp,
            "destination",
            "migrate-incoming",
            json!({ "uri": uri }),
        )?;
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        wait_until(self.timeout, || {
            Ok(netns::is_listening(dest.pid(), address)?)
        })
        .context("the QEMU destination never listened")?;

        let started = Instant::now();
        qmp_run(
            &mut migration.commands,
            &mut source_qmp,
            "source",
            "migrate",
            json!({ "uri": uri }),
        )?;
        migration.commands.push(format!(
            "QMP source: {} every {} ms until it ends",
            qmp::command_line("query-migrate", &Value::Null),
            POLL.as_millis()
        ));
        let mut forced = false;
        let info = loop {
            let info = source_qmp.query_migrate()?;
            if info.is_finished() {
                break info;
            }
            let elapsed = started.elapsed();
            if !forced && elapsed > self.qemu_converge {
                // Like our `--on-timeout force`: accept any downtime, so QEMU switches over.
                let force = json!({ "downtime-limit": QEMU_FORCE_DOWNTIME_MS });
                qmp_run(
                    &mut migration.commands,
                    &mut source_qmp,
                    "source",
                    "migrate-set-parameters",
                    force,
                )?;
                forced = true;
            }
            if elapsed > self.qemu_converge + self.timeout {
                // Best effort: the children are killed on return anyway.
                let _ = source_qmp.execute("migrate_cancel", &Value::Null);
                break info;
            }
            thread::sleep(POLL);
        };
        migration.wall_ms = started.elapsed().as_secs_f64() * 1e3;
        let ram = info.ram.clone().unwrap_or_default();
        migration.status = info.status.clone().unwrap_or_else(|| "unknown".into());
        migration.total_ms = info.total_time.unwrap_or(0) as f64;
        migration.downtime_ms = info.downtime.unwrap_or(0) as f64;
        migration.setup_ms = info.setup_time.unwrap_or(0) as f64;
        migration.transferred_bytes = ram.transferred;
        migration.rounds = ram.dirty_sync_count;
        migration.reported_mbps = ram.mbps;
        migration.dirty_pages_rate = ram.dirty_pages_rate;
        migration.throttle_percent = info.cpu_throttle_percentage.unwrap_or(0);
        migration.set_throughput();
        migration.stop = match (migration.completed(), forced) {
            (true, false) => "converged".into(),
            (true, true) => format!("forced after {} s", self.qemu_converge.as_secs()),
            (false, _) => "did not finish".into(),
        };
        if !migration.completed() {
            if let Some(error) = info.error_desc {
                migration.problems.push(format!("QEMU: {error}"));
            }
            return Ok(());
        }
        wait_until(self.timeout, || {
            let status = dest_qmp.execute("query-status", &Value::Null)?;
            Ok(status["status"] == "running")
        })
        .context("the QEMU destination never ran the VM")?;
        match files {
            Some(files) => {
                dest_qmp.execute("stop", &Value::Null)?;
                check_memory(files, guest, migration)?;
            }
            None => check_dot(&mut dest, self.timeout, migration),
        }
        Ok(())
    }
}
