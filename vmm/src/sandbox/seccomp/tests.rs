//! Each filter, installed on a real thread, lets its thread's work through and stops a
//! forbidden call with the SIGSYS message. The filters end the process, so each case runs in a
//! child: this test binary again, told by an environment variable which case to play.
use std::process::Command;

use super::*;

const CASE: &str = "VMM_SECCOMP_TEST_CASE";

/// In the child: filter a fresh thread as `kind`, show that allowed work runs, then make
/// `forbidden`. Returns only in the parent.
fn play(kind: ThreadKind, forbidden: i64) {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    if case != kind.name() {
        return;
    }
    enable().unwrap();
    std::thread::spawn(move || {
        install(kind).unwrap();
        // Allocation, locks and logging go on under every filter.
        let v: Vec<u8> = vec![7; 1 << 20];
        let m = std::sync::Mutex::new(v.len());
        eprintln!("allowed work done: {}", *m.lock().unwrap());
        // SAFETY: a raw system call with harmless arguments; the filter stops it.
        unsafe { libc::syscall(forbidden, 0, 0, 0) };
        eprintln!("the forbidden call returned");
    })
    .join()
    .unwrap();
    std::process::exit(0);
}

/// Runs `test` again in a child playing `kind`, and checks how it ended.
fn child(test: &str, kind: ThreadKind, forbidden: i64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CASE, kind.name())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_SECCOMP_VIOLATION), "{stderr}");
    assert!(stderr.contains("allowed work done: 1048576"), "{stderr}");
    let line = format!(
        "vmm: seccomp violation: forbidden system call {forbidden} from a {} thread",
        kind.name()
    );
    assert!(stderr.contains(&line), "{stderr}");
    assert!(!stderr.contains("the forbidden call returned"), "{stderr}");
}

#[test]
fn a_vcpu_thread_opening_a_socket_ends_the_process() {
    play(ThreadKind::Vcpu, libc::SYS_socket);
    child(
        "sandbox::seccomp::tests::a_vcpu_thread_opening_a_socket_ends_the_process",
        ThreadKind::Vcpu,
        libc::SYS_socket,
    );
}

#[test]
fn the_device_thread_opening_a_file_ends_the_process() {
    play(ThreadKind::Devices, libc::SYS_openat);
    child(
        "sandbox::seccomp::tests::the_device_thread_opening_a_file_ends_the_process",
        ThreadKind::Devices,
        libc::SYS_openat,
    );
}

#[test]
fn a_control_thread_executing_a_program_ends_the_process() {
    play(ThreadKind::Control, libc::SYS_execve);
    child(
        "sandbox::seccomp::tests::a_control_thread_executing_a_program_ends_the_process",
        ThreadKind::Control,
        libc::SYS_execve,
    );
}

#[test]
fn the_build_filter_stops_a_program_being_executed() {
    play(ThreadKind::Build, libc::SYS_execve);
    child(
        "sandbox::seccomp::tests::the_build_filter_stops_a_program_being_executed",
        ThreadKind::Build,
        libc::SYS_execve,
    );
}

const KINDS: [ThreadKind; 4] = [
    ThreadKind::Vcpu,
    ThreadKind::Devices,
    ThreadKind::Control,
    ThreadKind::Build,
];

#[test]
fn every_filter_compiles() {
    for kind in KINDS {
        assert!(!program(kind).unwrap().is_empty());
    }
}

/// Threads started while main builds the VM run under the build filter and their own: a call
/// their own filter allows must pass the build filter too, or it would kill a running VM.
#[test]
fn the_build_filter_allows_whatever_a_running_thread_may_do() {
    let build = rules::for_kind(ThreadKind::Build).unwrap();
    for kind in KINDS {
        for (nr, conditions) in rules::for_kind(kind).unwrap() {
            let Some(allowed) = build.get(&nr) else {
                panic!(
                    "{} threads may make system call {nr}; the build filter may not",
                    kind.name()
                );
            };
            // No rules means any arguments; otherwise every rule of the thread's must be one
            // of the build filter's.
            let covered = allowed.is_empty()
                || (!conditions.is_empty() && conditions.iter().all(|c| allowed.contains(c)));
            assert!(
                covered,
                "{} threads' rules for system call {nr}",
                kind.name()
            );
        }
    }
}
