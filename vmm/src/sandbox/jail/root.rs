//! The jail's filesystem: a fresh tmpfs root holding only what the VM needs, each host path
//! at the same path inside (so no argument needs rewriting), entered with `pivot_root`.
use std::path::{Path, PathBuf};

use super::sys::{self, check, cstr};
use super::JailError;

/// What goes into the root.
#[derive(Debug, Default)]
pub struct RootPlan {
    /// Files or directories bound read-only (kernel, initrd, snapshot to restore).
    pub read_only: Vec<PathBuf>,
    /// Directories bound read-write (the control socket's, snapshot targets).
    pub read_write: Vec<PathBuf>,
    /// Small files copied in, readable only by the jail's uid (host identities).
    pub copies: Vec<PathBuf>,
}

fn inside(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Sys { what, source }
}

/// Creates an empty file or directory at `at` to bind `host` over.
fn mount_point(host: &Path, at: &Path) -> Result<(), JailError> {
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("mkdir {}", parent.display())))?;
    }
    if host.is_dir() {
        std::fs::create_dir_all(at).map_err(io(format!("mkdir {}", at.display())))?;
    } else {
        std::fs::write(at, b"").map_err(io(format!("create {}", at.display())))?;
    }
    Ok(())
}

fn bind(host: &Path, root: &Path, read_only: bool) -> Result<(), JailError> {
    let host = std::fs::canonicalize(host).map_err(|source| JailError::Missing {
        path: host.into(),
        source,
    })?;
    let at = inside(root, &host);
    mount_point(&host, &at)?;
    sys::mount(Some(&host), &at, None, libc::MS_BIND | libc::MS_REC, None)?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    sys::mount(None, &at, None, flags, None)
}

/// Builds the root at `root` (an empty directory) in the current, private mount namespace,
/// and switches to it. Device nodes and copies belong to `uid`/`gid`.
pub fn enter(root: &Path, plan: &RootPlan, uid: u32, gid: u32) -> Result<(), JailError> {
    // Nothing we mount from here on may propagate back to the host.
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    sys::mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID,
        Some("mode=0755,size=16m"),
    )?;
    for path in &plan.read_only {
        bind(path, root, true)?;
    }
    for path in &plan.read_write {
        bind(path, root, false)?;
    }
    for path in &plan.copies {
        let at = inside(root, path);
        mount_point(Path::new("/nonexistent-file"), &at)?;
        std::fs::copy(path, &at).map_err(|source| JailError::Missing {
            path: path.clone(),
            source,
        })?;
        sys::chown(&at, uid, gid)?;
        std::fs::set_permissions(&at, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .map_err(io(format!("chmod {}", at.display())))?;
    }
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).map_err(io("mkdir /dev".into()))?;
    // Our own node rather than the host's: owned by the jail's uid, nothing else in /dev.
    sys::mknod_char(&dev.join("kvm"), 10, 232, uid, gid)?;
    let old = root.join(".old-root");
    std::fs::create_dir_all(&old).map_err(io("mkdir .old-root".into()))?;
    let (new_c, old_c) = (cstr(root)?, cstr(&old)?);
    // SAFETY: two valid path strings; pivot_root has no libc wrapper.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_c.as_ptr(), old_c.as_ptr()) };
    check(rc, "pivot_root")?;
    std::env::set_current_dir("/").map_err(io("chdir /".into()))?;
    let old_in = cstr(Path::new("/.old-root"))?;
    // SAFETY: a valid path string; detaches the whole host tree from this namespace.
    let rc = unsafe { libc::umount2(old_in.as_ptr(), libc::MNT_DETACH) };
    check(rc.into(), "unmount the old root")?;
    std::fs::remove_dir("/.old-root").map_err(io("rmdir /.old-root".into()))?;
    // The root itself becomes read-only; the read-write binds stay as they are.
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
        None,
    )
}
