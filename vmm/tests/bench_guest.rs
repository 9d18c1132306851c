//! The bench unikernel under the VMM: workloads, vCPU counts, exit codes, pause and resume.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use vmm::api::{client, protocol::Request};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs a bench workload to its own exit and checks the progress lines it printed.
fn run_workload(cmdline: &str, vcpus: &str) {
    let vcpus: u8 = vcpus.parse().unwrap();
    let args = bench_args(256, vcpus, cmdline, None);
    let out = run_vmm(&args, LIMIT);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let progress: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("gen=") && l.contains("errors="))
        .collect();
    assert!(
        progress.len() >= 3,
        "too few progress lines:\n{}",
        out.stdout
    );
    for line in &progress {
        assert_eq!(field(line, "errors"), Some(0), "integrity error: {line}");
    }
    assert!(
        out.stdout.contains(&format!("vcpus={vcpus}")),
        "{}",
        out.stdout
    );
    let last = progress.last().unwrap();
    assert!(last.contains("done"), "no final line: {}", out.stdout);
}

#[test]
fn idle_one_vcpu() {
    if kvm_available() {
        run_workload("workload=idle report-ms=200 exit-after-ms=1000", "1");
    }
}

#[test]
fn idle_two_vcpus() {
    if kvm_available() {
        run_workload("workload=idle report-ms=200 exit-after-ms=1000", "2");
    }
}

#[test]
fn dirty_one_vcpu() {
    if kvm_available() {
        run_workload(
            "workload=dirty wss=16 report-ms=250 exit-after-ms=1500",
            "1",
        );
    }
}

#[test]
fn dirty_two_vcpus() {
    if kvm_available() {
        run_workload(
            "workload=dirty wss=32 report-ms=250 exit-after-ms=1500",
            "2",
        );
    }
}

#[test]
fn bad_guest_command_line_is_the_guests_usage_error() {
    if !kvm_available() {
        return;
    }
    let kernel = image("bench.elf");
    let out = run_vmm(
        &[
            "run",
            "--boot",
            "bench",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "wss=lots",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "stdout:\n{}", out.stdout);
}

fn ctl(sock: &Path, req: Request) -> serde_json::Value {
    let v = client::call(sock, &req, Duration::from_secs(30)).expect("control call");
    assert_eq!(v["ok"], true, "{req:?} failed: {v}");
    v
}

/// Highest `gen=` among the lines that have arrived so far.
fn drain_gen(vm: &Vmm) -> Option<u64> {
    let mut best = None;
    while let Ok(line) = vm.lines.recv_timeout(Duration::from_millis(300)) {
        if let Some(g) = field(&line, "gen") {
            best = Some(best.map_or(g, |b: u64| b.max(g)));
        }
    }
    best
}

#[test]
fn pause_freezes_the_guest_and_resume_continues_it() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let vm = Vmm::spawn(&bench_args(
        256,
        2,
        "workload=dirty wss=16 report-ms=100",
        Some(&sock),
    ));
    vm.wait_line(LIMIT, |l| field(l, "gen").is_some_and(|g| g > 0));

    let paused = ctl(&sock, Request::Pause {});
    assert_eq!(paused["state"], "paused");
    let gen_at_pause = drain_gen(&vm).unwrap_or(0);
    let clock = ctl(&sock, Request::Status {})["vm_clock_ms"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        vm.lines.try_recv().is_err(),
        "the guest printed while paused (it should be frozen)"
    );
    let status = ctl(&sock, Request::Status {});
    assert_eq!(status["state"], "paused");
    assert_eq!(
        status["vm_clock_ms"].as_u64().unwrap(),
        clock,
        "VM clock ran while paused"
    );

    ctl(&sock, Request::Resume {});
    let line = vm.wait_line(LIMIT, |l| field(l, "gen").is_some());
    let gen_after = field(&line, "gen").unwrap();
    assert!(
        gen_after >= gen_at_pause,
        "gen went backwards: {gen_at_pause} -> {gen_after}"
    );
    let later = vm.wait_line(LIMIT, |l| field(l, "gen").is_some_and(|g| g > gen_at_pause));
    assert_eq!(field(&later, "errors"), Some(0), "{later}");

    let status = ctl(&sock, Request::Status {});
    assert_eq!(status["state"], "running");
    assert!(status["exits"]["mmio_write"].as_u64().unwrap() > 0);
    ctl(&sock, Request::Shutdown {});
    let mut vm = vm;
    let code = wait_with_limit(&mut vm.child, LIMIT).and_then(|s| s.code());
    assert_eq!(code, Some(0));
    assert!(!sock.exists(), "control socket left behind");
}

#[test]
fn malformed_control_requests_get_errors_and_the_connection_survives() {
    use std::io::{BufRead, BufReader, Write};
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let vm = Vmm::spawn(&bench_args(
        128,
        1,
        "workload=idle report-ms=100",
        Some(&sock),
    ));
    vm.wait_line(LIMIT, |l| l.contains("gen="));
    let stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    for bad in [
        "not json",
        r#"{"cmd":"explode"}"#,
        r#"{"cmd":"pause","now":true}"#,
        "{}",
    ] {
        writeln!(w, "{bad}").unwrap();
        let mut answer = String::new();
        r.read_line(&mut answer).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["ok"], false, "{bad} accepted: {answer}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    writeln!(w, r#"{{"cmd":"status"}}"#).unwrap();
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["state"], "running");
}
