//! Dropping privileges for good: resource limits, every capability, root's uid and gid.
use super::sys::{check, prctl};
use super::JailError;

/// Highest capability number any kernel we run on defines; unknown ones fail with EINVAL.
const LAST_CAP: libc::c_ulong = 63;

pub fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), JailError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: passes a valid rlimit structure by reference.
    let rc = unsafe { libc::setrlimit(resource, &lim) };
    check(rc.into(), "setrlimit")
}

/// Becomes `uid`/`gid` with no supplementary groups, no capabilities (bounding and ambient
/// sets emptied too) and `no_new_privs`, so nothing can bring privileges back.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), JailError> {
    for cap in 0..=LAST_CAP {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            check(rc.into(), "drop a capability from the bounding set")?;
        }
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        "clear the ambient capabilities",
    )?;
    // SAFETY: setgroups with an empty list; setres[ug]id with plain integers.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()).into(), "setgroups")?;
        check(libc::setresgid(gid, gid, gid).into(), "setresgid")?;
        check(libc::setresuid(uid, uid, uid).into(), "setresuid")?;
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")?;
    // With every uid non-zero, the kernel cleared the permitted and effective sets; check it.
    // SAFETY: setuid with a plain integer; it must fail now.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(JailError::StillPrivileged);
    }
    Ok(())
}
