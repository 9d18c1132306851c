//! The `SIGSYS` handler: names the forbidden system call and ends the process.
//!
//! It runs inside the filter that trapped, so it may only use calls every filter allows
//! (`write`, `exit_group`), and being a signal handler it must not allocate or lock.

/// Process exit code after a seccomp violation (128 + SIGSYS, as a shell would show it).
pub const EXIT_SECCOMP_VIOLATION: i32 = 159;

/// Offset of `si_syscall` in `siginfo_t` on x86-64: signo, errno, code, padding, then the
/// `_sigsys` member: call address (8 bytes), syscall number (4 bytes), arch.
const SI_SYSCALL_OFFSET: usize = 24;

/// Writes `n` in decimal into the end of `buf`; returns where the digits start.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 0 {
            return at;
        }
    }
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: writes from a live buffer of the given length; an error is ignored because the
    // process ends right after.
    unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
}

/// The message for a trapped call, assembled in `out` without allocating; returns its length.
fn message(kind: &str, nr: i64, out: &mut [u8; 256]) -> usize {
    let mut digits = [0u8; 20];
    let start = decimal(nr.unsigned_abs(), &mut digits);
    let mut code = [0u8; 20];
    let code_start = decimal(EXIT_SECCOMP_VIOLATION as u64, &mut code);
    let parts: [&[u8]; 8] = [
        b"vmm: seccomp violation: forbidden system call ",
        &digits[start..],
        b" from a ",
        kind.as_bytes(),
        b" thread",
        b" (see ausyscall or /usr/include/asm/unistd_64.h); stopping the VM, exit code ",
        &code[code_start..],
        b"\n",
    ];
    let mut len = 0;
    for part in parts {
        let n = part.len().min(out.len() - len);
        out[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    len
}

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel hands a SIGSYS handler (SA_SIGINFO) a valid siginfo whose
        // `_sigsys` member is live; the read stays inside the 128-byte structure.
        i64::from(unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read()
        })
    };
    // Only filtered threads trap; one that installed none of its own runs under the filter it
    // inherited (a control connection, a migration lane).
    let kind = super::current().map_or("helper", super::ThreadKind::name);
    let mut out = [0u8; 256];
    let len = message(kind, nr, &mut out);
    write_stderr(&out[..len]);
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(EXIT_SECCOMP_VIOLATION) };
}

/// Installs the handler for the whole process.
pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point; we fill the fields we use.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handle_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler that only calls async-signal-safe functions; the old action
    // is not needed.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_thread_kind_and_the_call() {
        let mut out = [0u8; 256];
        let len = message("vcpu", 41, &mut out);
        let text = std::str::from_utf8(&out[..len]).unwrap();
        assert!(text
            .starts_with("vmm: seccomp violation: forbidden system call 41 from a vcpu thread ("));
        assert!(text.ends_with("exit code 159\n"));
    }

    #[test]
    fn decimal_writes_zero_and_large_numbers() {
        let mut buf = [0u8; 20];
        let at = decimal(0, &mut buf);
        assert_eq!(&buf[at..], b"0");
        let at = decimal(u64::MAX, &mut buf);
        assert_eq!(&buf[at..], u64::MAX.to_string().as_bytes());
    }
}
