//! boot-bench: how fast Laundromat's VMM gets a guest to its first console byte, side by side
//! with QEMU's microvm on the same PVH guest, and how much memory the VMM keeps resident besides
//! the guest's RAM. See tests/README.md.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use laundromat_tests::{
    bench_files::ScratchDir,
    bench_restore,
    machine::Machine,
    process::{command_line, find_program, BoundedChild},
    smaps::{self, MemoryUsage},
    stats::Summary,
    workspace::{Image, Workspace, BUILD_IMAGES, BUILD_VMM},
};
use serde::Serialize;

/// Guest RAM for the PVH guest (it needs 2 + wss MiB) and for the bench guest.
const PVH_MEM_MIB: u64 = 128;
const BENCH_MEM_MIB: u64 = 256;
/// The targets printed next to the figures: half QEMU's boot time, Firecracker's 5 MiB bound.
const TARGET_RATIO: f64 = 0.5;
const TARGET_OVERHEAD_MIB: f64 = 5.0;
/// The first line each guest prints.
const PVH_BANNER: &str = "pvh-dirty: up";
const BENCH_BANNER: &str = "bench: booted";
/// QEMU's microvm with everything this guest does not use turned off: option ROMs, RTC, PIT,
/// PIC, ACPI tables, the second IOAPIC and the kernel command-line additions. The ISA serial
/// port stays on: the guest prints on port 0x3f8.
const QEMU_MACHINE: &str = "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,acpi=off,\
                            ioapic2=off,auto-kernel-cmdline=off";
/// The bench guest's workloads for the memory runs. The guest ends itself after a while too, in
/// case the harness could not kill it.
const MEMORY_WORKLOADS: [(&str, &str); 2] = [
    ("idle", "workload=idle report-ms=1000 exit-after-ms=30000"),
    ("dirty wss=64", "workload=dirty wss=64 exit-after-ms=30000"),
];

#[derive(Parser)]
#[command(
    name = "boot-bench",
    about = "Time to first console byte (ours vs QEMU microvm), VMM memory overhead, snapshot \
             restore time"
)]
struct Args {
    /// Timed runs per VMM and guest, after one untimed warm-up run each.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Build the guest images and the VMM first (`bash images/build.sh`,
    /// `cargo build --release -p vmm`); without it, missing ones are an error.
    #[arg(long)]
    build: bool,
    /// The QEMU binary to compare with.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU's `-M` value, to try other machine options.
    #[arg(long, default_value = QEMU_MACHINE)]
    qemu_machine: String,
    /// The longest any child may take to print what it is waited for, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// How long a memory run lets the guest run after it booted, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    runs: u32,
    warmup_runs: u32,
    first_byte_ms: Vec<Timing>,
    /// Median of ours over median of QEMU's, pvh-dirty guest.
    pvh_ratio: f64,
    pvh_ratio_target: f64,
    memory: Vec<MemoryRun>,
    memory_overhead_target_mib: f64,
    /// How long each memory run let the guest run after its banner.
    settle_secs: f64,
    /// Snapshot cost and restore to running, by RAM size.
    restore: Vec<bench_restore::RestoreRun>,
}

#[derive(Serialize)]
struct Timing {
    vmm: &'static str,
    guest: &'static str,
    command: String,
    #[serde(flatten)]
    ms: Summary,
}

#[derive(Serialize)]
struct MemoryRun {
    workload: &'static str,
    command: String,
    guest_ram_mib: u64,
    total_rss_mib: f64,
    guest_rss_mib: f64,
    overhead_mib: f64,
    /// Overhead in the binary's and shared libraries' mapped files.
    overhead_file_mib: f64,
    /// The part of that in the `vmm` binary itself.
    overhead_binary_mib: f64,
    /// Overhead in anonymous memory (heap, stacks).
    overhead_anon_mib: f64,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain of causes on one line, without anyhow's backtrace.
            eprintln!("boot-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let workspace = Workspace::locate()?;
    if args.build {
        build(workspace.root())?;
    }
    let vmm = workspace.vmm()?;
    let (bench, pvh) = (
        workspace.image(Image::Bench)?,
        workspace.image(Image::PvhDirty)?,
    );
    let qemu = find_program(&args.qemu).with_context(|| {
        format!(
            "{} not found; install it with `apt-get install qemu-system-x86`",
            args.qemu.display()
        )
    })?;
    ensure!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: these benchmarks need KVM"
    );

    // Same guest, command line and memory for both VMMs.
    let mut pvh_pair = [
        BootRun {
            vmm: "laundromat",
            guest: "pvh-dirty",
            banner: PVH_BANNER,
            command: vmm_run(&vmm, "pvh", &pvh, PVH_MEM_MIB, "wss=1"),
        },
        BootRun {
            vmm: "qemu",
            guest: "pvh-dirty",
            banner: PVH_BANNER,
            command: qemu_run(&qemu, &args.qemu_machine, &pvh, PVH_MEM_MIB, "wss=1"),
        },
    ];
    let bench_idle = "workload=idle report-ms=1000";
    let mut bench_alone = [BootRun {
        vmm: "laundromat",
        guest: "bench",
        banner: BENCH_BANNER,
        command: vmm_run(&vmm, "bench", &bench, BENCH_MEM_MIB, bench_idle),
    }];
    let mut first_byte_ms = first_bytes(&mut pvh_pair, args.runs, timeout)?;
    first_byte_ms.extend(first_bytes(&mut bench_alone, args.runs, timeout)?);
    let pvh_ratio = first_byte_ms[0].ms.median / first_byte_ms[1].ms.median;

    let settle = Duration::from_millis(args.settle_ms);
    let memory = MEMORY_WORKLOADS
        .into_iter()
        .map(|(workload, cmdline)| {
            let mut command = vmm_run(&vmm, "bench", &bench, BENCH_MEM_MIB, cmdline);
            measure_memory(workload, &mut command, settle, timeout)
        })
        .collect::<Result<Vec<_>>>()?;

    let scratch = ScratchDir::new(&std::env::temp_dir(), "boot-bench")?;
    let restore = bench_restore::run_all(&vmm, &pvh, scratch.path(), args.runs, timeout)?;

    let report = Report {
        machine: Machine::detect(),
        runs: args.runs,
        warmup_runs: 1,
        first_byte_ms,
        pvh_ratio,
        pvh_ratio_target: TARGET_RATIO,
        memory,
        memory_overhead_target_mib: TARGET_OVERHEAD_MIB,
        settle_secs: settle.as_secs_f64(),
        restore,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        bench_restore::print(&report.restore);
    }
    Ok(())
}

/// Runs the two build commands from the workspace root, their output on our stderr so that
/// `--json` output stays clean.
fn build(root: &Path) -> Result<()> {
    for command_text in [BUILD_IMAGES, BUILD_VMM] {
        eprintln!("boot-bench: {command_text}");
        let mut words = command_text.split_whitespace();
        let program = words.next().context("empty build command")?;
        let status = Command::new(program)
            .args(words)
            .current_dir(root)
            .stdout(Stdio::from(io::stderr()))
            .status()
            .with_context(|| format!("cannot run `{command_text}`"))?;
        ensure!(status.success(), "`{command_text}` failed ({status})");
    }
    Ok(())
}

/// `vmm run` of one guest, with its logs quieted to warnings.
fn vmm_run(vmm: &Path, boot: &str, kernel: &Path, mem_mib: u64, cmdline: &str) -> Command {
    let mut command = Command::new(vmm);
    command
        .env("VMM_LOG", "warn")
        .args(["run", "--boot", boot, "--kernel"])
        .arg(kernel);
    command.args(["--mem", &mem_mib.to_string(), "--cmdline", cmdline]);
    command
}

/// QEMU's microvm booting a PVH kernel, with no devices but the serial port on our stdio.
fn qemu_run(qemu: &Path, machine: &str, kernel: &Path, mem_mib: u64, cmdline: &str) -> Command {
    let mut command = Command::new(qemu);
    command.args(["-M", machine, "-accel", "kvm", "-m", &mem_mib.to_string()]);
    command
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", cmdline]);
    command.args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ]);
    command
}

/// One VMM booting one guest, for the time to the first console byte.
struct BootRun {
    vmm: &'static str,
    guest: &'static str,
    /// What the guest prints first, to check that the byte timed is the guest's.
    banner: &'static str,
    command: Command,
}

/// Times each command from spawn to first console byte, `runs` times after a warm-up, taking
/// them in turn (A B A B ...) so that machine noise hits them alike.
fn first_bytes(boots: &mut [BootRun], runs: u32, timeout: Duration) -> Result<Vec<Timing>> {
    let mut samples = vec![Vec::new(); boots.len()];
    for run in 0..=runs {
        let label = if run == 0 {
            "warm-up".to_owned()
        } else {
            format!("run {run}/{runs}")
        };
        for (boot, samples) in boots.iter_mut().zip(&mut samples) {
            let name = format!("{} ({})", boot.vmm, boot.guest);
            eprintln!("boot-bench: first console byte, {name}, {label}");
            let mut child = BoundedChild::spawn(&name, &mut boot.command)?;
            let elapsed = child.first_byte(timeout)?;
            child.wait_for(boot.banner, timeout)?;
            child
                .kill()
                .with_context(|| format!("cannot stop {name}"))?;
            if run > 0 {
                samples.push(elapsed.as_secs_f64() * 1e3);
            }
        }
    }
    boots
        .iter()
        .zip(samples)
        .map(|(boot, samples)| {
            Ok(Timing {
                vmm: boot.vmm,
                guest: boot.guest,
                command: command_line(&boot.command),
                ms: Summary::of(&samples).context("no samples")?,
            })
        })
        .collect()
}

/// Boots the bench guest, lets it run for `settle`, and splits the VMM's resident memory into
/// guest RAM and overhead.
fn measure_memory(
    workload: &'static str,
    command: &mut Command,
    settle: Duration,
    timeout: Duration,
) -> Result<MemoryRun> {
    eprintln!("boot-bench: memory, bench guest, {workload}");
    let mut child = BoundedChild::spawn(format!("ours (bench, {workload})"), command)?;
    child.wait_for(BENCH_BANNER, timeout)?;
    thread::sleep(settle);
    if !child.is_running()? {
        bail!(
            "the VMM exited before its memory was read; console:\n{}",
            child.console()
        );
    }
    let mappings = smaps::read(child.pid())?;
    let usage = MemoryUsage::split(&mappings, BENCH_MEM_MIB << 20)?;
    // The binary as the kernel names it in smaps.
    let binary = fs::read_link(format!("/proc/{}/exe", child.pid()))
        .context("cannot read the VMM's /proc/PID/exe")?;
    let binary_kib = smaps::file_rss_kib(&mappings, &binary.to_string_lossy());
    child.kill().context("cannot stop the VMM")?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(MemoryRun {
        workload,
        command: command_line(command),
        guest_ram_mib: BENCH_MEM_MIB,
        total_rss_mib: mib(usage.total_rss_kib),
        guest_rss_mib: mib(usage.guest_rss_kib),
        overhead_mib: mib(usage.overhead_kib()),
        overhead_file_mib: mib(usage.file_overhead_kib),
        overhead_binary_mib: mib(binary_kib),
        overhead_anon_mib: mib(usage.anon_overhead_kib),
    })
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn print_table(report: &Report) {
    let machine = &report.machine;
    println!("Laundromat boot benchmark");
    println!(
        "machine: {} CPUs, {}, Linux {}",
        machine.nproc, machine.cpu_model, machine.kernel
    );
    println!(
        "runs:    {} timed per VMM and guest, after {} warm-up; pvh-dirty runs interleaved ours/QEMU",
        report.runs, report.warmup_runs
    );
    println!();
    println!("Time to first console byte (ms)     min   median      p90      max");
    for timing in &report.first_byte_ms {
        let Summary {
            min,
            median,
            p90,
            max,
            ..
        } = timing.ms;
        let label = format!("{}, {}", timing.guest, timing.vmm);
        println!("  {label:<30} {min:>8.2} {median:>8.2} {p90:>8.2} {max:>8.2}");
    }
    let met = report.pvh_ratio <= report.pvh_ratio_target;
    println!(
        "  pvh-dirty ratio of medians, ours / QEMU: {:.3}x   (target <= {}x: {})",
        report.pvh_ratio,
        report.pvh_ratio_target,
        verdict(met)
    );
    println!();
    println!(
        "VMM memory, bench guest, --mem {BENCH_MEM_MIB}, MiB (1 run each, read {:.1} s after boot)",
        report.settle_secs
    );
    println!(
        "  workload      total RSS  guest RSS  overhead = binary + libs + anon   target <= {} MiB",
        report.memory_overhead_target_mib
    );
    for run in &report.memory {
        let libs = run.overhead_file_mib - run.overhead_binary_mib;
        let met = run.overhead_mib <= report.memory_overhead_target_mib;
        println!(
            "  {:<13} {:>9.2} {:>10.2} {:>9.2} = {:>6.2} + {:>4.2} + {:>4.2}   {}",
            run.workload,
            run.total_rss_mib,
            run.guest_rss_mib,
            run.overhead_mib,
            run.overhead_binary_mib,
            libs,
            run.overhead_anon_mib,
            verdict(met),
        );
    }
    println!(
        "  overhead = total RSS - RSS of the guest-RAM mapping. It counts the pages of the vmm"
    );
    println!("  binary (text, data) and of its shared libraries (libc, ld.so, ...) that are");
    println!(
        "  resident, in full even where shared with other processes; anon is heap, stacks and"
    );
    println!(
        "  the vCPU run pages. KVM's kernel-side memory (page tables, vCPU state) is not in RSS."
    );
    println!();
    println!("Commands (the first two are the side-by-side pair):");
    for timing in &report.first_byte_ms {
        println!("  {}", timing.command);
    }
    for run in &report.memory {
        println!("  {}", run.command);
    }
}
