//! Making a persistent tap device with the tun driver's ioctls: the kernel cannot create a
//! tap over rtnetlink, so this is the one part of hostd's networking done by ioctl.
//!
//! The tap is made with the flags `vmm` attaches with (`IFF_TAP | IFF_NO_PI`, see
//! `vmm::devices::virtio::net::tap`) and `IFF_TUN_EXCL`, so that an existing interface of the
//! same name is an error rather than silently shared. It is made persistent and hostd's
//! descriptor is closed at once: the tap outlives hostd (a restarted hostd re-adopts its
//! VMs) and is free for the `vmm` to attach to. It is deleted over rtnetlink (see `links`).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Creates the persistent tap `name` (1 to 15 bytes, checked by the caller). Fails with
/// `AlreadyExists`-like `EBUSY` if an interface of that name exists.
pub fn create_persistent(name: &str) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: an all-zero `ifreq` is valid (a name of NULs and a zero union).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as i16;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is, on a tun
    // descriptor we own.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, passed by value; the descriptor is
    // attached to the tap just made.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        // Closing `file` deletes the tap: it is not persistent.
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
