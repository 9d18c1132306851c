//! One cgroup per jailed VM, with a memory ceiling, a CPU weight and a process limit.
//!
//! cgroup v2 when its memory controller is available (`/sys/fs/cgroup/laundromat/<id>`),
//! otherwise the v1 `memory`, `pids` and `cpu` hierarchies (`/sys/fs/cgroup/<ctl>/laundromat/
//! <id>`), as on hosts that still mount v1 for those controllers.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::JailError;

const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "laundromat";

/// The limits one VM gets.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Relative CPU share, 1 to 10000 (v2 `cpu.weight`; v1 `cpu.shares` scaled to match).
    pub cpu_weight: u32,
    pub pids: u32,
}

/// The VM's cgroup directories (one on v2, one per controller on v1).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

fn v2_has_memory() -> bool {
    std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
}

/// The v1 hierarchies a jail uses when v2 has no memory controller.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Whether this host has the cgroups a jail needs: v2 with its memory controller, or the v1
/// `memory`, `pids` and `cpu` hierarchies, mounted under `/sys/fs/cgroup`.
pub fn check_available() -> Result<(), JailError> {
    if v2_has_memory() || v1_mounted() {
        Ok(())
    } else {
        Err(JailError::NoCgroups)
    }
}

fn v1_mounted() -> bool {
    V1_CONTROLLERS
        .iter()
        .all(|c| Path::new(ROOT).join(c).join("cgroup.procs").exists())
}

/// The directories `id`'s cgroup uses on this host.
pub fn dirs_for(id: &str) -> Vec<PathBuf> {
    dirs_in(id, !v2_has_memory())
}

/// The `laundromat` directories every VM's cgroup sits in: one per v1 hierarchy, or one on v2.
fn parent_dirs(v1: bool) -> Vec<PathBuf> {
    if v1 {
        V1_CONTROLLERS
            .iter()
            .map(|c| Path::new(ROOT).join(c).join(PARENT))
            .collect()
    } else {
        vec![Path::new(ROOT).join(PARENT)]
    }
}

fn dirs_in(id: &str, v1: bool) -> Vec<PathBuf> {
    parent_dirs(v1).into_iter().map(|p| p.join(id)).collect()
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    std::fs::write(path, value).map_err(|source| JailError::Cgroup {
        path: path.into(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(path).map_err(|source| JailError::Cgroup {
        path: path.into(),
        source,
    })
}

impl Cgroup {
    /// Creates `id`'s cgroup with `limits` under `parents`; a leftover of the same name is
    /// removed first.
    pub fn create(id: &str, limits: Limits, parents: &Parents) -> Result<Self, JailError> {
        let dirs: Vec<PathBuf> = parents.dirs.iter().map(|(p, _)| p.join(id)).collect();
        remove_dirs(&dirs);
        // From here on, dropping `cg` removes whatever was made, should a step fail.
        let cg = Self { dirs };
        if !parents.v1 {
            // Delegate the controllers down to the VM's level (already-enabled is fine).
            for dir in [Path::new(ROOT), &parents.dirs[0].0] {
                let _ = write(&dir.join("cgroup.subtree_control"), "+memory +pids +cpu");
            }
            let dir = &cg.dirs[0];
            mkdir(dir)?;
            write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            let _ = write(&dir.join("memory.swap.max"), "0");
            write(&dir.join("pids.max"), &limits.pids.to_string())?;
            write(&dir.join("cpu.weight"), &limits.cpu_weight.to_string())?;
        } else {
            for dir in &cg.dirs {
                mkdir(dir)?;
            }
            let [mem, pids, cpu] = [&cg.dirs[0], &cg.dirs[1], &cg.dirs[2]];
            write(
                &mem.join("memory.limit_in_bytes"),
                &limits.memory_bytes.to_string(),
            )?;
            write(&pids.join("pids.max"), &limits.pids.to_string())?;
            // v1 shares default to 1024 where v2 weights default to 100.
            let shares = u64::from(limits.cpu_weight) * 1024 / 100;
            write(&cpu.join("cpu.shares"), &shares.max(2).to_string())?;
        }
        Ok(cg)
    }
}

/// The `laundromat` directories above every VM's cgroup (one per v1 hierarchy, or one on v2),
/// opened before the jail's root changes, so the jail can join its cgroup from inside.
#[derive(Debug)]
pub struct Parents {
    dirs: Vec<(PathBuf, std::fs::File)>,
    v1: bool,
}

impl Parents {
    pub fn open() -> Result<Self, JailError> {
        let v1 = !v2_has_memory();
        if v1 && !v1_mounted() {
            return Err(JailError::NoCgroups);
        }
        let dirs = parent_dirs(v1)
            .into_iter()
            .map(|dir| {
                mkdir(&dir)?;
                let file = std::fs::File::open(&dir).map_err(|source| JailError::Cgroup {
                    path: dir.clone(),
                    source,
                })?;
                Ok((dir, file))
            })
            .collect::<Result<_, JailError>>()?;
        Ok(Self { dirs, v1 })
    }

    /// Moves the calling process, single-threaded, into `id`'s cgroup (made since `open`).
    pub fn join(self, id: &str) -> Result<(), JailError> {
        // Writing `cgroup.procs` takes the kernel's global threadgroup lock for writing, which
        // waits for an RCU grace period: 15-30 ms per start on this host, most of what jailing
        // cost. On v1, a thread moving itself through `tasks` skips that lock. The jail is
        // single-threaded until it builds the VM, so that moves the whole process, and its
        // later threads are born inside. (v2 has no such file outside threaded cgroups.)
        let file = if self.v1 { "tasks" } else { "cgroup.procs" };
        let name =
            std::ffi::CString::new(format!("{id}/{file}")).map_err(|_| JailError::Id(id.into()))?;
        for (dir, parent) in &self.dirs {
            let path = dir.join(id).join(file);
            // SAFETY: a directory fd we hold and a NUL-terminated relative path.
            let fd = unsafe {
                libc::openat(
                    std::os::fd::AsRawFd::as_raw_fd(parent),
                    name.as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(JailError::Cgroup {
                    path,
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: fd was just opened and is owned by nobody else.
            let mut tasks = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            std::io::Write::write_all(&mut tasks, b"0")
                .map_err(|source| JailError::Cgroup { path, source })?;
        }
        Ok(())
    }
}

/// How long removal retries while the VM's last tasks finish dying.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes `id`'s cgroup directories; returns whether none is left. Processes still inside
/// (a killed jail's VM) are killed first, since a cgroup with members cannot be removed.
pub fn remove(id: &str) -> bool {
    remove_dirs(&dirs_for(id))
}

fn remove_dirs(dirs: &[PathBuf]) -> bool {
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    loop {
        for dir in dirs.iter().filter(|d| d.exists()) {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: sends a signal; no memory is involved.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        if dirs.iter().all(|d| !d.exists()) {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(?dirs, "cannot remove the VM's cgroup");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_dirs(&self.dirs);
    }
}
