//! Bad input to `vmm run` and to the control socket: each gets a clear error, never a panic.
mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Runs vmm expecting a clean failure whose stderr mentions every one of `needles`.
fn expect_error(args: &[&str], needles: &[&str]) {
    let out = run_vmm(args, LIMIT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "args {args:?}\nstderr: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "panic for {args:?}: {}",
        out.stderr
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "stderr for {args:?} lacks {n:?}: {}",
            out.stderr
        );
    }
}

/// A valid one-page bench kernel in `dir`.
fn good_kernel(dir: &tempfile::TempDir) -> String {
    write_tmp(dir, "k", &tiny_elf(0x100000, &print_and_exit(b"x", 0), 64))
}

/// `vmm run --boot bench --kernel KERNEL EXTRA...` must fail with all of `needles`.
fn expect_bench_error(kernel: &str, extra: &[&str], needles: &[&str]) {
    let mut args = vec!["run", "--boot", "bench", "--kernel", kernel];
    args.extend_from_slice(extra);
    expect_error(&args, needles);
}

fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn missing_kernel() {
    if !kvm_available() {
        return;
    }
    expect_error(
        &[
            "run",
            "--boot",
            "bench",
            "--kernel",
            "/nonexistent/kernel.elf",
        ],
        &["cannot open kernel /nonexistent/kernel.elf", "No such file"],
    );
}

#[test]
fn non_elf_kernel() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = write_tmp(&dir, "k", b"this is not an ELF file at all, just text\n");
    expect_error(
        &["run", "--boot", "bench", "--kernel", &k],
        &["not an ELF file"],
    );
    expect_error(
        &["run", "--boot", "pvh", "--kernel", &k],
        &["not an ELF file"],
    );
}

#[test]
fn elf_segments_outside_ram() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = write_tmp(
        &dir,
        "k",
        &tiny_elf(0x4000_0000, &print_and_exit(b"x", 0), 64),
    );
    expect_bench_error(&k, &["--mem", "64"], &["outside guest RAM"]);
}

#[test]
fn memory_too_small_or_too_large() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = good_kernel(&dir);
    expect_bench_error(&k, &["--mem", "1"], &["too small"]);
    expect_bench_error(&k, &["--mem", "100000000"], &["more than this host"]);
}

#[test]
fn zero_or_too_many_vcpus() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = good_kernel(&dir);
    expect_bench_error(&k, &["--vcpus", "0"], &["at least one vCPU"]);
    expect_bench_error(&k, &["--vcpus", "200"], &["at most"]);
    // Beyond u8 is rejected by the argument parser with its own usage error.
    let out = run_vmm(
        &["run", "--boot", "bench", "--kernel", &k, "--vcpus", "1000"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn command_line_too_long() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = good_kernel(&dir);
    let long = "x".repeat(5000);
    expect_bench_error(&k, &["--cmdline", &long], &["command line"]);
}

#[test]
fn initrd_that_does_not_fit() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = good_kernel(&dir);
    let initrd = dir.path().join("initrd");
    let f = std::fs::File::create(&initrd).unwrap();
    f.set_len(64 << 20).unwrap();
    let initrd = initrd.to_str().unwrap();
    // The tiny ELF has no PVH note, so use linux boot via ELF to reach the initrd step.
    expect_error(
        &[
            "run", "--boot", "linux", "--kernel", &k, "--initrd", initrd, "--mem", "32",
        ],
        &["initrd does not fit"],
    );
}

#[test]
fn guest_exit_code_and_console_reach_the_caller() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = write_tmp(
        &dir,
        "k",
        &tiny_elf(0x100000, &print_and_exit(b"hello\n", 42), 64),
    );
    let out = run_vmm(
        &["run", "--boot", "bench", "--kernel", &k, "--mem", "16"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(42), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "hello\n");
}

#[test]
fn guest_crash_is_reported_with_registers() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // `hlt` at CPL3 raises #GP, which a guest without an IDT cannot take: the VM must stop
    // with a report, not hang.
    let k = write_tmp(&dir, "k", &tiny_elf(0x100000, &[0xf4, 0xeb, 0xfe], 64));
    let out = run_vmm(
        &["run", "--boot", "bench", "--kernel", &k, "--mem", "16"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(70), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("guest crashed"), "{}", out.stderr);
    assert!(out.stderr.contains("rip="), "{}", out.stderr);
}

#[test]
fn bad_disks_are_named() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = good_kernel(&dir);
    expect_bench_error(
        &k,
        &["--disk", "path=/nonexistent/root.img"],
        &[
            "cannot set up disk 0",
            "cannot open disk image /nonexistent/root.img",
        ],
    );
    let empty = write_tmp(&dir, "empty.img", &[]);
    expect_bench_error(
        &k,
        &["--disk", &format!("path={empty}")],
        &["smaller than one 512-byte sector"],
    );
    let out = run_vmm(&["run", "--disk", "readonly=on"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("--disk needs path=FILE"),
        "{}",
        out.stderr
    );
}
