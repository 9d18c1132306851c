//! migrate-bench: live migration with Laundromat's VMM side by side with QEMU on the same PVH
//! guest (an idle 1 GiB guest with random memory, then dirtying working sets), the bench guest
//! under growing write rates (ours only), and the machine's own limits (loopback TCP, memcpy).
//! See tests/README.md.

mod checks;
mod report;
mod scenarios;
use checks::*;
use report::*;
use scenarios::*;

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
    bench_tls,
    host_keys::HostKeys,
    machine::Machine,
    netns,
    process::{command_line, BoundedChild},
    qemu_tls::{QemuTlsCreds, QEMU_TLS_PRIORITY},
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
/// QEMU "best": a bandwidth cap (bytes/s) high enough to be no cap (its multifd channels are
/// `--connections`).
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
    /// Runs of each working-set case per VMM setting (the verdicts use medians): the dirty set
    /// left at the switchover varies a lot from run to run, so one run says little.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    wss_runs: u32,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// A reduced set: one idle run, one run of the 64 MiB working set only, two write rates,
    /// 1 GiB over loopback TCP.
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
    /// Run only the machine's limits (loopback TCP and TLS, memcpy), then stop.
    #[arg(long)]
    limits_only: bool,
    /// Our `vmm ctl migrate --connections` in the PVH scenarios; QEMU's multifd settings use
    /// as many channels.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    connections: u32,
    /// Which VMM settings run the PVH scenarios (repeatable; default all). The bench-guest
    /// runs are ours only and are skipped when `ours` is not listed.
    #[arg(long = "vmm", value_enum)]
    vmms: Vec<Vmm>,
    /// Skip the bench guest's write-rate runs (section 3).
    #[arg(long)]
    no_write_rates: bool,
}

/// Who migrates, with which settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
enum Vmm {
    #[default]
    Ours,
    QemuDefault,
    QemuBest,
    /// QEMU best over TLS 1.3 (x509 credentials, both ends verified): the like-for-like peer
    /// for our encrypted stream.
    QemuTls,
}

impl Vmm {
    const ALL: [Vmm; 4] = [Vmm::Ours, Vmm::QemuDefault, Vmm::QemuBest, Vmm::QemuTls];

    fn label(self) -> &'static str {
        match self {
            Vmm::Ours => "ours",
            Vmm::QemuDefault => "QEMU defaults",
            Vmm::QemuBest => "QEMU best",
            Vmm::QemuTls => "QEMU TLS",
        }
    }

    /// QEMU with multifd (and an uncapped link).
    fn multifd(self) -> bool {
        matches!(self, Vmm::QemuBest | Vmm::QemuTls)
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
    /// Ours: pages sent while paused (the final round).
    final_pages: u64,
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
    /// One loopback TCP stream: the denominator for our throughput.
    tcp_gbit: Summary,
    /// The same bytes over as many streams as our migration uses connections, TCP and TLS.
    streams: u32,
    tcp_streams_gbit: Summary,
    tls_streams_gbit: Summary,
    /// One TLS stream, for the cost of TLS on one core.
    tls_gbit: Summary,
    /// The same with rustls' defaults (`StreamOwned` on a plain socket), to show what the
    /// migration's socket tuning gains.
    rustls_gbit: Summary,
    rustls_streams_gbit: Summary,
    cipher_suite: String,
    memcpy_bytes: usize,
    memcpy_gbyte: Summary,
}

#[derive(Serialize)]
struct Targets {
    total_vs_qemu_best: Verdict,
    /// The same target against the encrypted peer.
    total_vs_qemu_tls: Verdict,
    downtime_ms: Verdict,
    /// Against one loopback TCP stream (the denominator) and against as many streams
    /// as we use connections.
    throughput_vs_tcp: Verdict,
    throughput_vs_tcp_streams: Verdict,
    /// Not targets: how our stream compares with raw TLS on as many streams, and raw TLS
    /// with raw TCP (what encryption costs by itself).
    throughput_vs_tls_streams: Option<f64>,
    tls_vs_tcp_streams: Option<f64>,
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
    total_vs_qemu_tls: Option<f64>,
    downtime_vs_qemu_default: Option<f64>,
    downtime_vs_qemu_best: Option<f64>,
    downtime_vs_qemu_tls: Option<f64>,
}

/// A working set's target: our median downtime at most QEMU best's.
#[derive(Serialize)]
struct WorkingSetTarget {
    scenario: String,
    ours_downtime_ms: Option<Summary>,
    qemu_best_downtime_ms: Option<Summary>,
    downtime_vs_qemu_best: Verdict,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    /// /proc/loadavg before and after: other work on the machine shows up here.
    loadavg_start: String,
    loadavg_end: String,
    quick: bool,
    connections: u32,
    idle_runs: u32,
    qemu_converge_secs: u64,
    limits: Limits,
    idle_untouched: Vec<IdleRun>,
    idle: Vec<Migration>,
    idle_medians: Vec<Medians>,
    targets: Targets,
    wss_runs: u32,
    working_sets: Vec<Migration>,
    working_set_targets: Vec<WorkingSetTarget>,
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
        qemu_tls: QemuTlsCreds::create(&scratch.join("qemu-tls"))?,
        connections: args.connections,
        scratch,
        timeout: Duration::from_secs(args.timeout_secs),
        qemu_converge: Duration::from_secs(args.qemu_converge_secs),
        vmms: match args.vmms.is_empty() {
            true => Vmm::ALL.to_vec(),
            false => args.vmms.clone(),
        },
        next_id: 0,
    };
    let loadavg_start = loadavg();
    let idle_runs = if args.quick { 1 } else { args.runs };

    if args.limits_only {
        let limits = measure_limits(args.quick, args.connections)?;
        match args.json {
            true => println!("{}", serde_json::to_string_pretty(&limits)?),
            false => print_limits(&limits),
        }
        return Ok(());
    }
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
    let limits = measure_limits(args.quick, args.connections)?;

    let idle = bench.idle_runs(idle_runs)?;
    let idle_medians: Vec<Medians> = bench.vmms.iter().map(|&v| medians(&idle, v)).collect();
    let targets = targets(&idle, &limits);

    let working_sets_mib: &[u64] = if args.quick { &[64] } else { &[64, 256] };
    let wss_runs = if args.quick { 1 } else { args.wss_runs };
    let mut working_sets = Vec::new();
    let mut ratios = vec![ratio(&idle)];
    let mut working_set_targets = Vec::new();
    for &wss_mib in working_sets_mib {
        let guest = PvhGuest {
            wss_mib,
            mem_mib: WSS_MEM_MIB,
            files: None,
        };
        let scenario = format!("pvh-dirty wss={wss_mib} MiB");
        let runs = bench.take_turns(&scenario, wss_runs, &guest, || Ok(()))?;
        ratios.push(ratio(&runs));
        working_set_targets.push(working_set_target(&runs));
        working_sets.extend(runs);
    }

    let rates: &[u64] = if args.no_write_rates || !bench.vmms.contains(&Vmm::Ours) {
        &[]
    } else if args.quick {
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
        connections: args.connections,
        idle_runs,
        qemu_converge_secs: args.qemu_converge_secs,
        limits,
        idle_untouched,
        idle,
        idle_medians,
        targets,
        wss_runs,
        working_sets,
        working_set_targets,
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

/// Loopback TCP and TLS (3 transfers each, one stream and `streams` streams) and memcpy (5
/// copies of 256 MiB).
fn measure_limits(quick: bool, streams: u32) -> Result<Limits> {
    let tcp_bytes: u64 = if quick { 1 << 30 } else { 2 << 30 };
    eprintln!("migrate-bench: limits: loopback TCP and TLS, memcpy");
    let (mut tcp, mut tcp_streams, mut tls, mut tls_streams) = (vec![], vec![], vec![], vec![]);
    let (mut rustls, mut rustls_streams) = (vec![], vec![]);
    let mut cipher_suite = String::new();
    for _ in 0..3 {
        let time = bench_limits::loopback_tcp(tcp_bytes)?;
        tcp.push(gbit_per_s(tcp_bytes, time));
        let time = bench_limits::loopback_tcp_streams(tcp_bytes, streams)?;
        tcp_streams.push(gbit_per_s(tcp_bytes, time));
        let transfer = bench_tls::loopback_migration_tls(tcp_bytes, 1)?;
        tls.push(gbit_per_s(tcp_bytes, transfer.time));
        let transfer = bench_tls::loopback_migration_tls(tcp_bytes, streams)?;
        tls_streams.push(gbit_per_s(tcp_bytes, transfer.time));
        cipher_suite = transfer.cipher_suite;
        let transfer = bench_tls::loopback_rustls(tcp_bytes, 1)?;
        rustls.push(gbit_per_s(tcp_bytes, transfer.time));
        let transfer = bench_tls::loopback_rustls(tcp_bytes, streams)?;
        rustls_streams.push(gbit_per_s(tcp_bytes, transfer.time));
    }
    let memcpy_bytes = 256 << 20;
    let memcpy: Vec<f64> = bench_limits::memcpy(memcpy_bytes, 5)
        .into_iter()
        .map(|time| gbyte_per_s(memcpy_bytes as u64, time))
        .collect();
    let summary = |samples: &[f64]| Summary::of(samples).context("no transfer samples");
    Ok(Limits {
        tcp_bytes,
        tcp_write_bytes: bench_limits::TCP_WRITE,
        tcp_gbit: summary(&tcp)?,
        streams,
        tcp_streams_gbit: summary(&tcp_streams)?,
        tls_streams_gbit: summary(&tls_streams)?,
        tls_gbit: summary(&tls)?,
        rustls_gbit: summary(&rustls)?,
        rustls_streams_gbit: summary(&rustls_streams)?,
        cipher_suite,
        memcpy_bytes,
        memcpy_gbyte: summary(&memcpy)?,
    })
}
