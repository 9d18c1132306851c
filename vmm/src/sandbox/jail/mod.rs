//! `vmm jail`: runs one VM the way Firecracker's jailer does.
//!
//! The supervising process (root, on the host) forks into a new PID namespace. The child, PID 1
//! there, joins the chosen network namespace, opens the taps and the memory file, enters new
//! mount, IPC and UTS namespaces, switches to a minimal root, sets rlimits and drops to the
//! VM's uid and gid with no capabilities and `no_new_privs`. Meanwhile the supervisor creates
//! the VM's cgroup: the two run side by side, so a start costs the longer of them, not their
//! sum. Before it drops privileges, the child waits for the supervisor's word that the cgroup
//! is there and joins it, through directories it opened before its root changed; only then
//! does it build and run the VM (whose threads add seccomp filters).
//! The supervisor waits, passes signals on, and removes the cgroup and the root's mount point
//! when the VM ends; the mounts go with the namespace. If the supervisor is killed, the child
//! dies with it (parent-death signal) and whoever reaps the supervisor calls [`cleanup`].
mod cgroup;
mod privileges;
mod root;
mod sys;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

pub use cgroup::{check_available as check_cgroups, dirs_for as cgroup_dirs, Limits};
pub use root::RootPlan;

use crate::devices::virtio::net::tap::Tap;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jail needs root (it creates namespaces, a cgroup and device nodes)")]
    NotRoot,
    #[error("jail id {0:?} must be 1 to 64 letters, digits, '-' or '_'")]
    Id(String),
    #[error("path {0} holds a NUL byte")]
    Path(PathBuf),
    #[error("cannot {what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no cgroup with a memory controller is mounted under /sys/fs/cgroup (v2, or the v1 \
         memory, pids and cpu hierarchies), and every jailed VM needs one; was /sys remounted, \
         as `ip netns exec` does?"
    )]
    NoCgroups,
    #[error("cannot set up the cgroup at {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is needed inside the jail but cannot be read")]
    Missing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open tap {0} for the jailed VM")]
    Tap(String, #[source] crate::devices::virtio::net::tap::TapError),
    #[error("cannot open the guest memory file {path}")]
    MemFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the disk image {path}")]
    Disk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("privileges are still there after dropping them (setuid(0) succeeded)")]
    StillPrivileged,
    #[error("the jail's supervisor ended before it made the VM's cgroup")]
    NoCgroupMade,
}

/// Everything the jail needs to know.
#[derive(Debug)]
pub struct JailConfig {
    /// Names the cgroup and the root's mount point.
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    /// A network namespace to join (`/var/run/netns/NAME`), else the caller's.
    pub netns: Option<PathBuf>,
    pub limits: Limits,
    pub max_open_files: u64,
    pub max_file_bytes: u64,
    pub root: RootPlan,
    /// Taps to open before privileges drop.
    pub taps: Vec<String>,
    /// The guest memory file to open before privileges drop.
    pub mem_file: Option<PathBuf>,
    /// Disk images to open before privileges drop, each with whether it is read-only.
    pub disks: Vec<(PathBuf, bool)>,
    /// Directories the jail's uid must own (the control socket's).
    pub owned_dirs: Vec<PathBuf>,
}

/// Where jail roots are mounted (in the VM's own mount namespace; the host sees an empty
/// directory while the VM runs).
pub const ROOTS: &str = "/run/laundromat/jail";

pub fn root_dir(id: &str) -> PathBuf {
    Path::new(ROOTS).join(id)
}

/// Removes what a jail leaves on the host: its cgroup and its root's mount point. Safe to
/// call after a `kill -9` of the supervisor; returns whether nothing is left.
pub fn cleanup(id: &str) -> bool {
    let _ = std::fs::remove_dir(root_dir(id));
    cgroup::remove(id) && !root_dir(id).exists()
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The child's pid, for the supervisor's signal forwarding.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn io_err(what: &str) -> JailError {
    JailError::Sys {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// Runs `vm` inside the jail described by `cfg` and returns its exit code. Must be called
/// before the process starts any thread (it forks).
pub fn run(cfg: &JailConfig, vm: impl FnOnce() -> ExitCode) -> Result<ExitCode, JailError> {
    // SAFETY: geteuid only reads.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    if !valid_id(&cfg.id) {
        return Err(JailError::Id(cfg.id.clone()));
    }
    let root = root_dir(&cfg.id);
    std::fs::create_dir_all(&root).map_err(|source| JailError::Sys {
        what: format!("create {}", root.display()),
        source,
    })?;
    for dir in &cfg.owned_dirs {
        sys::chown(dir, cfg.uid, cfg.gid)?;
    }
    // SAFETY: unshare with a flag; affects only children forked from now on.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    sys::check(rc.into(), "unshare the PID namespace")?;
    let parents = cgroup::Parents::open()?;
    let (created_rx, created_tx) = sys::pipe()?;
    // SAFETY: the caller guarantees no other thread exists, so the child inherits a
    // consistent process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io_err("fork"));
    }
    if pid == 0 {
        drop(created_tx);
        return Ok(match enter(cfg, parents, created_rx) {
            Ok(()) => vm(),
            Err(e) => {
                eprintln!("vmm jail: {}", crate::api::server::error_chain(&e));
                ExitCode::from(crate::EXIT_VMM_ERROR as u8)
            }
        });
    }
    drop(created_rx);
    CHILD.store(pid, Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls kill.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    // The child joins it by itself (see `Parents::join`).
    let made = cgroup::Cgroup::create(&cfg.id, cfg.limits, &parents);
    drop(parents);
    let group = match made {
        Ok(group) => group,
        Err(e) => {
            // SAFETY: kills our own child, which has not built the VM.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait(pid);
            // What `create` made went with it.
            let _ = std::fs::remove_dir(&root);
            return Err(e);
        }
    };
    // A failed write means the child is gone; `wait` then reports how it ended.
    let _ = std::io::Write::write_all(&mut std::fs::File::from(created_tx), &[1]);
    let status = wait(pid);
    drop(group);
    let _ = std::fs::remove_dir(&root);
    Ok(status)
}

/// In the child: blocks until the supervisor has created the cgroup (one byte), or fails if
/// the supervisor closed the pipe without (it could not make the cgroup, or died).
fn wait_until_created(created: std::os::fd::OwnedFd) -> Result<(), JailError> {
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut std::fs::File::from(created), &mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => Err(JailError::NoCgroupMade),
        Err(source) => Err(JailError::Sys {
            what: "wait for the supervisor to set up the cgroup".into(),
            source,
        }),
    }
}

/// Waits for the child and turns its end into an exit code (128 + signal if killed).
fn wait(pid: libc::pid_t) -> ExitCode {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing its status into a local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return ExitCode::from(crate::EXIT_VMM_ERROR as u8);
        }
    }
    if libc::WIFEXITED(status) {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    } else {
        ExitCode::from((128 + libc::WTERMSIG(status)) as u8)
    }
}

/// The child's side: everything between the fork and building the VM.
fn enter(
    cfg: &JailConfig,
    parents: cgroup::Parents,
    created: std::os::fd::OwnedFd,
) -> Result<(), JailError> {
    sys::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        "set the parent-death signal",
    )?;
    if let Some(path) = &cfg.netns {
        let ns = std::fs::File::open(path).map_err(|source| JailError::Netns {
            path: path.clone(),
            source,
        })?;
        // SAFETY: setns on a namespace fd we hold open.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        sys::check(
            rc.into(),
            &format!("join network namespace {}", path.display()),
        )?;
    }
    for name in &cfg.taps {
        let tap = Tap::open(name).map_err(|e| JailError::Tap(name.clone(), e))?;
        crate::sandbox::preopened::put_tap(name, tap.into_file());
    }
    if let Some(path) = &cfg.mem_file {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| JailError::MemFile {
                path: path.clone(),
                source,
            })?;
        crate::sandbox::preopened::put_file(path, file);
    }
    for (path, readonly) in &cfg.disks {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|source| JailError::Disk {
                path: path.clone(),
                source,
            })?;
        crate::sandbox::preopened::put_file(path, file);
    }
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: unshare with flags only.
    sys::check(unsafe { libc::unshare(flags) }.into(), "unshare namespaces")?;
    let host = b"laundromat-vm";
    // SAFETY: a valid buffer and its length.
    let rc = unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    sys::check(rc.into(), "set the hostname")?;
    root::enter(&root_dir(&cfg.id), &cfg.root, cfg.uid, cfg.gid)?;
    // Joining needs root; the VM allocates nothing before it has joined.
    wait_until_created(created)?;
    parents.join(&cfg.id)?;
    privileges::set_rlimit(libc::RLIMIT_NOFILE, cfg.max_open_files)?;
    privileges::set_rlimit(libc::RLIMIT_FSIZE, cfg.max_file_bytes)?;
    privileges::drop_to(cfg.uid, cfg.gid)?;
    // The kernel clears the parent-death signal when the uid changes: set it again, or a
    // `kill -9` of the supervisor would leave the VM running.
    sys::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        "set the parent-death signal again after dropping privileges",
    )?;
    // Should the supervisor die in between, no signal comes: the cgroup cleanup of whoever
    // reaps the supervisor covers that window.
    Ok(())
}
