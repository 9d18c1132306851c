//! Helpers shared by the VMM's integration tests: finding the binary and images, running a
//! guest with a time bound, and the KVM-required policy.
#![allow(dead_code)]

pub mod hosts;
pub mod pair;
pub mod tls_proxy;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmm")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether KVM tests can run. With LAUNDROMAT_REQUIRE_KVM=1 a missing /dev/kvm fails the test
/// instead of skipping it.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        assert!(
            std::env::var("LAUNDROMAT_REQUIRE_KVM").as_deref() != Ok("1"),
            "/dev/kvm is not usable and LAUNDROMAT_REQUIRE_KVM=1"
        );
        eprintln!("skipping: /dev/kvm is not usable");
    }
    ok
}

/// A built guest image under target/images; panics with the build command if it is missing.
pub fn image(name: &str) -> PathBuf {
    let path = workspace_root().join("target/images").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `bash images/build.sh` first",
        path.display()
    );
    path
}

/// `vmm run` arguments booting the bench guest with `mem` MiB, `vcpus` and `cmdline`, serving
/// its control socket at `sock` if given.
pub fn bench_args(mem: u64, vcpus: u8, cmdline: &str, sock: Option<&Path>) -> Vec<String> {
    let kernel = image("bench.elf");
    let mut args: Vec<String> = ["run", "--boot", "bench", "--kernel"]
        .map(String::from)
        .to_vec();
    args.push(kernel.display().to_string());
    args.extend([
        "--mem".into(),
        mem.to_string(),
        "--vcpus".into(),
        vcpus.to_string(),
    ]);
    args.extend(["--cmdline".into(), cmdline.to_string()]);
    if let Some(sock) = sock {
        args.extend(["--api-sock".into(), sock.display().to_string()]);
    }
    args
}

/// A minimal ELF64 with one PT_LOAD segment of `code` at `paddr`, entry at its start.
pub fn tiny_elf(paddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01");
    out.resize(16, 0);
    out.extend_from_slice(&2u16.to_le_bytes()); // EXEC
    out.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&paddr.to_le_bytes()); // entry
    out.extend_from_slice(&64u64.to_le_bytes()); // phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    out.extend_from_slice(&7u32.to_le_bytes()); // RWX
    for v in [0x1000u64, paddr, paddr, code.len() as u64, memsz, 0x1000] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.resize(0x1000, 0);
    out.extend_from_slice(code);
    out
}

/// Ring-3 code that prints `text` on the MMIO console, then writes `code` to the control
/// device's exit register.
pub fn print_and_exit(text: &[u8], code: u8) -> Vec<u8> {
    let mut c = vec![0x48, 0xb8];
    c.extend_from_slice(&bench_abi::CONSOLE_BASE.to_le_bytes());
    for &b in text {
        c.extend_from_slice(&[0xc6, 0x00, b]); // mov byte [rax], b
    }
    c.extend_from_slice(&[0x48, 0xb8]);
    c.extend_from_slice(&bench_abi::CONTROL_BASE.to_le_bytes());
    c.extend_from_slice(&[0x48, 0xc7, 0x00, code, 0, 0, 0]); // mov qword [rax], code
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    c
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `vmm` with `args`, killing it after `limit`; panics if it had to be killed.
pub fn run_vmm<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], limit: Duration) -> Output {
    let start = Instant::now();
    let mut child = Command::new(vmm_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let status = wait_with_limit(&mut child, limit);
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    let status = status.unwrap_or_else(|| {
        panic!("vmm {args:?} did not finish within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    Output {
        status,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// Waits for `child` up to `limit`; kills it and returns None if it is still running.
pub fn wait_with_limit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The integer after `key=` in a progress line.
pub fn field(line: &str, key: &str) -> Option<u64> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(|v| {
            v.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
}

/// A `vmm` process whose stdout lines arrive on a channel and whose stderr is collected;
/// killed on drop.
pub struct Vmm {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The pipe readers; joined after exit so no output is still in flight.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Vmm {
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let mut command = Command::new(vmm_bin());
        command.args(args);
        Self::spawn_command(command)
    }

    /// Runs `command` (a `vmm` invocation, possibly wrapped, e.g. in `ip netns exec`).
    pub fn spawn_command(mut command: Command) -> Self {
        let mut child = command
            .env("VMM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Self {
            child,
            lines,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stderr within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The next console line matching `pred`, or a panic (with stderr) after `limit`.
    pub fn wait_line(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "no matching console line within {limit:?} ({e}); stderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    /// Every console line that arrives within `d`.
    pub fn lines_for(&self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(l);
        }
        out
    }

    /// Waits for exit up to `limit`; kills and panics if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let status = wait_with_limit(&mut self.child, limit);
        assert!(
            status.is_some(),
            "vmm still running after {limit:?}; stderr:\n{}",
            self.stderr()
        );
        // The process is gone, so its pipes hit end of file: let the readers drain them.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status.and_then(|s| s.code())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Serialises the heavy KVM tests of one test binary: each runs guests that keep both cores
/// busy, and timing-sensitive checks (pre-copy phases, switchover) get unfair if two overlap.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
