//! `vmm`: runs one VM (`vmm run`) or talks to a running one (`vmm ctl`).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use vmm::api::{client, protocol::Request, server};
use vmm::builder;
use vmm::config::{BootMode, VmConfig};
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
    /// Send one command to a running VM's control socket and print the JSON response.
    Ctl {
        /// The VM's control socket (its --api-sock).
        socket: PathBuf,
        /// pause, resume, status or shutdown.
        command: String,
        /// Command arguments.
        args: Vec<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The guest kernel: a bzImage or ELF vmlinux (linux), a PVH ELF (pvh), or a bench ELF.
    #[arg(long)]
    kernel: PathBuf,
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
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn run(args: RunArgs) -> ExitCode {
    let started = Instant::now();
    let cfg = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        boot: args.boot,
        mem_mib: args.mem,
        vcpus: args.vcpus,
        backing: args.mem_file.map_or(Backing::Anonymous, Backing::File),
    };
    let mut vm = match builder::build(&cfg, started, Box::new(std::io::stdout())) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("vmm: error: {}", error_chain(&e));
            return ExitCode::from(vmm::EXIT_VMM_ERROR as u8);
        }
    };
    let _api = match &args.api_sock {
        Some(path) => match server::start(path, vm.controller.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("vmm: error: {}", error_chain(&e));
                return ExitCode::from(vmm::EXIT_VMM_ERROR as u8);
            }
        },
        None => None,
    };
    if let Err(e) = vm.start() {
        eprintln!("vmm: error: {}", error_chain(&e));
        return ExitCode::from(vmm::EXIT_VMM_ERROR as u8);
    }
    match vm.controller.wait() {
        StopReason::GuestExit(code) => {
            tracing::info!(code, "guest exited");
            ExitCode::from(code)
        }
        StopReason::Shutdown => ExitCode::SUCCESS,
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

fn ctl(socket: PathBuf, command: String, args: Vec<String>) -> ExitCode {
    let req = match Request::from_words(&command, &args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmm ctl: {e}");
            return ExitCode::from(2);
        }
    };
    match client::call(&socket, &req, Duration::from_secs(30)) {
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
        Command::Ctl {
            socket,
            command,
            args,
        } => ctl(socket, command, args),
    }
}
