//! Thin checked wrappers over the system calls the jail makes.
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::JailError;

pub fn cstr(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Path(path.into()))
}

/// Turns a -1 return into the error for `what`.
pub fn check(rc: libc::c_long, what: &str) -> Result<(), JailError> {
    if rc < 0 {
        return Err(JailError::Sys {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

pub fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let src = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|t| CString::new(t).unwrap_or_default());
    let data = data.map(|d| CString::new(d).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(&src),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(rc.into(), &format!("mount {}", target.display()))
}

pub fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let c = cstr(path)?;
    // SAFETY: a valid path string; no other memory is touched.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    check(rc.into(), &format!("chown {}", path.display()))
}

pub fn mknod_char(
    path: &Path,
    major: u32,
    minor: u32,
    uid: u32,
    gid: u32,
) -> Result<(), JailError> {
    let c = cstr(path)?;
    // SAFETY: a valid path string; creates a device node.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    };
    check(rc.into(), &format!("mknod {}", path.display()))?;
    chown(path, uid, gid)
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(rc.into(), "create a pipe")?;
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

pub fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &str) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    check(rc.into(), what)
}
