//! `vmm jail`: the flags of `vmm run` plus the jail's, turned into a jail plan (what to bind,
//! copy and open before privileges drop) and a `vmm run` inside it.
use std::path::PathBuf;
use std::process::ExitCode;

use super::{fail, run, RunArgs};

#[derive(clap::Args)]
pub(crate) struct JailArgs {
    /// Names the VM's cgroup (laundromat/ID) and its root; letters, digits, '-' and '_'.
    #[arg(long)]
    id: String,
    /// The unprivileged uid the VM runs as (one per VM).
    #[arg(long)]
    uid: u32,
    /// The unprivileged gid the VM runs as.
    #[arg(long)]
    gid: u32,
    /// Join this network namespace (e.g. /var/run/netns/NAME) before opening taps.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Memory the cgroup allows beyond guest RAM, in MiB (VMM heap, stacks, buffers).
    #[arg(long, default_value_t = 96)]
    mem_overhead_mib: u64,
    /// Relative CPU weight (1 to 10000; 100 is the default share).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
    cpu_weight: u32,
    /// Most tasks (threads) in the VM's cgroup.
    #[arg(long, default_value_t = 128)]
    pids_max: u32,
    /// Most open files (RLIMIT_NOFILE).
    #[arg(long, default_value_t = 1024)]
    max_open_files: u64,
    /// Largest file the VM may write, in MiB (RLIMIT_FSIZE); snapshots need guest RAM.
    #[arg(long, default_value_t = 65536)]
    max_file_mib: u64,
    /// Also bind this file or directory read-only into the jail (repeatable).
    #[arg(long = "ro")]
    read_only: Vec<PathBuf>,
    /// Also bind this directory read-write into the jail, e.g. a snapshot target; the VM's
    /// uid must be able to write it (repeatable).
    #[arg(long = "rw")]
    read_write: Vec<PathBuf>,
    /// Copy this small file into the jail, readable only by the VM's uid, e.g. a migration
    /// identity (repeatable; --identity is copied without asking).
    #[arg(long = "copy")]
    copies: Vec<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

pub(crate) fn jail(args: JailArgs) -> ExitCode {
    use vmm::sandbox::jail;
    let run_args = args.run;
    // Canonical: the jail binds each file at its real path.
    let abs = |p: &PathBuf| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.clone())
    };
    let mut root = jail::RootPlan::default();
    root.read_only.extend(
        run_args
            .kernel
            .iter()
            .chain(&run_args.initrd)
            .chain(&run_args.restore)
            .map(abs),
    );
    root.read_only.extend(args.read_only.iter().map(abs));
    root.read_write.extend(args.read_write.iter().map(abs));
    root.copies
        .extend(args.copies.iter().chain(&run_args.identity).map(abs));
    let sock_dir = run_args
        .api_sock
        .as_ref()
        .map(abs)
        .and_then(|s| s.parent().map(PathBuf::from));
    root.read_write.extend(sock_dir.clone());
    let cfg = jail::JailConfig {
        id: args.id,
        uid: args.uid,
        gid: args.gid,
        netns: args.netns,
        limits: jail::Limits {
            memory_bytes: (run_args.mem + args.mem_overhead_mib) << 20,
            cpu_weight: args.cpu_weight,
            pids: args.pids_max,
        },
        max_open_files: args.max_open_files,
        max_file_bytes: args.max_file_mib << 20,
        root,
        taps: run_args.net.iter().map(|n| n.tap.clone()).collect(),
        mem_file: run_args.mem_file.clone(),
        disks: run_args
            .disk
            .iter()
            .map(|d| (abs(&d.path), d.readonly))
            .collect(),
        owned_dirs: sock_dir.into_iter().collect(),
    };
    // Relative paths would resolve against the jail's root: make every path absolute.
    let mut run_args = run_args;
    for p in [
        &mut run_args.kernel,
        &mut run_args.initrd,
        &mut run_args.restore,
        &mut run_args.identity,
        &mut run_args.api_sock,
    ]
    .into_iter()
    .flatten()
    {
        *p = abs(p);
    }
    for disk in &mut run_args.disk {
        disk.path = abs(&disk.path);
    }
    match jail::run(&cfg, || run(run_args)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}
