//! `vmm`: runs one VM (`vmm run`) or talks to a running one (`vmm ctl`).
mod jail_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use jail_cmd::{jail, JailArgs};
use vmm::api::server::error_chain;
use vmm::api::{client, protocol::Request, server};
use vmm::builder::{self, BuiltVm};
use vmm::config::{BootMode, VmConfig};
use vmm::devices::virtio::block::DiskConfig;
use vmm::devices::virtio::net::{announce, NetConfig};
use vmm::migration;
use vmm::persist::snapshot;
use vmm::sandbox::seccomp;
use vmm::vstate::memory::Backing;
use vmm::vstate::run_control::StopReason;

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "Laundromat's minimal KVM virtual machine monitor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM; the guest console goes to stdout, a bench guest's exit code is ours.
    Run(RunArgs),
    /// Boot a VM like `run`, inside a jail: its own PID, mount, IPC and UTS namespaces, a
    /// minimal root, an unprivileged uid and gid, no capabilities, rlimits and a cgroup.
    /// Needs root. Paths keep their names inside the jail.
    Jail(JailArgs),
    /// Create a host identity (an ed25519 key pair) in FILE, readable only by its owner, and
    /// print its public key in hex: the key other hosts pass to --peer. FILE is PKCS#8 PEM
    /// and is never overwritten.
    Keygen {
        /// Where to write the new identity.
        file: PathBuf,
    },
    /// Send one command to a running VM's control socket and print the JSON response.
    Ctl {
        /// The VM's control socket (its --api-sock).
        socket: PathBuf,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Pause every vCPU; returns once all have stopped.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// State, vCPUs, memory, uptime and exits by reason.
    Status,
    /// Stop the VM; the vmm process exits.
    Shutdown,
    /// Let a migration started with --hold-before-commit switch over.
    Commit,
    /// Call a migration held before commit off: the VM resumes here, unchanged, and the
    /// destination never runs it.
    Cancel {
        /// Why, for the migration's statistics and the logs.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Live-migrate the VM to a `vmm run --incoming` on another host; prints one JSON line per
    /// pre-copy round, then the final statistics.
    Migrate {
        /// The destination, tcp://HOST:PORT.
        url: String,
        /// This host's identity file (`vmm keygen`), read by the migrating VMM.
        #[arg(long)]
        identity: PathBuf,
        /// The destination host's public key (hex): the only host this VM may move to.
        #[arg(long)]
        peer: String,
        /// Switch over once the rest fits in this much downtime at the measured bandwidth.
        #[arg(long, default_value_t = 300)]
        downtime_ms: u64,
        /// Most pre-copy rounds after the first full pass.
        #[arg(long, default_value_t = 30)]
        max_rounds: u32,
        /// Time limit for the whole migration.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// At the time limit: cancel (the VM stays here) or force the switchover.
        #[arg(long, value_enum, default_value_t = OnTimeoutArg::Cancel)]
        on_timeout: OnTimeoutArg,
        /// Throttle vCPUs while the guest dirties memory faster than the link moves it.
        #[arg(long)]
        auto_converge: bool,
        /// Encrypted connections to spread memory over (1 to 16); state and control use the
        /// first.
        #[arg(long, default_value_t = 1)]
        connections: u32,
        /// Page compression (only none is implemented).
        #[arg(long, value_enum, default_value_t = CompressArg::None)]
        compress: CompressArg,
        /// Once the destination is ready, hold the switchover (the VM paused) for up to
        /// SECONDS (1 to 30), printing a ready_to_commit event, until `vmm ctl SOCKET commit`
        /// or `cancel`; no answer cancels and the VM resumes here.
        #[arg(long, value_name = "SECONDS")]
        hold_before_commit: Option<u64>,
    },
    /// Pause, write state and memory into DIR, then resume (or stop with --stop).
    Snapshot {
        dir: PathBuf,
        /// Stop the VM after a successful snapshot instead of resuming it.
        #[arg(long)]
        stop: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressArg {
    None,
    Zstd,
    Lz4,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnTimeoutArg {
    Cancel,
    Force,
}

impl CtlCommand {
    fn request(self) -> Request {
        match self {
            CtlCommand::Migrate {
                url,
                identity,
                peer,
                downtime_ms,
                max_rounds,
                timeout_s,
                on_timeout,
                auto_converge,
                connections,
                compress,
                hold_before_commit,
            } => Request::Migrate(migrator::MigrateParams {
                url,
                // The VMM may run in another directory: send an absolute path.
                identity: std::path::absolute(&identity).unwrap_or(identity),
                peer,
                downtime_ms,
                max_rounds,
                timeout_s,
                on_timeout: match on_timeout {
                    OnTimeoutArg::Cancel => migrator::OnTimeout::Cancel,
                    OnTimeoutArg::Force => migrator::OnTimeout::Force,
                },
                auto_converge,
                connections,
                compress: match compress {
                    CompressArg::None => migrator::Compression::None,
                    CompressArg::Zstd => migrator::Compression::Zstd,
                    CompressArg::Lz4 => migrator::Compression::Lz4,
                },
                hold_before_commit_s: hold_before_commit,
            }),
            CtlCommand::Pause => Request::Pause {},
            CtlCommand::Resume => Request::Resume {},
            CtlCommand::Status => Request::Status {},
            CtlCommand::Shutdown => Request::Shutdown {},
            CtlCommand::Commit => Request::Commit {},
            CtlCommand::Cancel { reason } => Request::Cancel { reason },
            CtlCommand::Snapshot { dir, stop } => {
                // The VMM may run in another directory: send an absolute path.
                let dir = std::path::absolute(&dir).unwrap_or(dir);
                Request::Snapshot { dir, stop }
            }
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// The guest kernel: a bzImage or ELF vmlinux (linux), a PVH ELF (pvh), or a bench ELF.
    #[arg(long, required_unless_present_any = ["restore", "incoming"])]
    kernel: Option<PathBuf>,
    /// An initial ramdisk (linux and pvh only).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The guest command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// How to start the guest.
    #[arg(long, value_enum, default_value_t = BootMode::Linux)]
    boot: BootMode,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8))]
    vcpus: u8,
    /// Back guest memory with this file, mapped shared (created or grown as needed).
    #[arg(long)]
    mem_file: Option<PathBuf>,
    /// Serve the control socket at this path.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Leave the VM paused once built; `vmm ctl SOCKET resume` starts it.
    #[arg(long)]
    paused: bool,
    /// Continue the VM saved in this snapshot directory instead of booting a kernel.
    #[arg(long, conflicts_with_all = ["kernel", "initrd", "incoming"])]
    restore: Option<PathBuf>,
    /// Receive a live migration on tcp://ADDR:PORT instead of booting a kernel; the VM runs
    /// here once the source commits. Only the source holding --peer's key gets in; other
    /// connections are refused and logged, and the wait goes on.
    #[arg(
        long,
        conflicts_with_all = ["kernel", "initrd"],
        requires_all = ["identity", "peer"]
    )]
    incoming: Option<String>,
    /// This host's identity file (`vmm keygen`), for --incoming.
    #[arg(long, requires = "incoming")]
    identity: Option<PathBuf>,
    /// The source host's public key (hex), for --incoming: the only host accepted.
    #[arg(long, requires = "incoming")]
    peer: Option<String>,
    /// How long --incoming waits for its source to connect and authenticate.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    incoming_timeout: u64,
    /// A virtio-net device on the host tap NAME (repeatable, one device each). MAC is the
    /// guest's address (random if omitted). With --incoming or --restore, give one per saved
    /// device; the saved MAC is kept and, if MAC is given, must match.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<NetConfig>,
    /// A virtio-blk device backed by the raw image FILE (repeatable, one device each, in the
    /// MMIO windows after the network devices'; Linux names them /dev/vda, /dev/vdb, ...).
    /// readonly=on opens the file read-only and tells the guest. The image does not migrate:
    /// with --incoming or --restore, give one per saved disk, naming the same storage.
    #[arg(long = "disk", value_name = "path=FILE[,readonly=on|off]")]
    disk: Vec<DiskConfig>,
    /// Per-thread seccomp filters. `off` is for debugging only: a guest that breaks the
    /// device emulation could then make any system call.
    #[arg(long, value_enum, default_value_t = SeccompArg::On)]
    seccomp: SeccompArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SeccompArg {
    On,
    Off,
}

/// Prints a fatal error and returns the VMM-error exit code.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("vmm: error: {}", error_chain(e));
    ExitCode::from(vmm::EXIT_VMM_ERROR as u8)
}

fn backing(args: &RunArgs) -> Backing {
    args.mem_file
        .clone()
        .map_or(Backing::Anonymous, Backing::File)
}

fn boot(args: &RunArgs, started: Instant) -> Result<BuiltVm, Box<dyn std::error::Error>> {
    let console = Box::new(std::io::stdout());
    if let Some(dir) = &args.restore {
        let state = snapshot::read_state(dir)?;
        check_macs(&state, &args.net)?;
        let mem = snapshot::restore_memory(dir, &backing(args), state.machine.mem_mib << 20)?;
        return Ok(builder::build_restored(
            &state,
            Some(mem),
            &backing(args),
            &args.net,
            &args.disk,
            started,
            console,
        )?);
    }
    let cfg = VmConfig {
        kernel: args.kernel.clone().unwrap_or_default(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        boot: args.boot,
        mem_mib: args.mem,
        vcpus: args.vcpus,
        backing: backing(args),
        net: args.net.clone(),
        disks: args.disk.clone(),
    };
    Ok(builder::build(&cfg, started, console)?)
}

/// Runs a built VM until it stops and turns the reason into our exit code.
fn run_to_end(mut vm: BuiltVm, api_sock: Option<&PathBuf>, paused: bool) -> ExitCode {
    let _api = match api_sock {
        Some(path) => match server::start(path, vm.controller.clone()) {
            Ok(s) => Some(s),
            Err(e) => return fail(&e),
        },
        None => None,
    };
    if let Err(e) = vm.start(paused) {
        return fail(&e);
    }
    seccomp::install_or_exit(seccomp::ThreadKind::Control);
    finish(&vm)
}

/// Waits for the VM to stop and turns the reason into our exit code.
fn finish(vm: &BuiltVm) -> ExitCode {
    match vm.controller.wait() {
        StopReason::GuestExit(code) => {
            tracing::info!(code, "guest exited");
            ExitCode::from(code)
        }
        StopReason::Shutdown => ExitCode::SUCCESS,
        StopReason::Migrated => {
            tracing::info!("the VM migrated away; exiting");
            ExitCode::SUCCESS
        }
        StopReason::Crash(report) => {
            eprintln!("vmm: guest crashed: {report}");
            ExitCode::from(vmm::EXIT_GUEST_CRASH as u8)
        }
        StopReason::VmmError(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(vmm::EXIT_VMM_ERROR as u8)
        }
    }
}

/// Receives a VM, waits for the source's commit, then runs it like any other.
fn incoming(args: &RunArgs, url: &str, started: Instant) -> ExitCode {
    let auth = migration::IncomingAuth {
        identity: args.identity.as_deref().unwrap_or(std::path::Path::new("")),
        peer: args.peer.as_deref().unwrap_or_default(),
        timeout: Duration::from_secs(args.incoming_timeout),
    };
    let listener = match migration::listen(url) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    // The control socket answers from now on (`status` says `incoming` until the VM runs),
    // so whoever started this vmm knows the migration port is bound.
    let (_api, served) = match &args.api_sock {
        Some(path) => match server::start_incoming(path) {
            Ok((api, served)) => (Some(api), Some(served)),
            Err(e) => return fail(&e),
        },
        None => (None, None),
    };
    let console = Box::new(std::io::stdout());
    let received = migration::receive(
        &listener,
        &auth,
        &backing(args),
        &args.net,
        &args.disk,
        started,
        console,
    );
    drop(listener);
    let (mut vm, mut conn) = match received {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if let Err(e) = check_macs_of(&vm, &args.net) {
        conn.abort(&e);
        eprintln!("vmm: error: {e}");
        return ExitCode::from(vmm::EXIT_VMM_ERROR as u8);
    }
    if let Some(served) = &served {
        served.set_incoming_phase("ready");
    }
    if let Err(e) = conn.ready_and_wait_for_commit() {
        // No commit: the source keeps (or takes back) the VM; this copy never runs.
        return fail(&e);
    }
    // Committed: this copy runs. Bridges still send the guest's frames to the old host, where
    // they are lost: tell them where it is now, before the vCPUs start (frames for the guest
    // wait in its tap until then), and again a few times afterwards.
    for net in vm.controller.devices().net() {
        announce::first(net);
    }
    if let Err(e) = vm.start(false) {
        return fail(&e);
    }
    seccomp::install_or_exit(seccomp::ThreadKind::Control);
    if let Some(served) = &served {
        served.attach(vm.controller.clone());
    }
    conn.running();
    for net in vm.controller.devices().net() {
        announce::repeat(net.clone());
    }
    tracing::info!(
        ms = started.elapsed().as_secs_f64() * 1e3,
        pages = conn.received.pages,
        "incoming migration complete; the VM runs here"
    );
    drop(conn);
    finish(&vm)
}

/// A MAC given with --net for a restored device must be the one it was saved with.
fn check_macs(
    state: &vmm::persist::VmState,
    net: &[NetConfig],
) -> Result<(), Box<dyn std::error::Error>> {
    let saved = state.net.iter().map(|n| n.mac);
    check_mac_list(saved, net).map_err(Into::into)
}

fn check_macs_of(vm: &BuiltVm, net: &[NetConfig]) -> Result<(), String> {
    let saved = vm.controller.devices().net().iter().map(|n| n.mac());
    check_mac_list(saved, net)
}

fn check_mac_list(
    saved: impl Iterator<Item = vmm::devices::virtio::net::Mac>,
    net: &[NetConfig],
) -> Result<(), String> {
    for (i, (mac, cfg)) in saved.zip(net).enumerate() {
        if let Some(given) = cfg.mac.filter(|&m| m != mac) {
            return Err(format!(
                "network device {i} was saved with MAC {mac}, but --net gives {given}"
            ));
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> ExitCode {
    let started = Instant::now();
    if args.seccomp == SeccompArg::Off {
        tracing::warn!(
            "SECCOMP IS OFF (--seccomp off): for debugging only; a guest that escapes into this \
             process may make any system call"
        );
    } else if let Err(e) = seccomp::enable() {
        return fail(&e);
    }
    // Building reads what others supplied (the tenant's kernel, a snapshot, the incoming
    // stream): filtered from the start, never as the whole process.
    seccomp::install_or_exit(seccomp::ThreadKind::Build);
    if let Some(url) = &args.incoming {
        return incoming(&args, url, started);
    }
    match boot(&args, started) {
        Ok(vm) => run_to_end(vm, args.api_sock.as_ref(), args.paused),
        Err(e) => fail(e.as_ref()),
    }
}

fn ctl(socket: PathBuf, command: CtlCommand) -> ExitCode {
    let req = command.request();
    let answer = match &req {
        Request::Migrate(params) => {
            let limit = Duration::from_secs(params.timeout_s.saturating_add(120));
            client::call_streaming(&socket, &req, limit, &mut |event| println!("{event}"))
        }
        _ => client::call(&socket, &req, Duration::from_secs(600)),
    };
    match answer {
        Ok(answer) => {
            println!("{answer}");
            if answer["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vmm ctl: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn keygen(file: &std::path::Path) -> ExitCode {
    let identity = migrator::identity::Identity::generate();
    match identity.save(file) {
        Ok(()) => {
            println!("{}", identity.public());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmm keygen: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Ctl { socket, command } => ctl(socket, command),
        Command::Keygen { file } => keygen(&file),
        Command::Jail(args) => jail(args),
    }
}
