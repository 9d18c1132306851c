//! The system calls each kind of thread may make, found by tracing the VMM (`strace -ff`)
//! through boot, run, snapshot, migration send and receive, and networking.
use std::collections::{BTreeMap, BTreeSet};

use seccompiler::{
    BackendError, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompRule,
};

use super::ioctls::{BUILD_IOCTLS, CONTROL_IOCTLS, VCPU_IOCTLS};
use super::ThreadKind;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// What every thread needs: memory management for the allocator and thread stacks, locks,
/// time, writing logs, and ending itself.
const BASE: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_rseq,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_set_robust_list,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The device thread: epoll, taps and eventfds, and virtio-blk's reads, writes and flushes
/// on its already open image files (positioned I/O: no seeking, no opening).
const DEVICES: &[i64] = &[
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_fdatasync,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_read,
    libc::SYS_readv,
];

/// The control threads: the control socket, snapshot files, migration over TCP, and disk
/// image locks (released to a migration's destination, taken back if it fails).
const CONTROL: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_dup,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_flock,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_getpeername,
    libc::SYS_getrandom,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_lseek,
    libc::SYS_mincore,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_mremap,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_statx,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// Building the VM, beyond what the running VM's threads do: the vCPU kick's signal handler
/// and the devices' eventfds. (Reading the kernel, the snapshot or the incoming stream needs
/// only what the control threads may do.)
const BUILD: &[i64] = &[libc::SYS_eventfd2, libc::SYS_rt_sigaction];

fn cond(arg: u8, op: Op, value: u64) -> Result<Cond, BackendError> {
    Cond::new(arg, Len::Qword, op, value)
}

fn allow(rules: &mut Rules, calls: &[i64]) {
    for &nr in calls {
        rules.entry(nr).or_default();
    }
}

/// `syscall(.., arg == v, ..)` for each of `values`: one rule each.
fn allow_arg(rules: &mut Rules, nr: i64, arg: u8, values: &[u64]) -> Result<(), BackendError> {
    let list = rules.entry(nr).or_default();
    for &v in values {
        list.push(SeccompRule::new(vec![cond(arg, Op::Eq, v)?])?);
    }
    Ok(())
}

/// New mappings and protection changes, never executable: a compromised thread cannot map
/// code of its own.
fn allow_memory(rules: &mut Rules) -> Result<(), BackendError> {
    let no_exec = || cond(2, Op::MaskedEq(libc::PROT_EXEC as u64), 0);
    rules.insert(libc::SYS_mmap, vec![SeccompRule::new(vec![no_exec()?])?]);
    rules.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![no_exec()?])?],
    );
    Ok(())
}

/// Of `prctl`, only naming threads and `no_new_privs` (set again by each filter installed;
/// it can only take privileges away).
fn allow_prctl(rules: &mut Rules) -> Result<(), BackendError> {
    let names = [
        libc::PR_SET_NAME,
        libc::PR_GET_NAME,
        libc::PR_SET_NO_NEW_PRIVS,
    ]
    .map(|o| o as u64);
    allow_arg(rules, libc::SYS_prctl, 0, &names)
}

/// The control threads' calls beyond the base.
fn allow_control(rules: &mut Rules) -> Result<(), BackendError> {
    allow(rules, CONTROL);
    // Allowed here so that the second filter's ENOSYS (see `install`) decides.
    allow(rules, &[libc::SYS_clone3]);
    // Threads only (the control socket's connections, migration lanes): never a new
    // process. glibc falls back from clone3, whose flags a filter cannot see, to clone.
    let thread = cond(
        0,
        Op::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )?;
    rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![thread])?]);
    // Sockets: the control socket (Unix) and migration (TCP over IPv4 or IPv6).
    let domains = [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6].map(|d| d as u64);
    allow_arg(rules, libc::SYS_socket, 0, &domains)?;
    // Kicking vCPUs out of KVM_RUN, with the kick signal only, in this process only.
    let kick = crate::vstate::vcpu::kick_signal() as u64;
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![cond(2, Op::Eq, kick)?])?],
    );
    allow(rules, &[libc::SYS_bind, libc::SYS_listen]);
    Ok(())
}

/// The filter rules for `kind`.
pub fn for_kind(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut rules = Rules::new();
    allow(&mut rules, BASE);
    allow_memory(&mut rules)?;
    allow_prctl(&mut rules)?;
    match kind {
        ThreadKind::Vcpu => allow_arg(&mut rules, libc::SYS_ioctl, 1, VCPU_IOCTLS)?,
        ThreadKind::Devices => allow(&mut rules, DEVICES),
        ThreadKind::Control => {
            allow_control(&mut rules)?;
            allow_arg(&mut rules, libc::SYS_ioctl, 1, &CONTROL_IOCTLS)?;
        }
        ThreadKind::Build => {
            // Filters stack, and a call passes only if every filter allows it: the threads
            // started under this one can do no more than it allows, so it allows all of theirs.
            allow(&mut rules, DEVICES);
            allow_control(&mut rules)?;
            allow(&mut rules, BUILD);
            // The threads it starts install their own filters on top (a filter can only take
            // calls away).
            let set_filter = [u64::from(libc::SECCOMP_SET_MODE_FILTER)];
            allow_arg(&mut rules, libc::SYS_seccomp, 0, &set_filter)?;
            let ioctls: BTreeSet<u64> = [VCPU_IOCTLS, &CONTROL_IOCTLS, &BUILD_IOCTLS]
                .concat()
                .into_iter()
                .collect();
            allow_arg(&mut rules, libc::SYS_ioctl, 1, &Vec::from_iter(ioctls))?;
        }
    }
    Ok(rules)
}
