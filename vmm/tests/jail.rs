//! `vmm jail`: a bench guest runs its dirty workload inside the jail, and from outside we see
//! what the jail promises: unprivileged uid, no capabilities, seccomp, its own PID namespace, a
//! root without host files, cgroup limits; and nothing left behind after it ends.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const UID: u32 = 60_101;

/// Removes the jail's cgroup and mount point even when an assertion fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        vmm::sandbox::jail::cleanup(&self.0);
    }
}

/// `vmm jail` as [`UID`], jail `id`, with the flags of the `vmm run` command line `run`.
fn jail_args(id: &str, run: Vec<String>) -> Vec<String> {
    let uid = UID.to_string();
    let mut args: Vec<String> = ["jail", "--id", id, "--uid", &uid, "--gid", &uid]
        .map(String::from)
        .into();
    args.extend(run.into_iter().skip(1)); // "run"
    args
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The jailed VM: the supervisor's only child.
fn jailed_child(supervisor: u32) -> u32 {
    let deadline = Instant::now() + LIMIT;
    loop {
        let path = format!("/proc/{supervisor}/task/{supervisor}/children");
        let children = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            // Wait until it has dropped to the VM's uid (the jail is complete).
            if status_field(pid, "Uid").starts_with(&UID.to_string()) {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no jailed child appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_jailed_bench_guest_dirties_memory_without_errors_and_cannot_reach_the_host() {
    if !kvm_available() {
        return;
    }
    let id = format!("test-jail-{}", std::process::id());
    let _cleanup = Cleanup(id.clone());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let args = jail_args(
        &id,
        bench_args(
            64,
            1,
            "workload=dirty wss=16 report-ms=250 exit-after-ms=2000",
            Some(&sock),
        ),
    );
    let mut vm = Vmm::spawn(&args);
    let child = jailed_child(vm.child.id());

    // Privileges: the VM's uid, no capability in any set, no_new_privs, seccomp filtering.
    assert!(status_field(child, "Uid").starts_with(&format!("{UID}\t{UID}")));
    assert!(status_field(child, "Gid").starts_with(&format!("{UID}\t{UID}")));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(child, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(child, "NoNewPrivs"), "1");
    // The main thread (what /proc/PID/status shows) filters itself once the VM runs.
    let deadline = Instant::now() + LIMIT;
    while status_field(child, "Seccomp") != "2" {
        assert!(
            Instant::now() < deadline,
            "the jailed VM never filtered itself"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its own PID namespace: it is PID 1 there, and sees no host process.
    assert_eq!(status_field(child, "NSpid"), format!("{child}\t1"));
    // Its root holds the kernel, /dev/kvm and the socket directory; no /etc, no /proc.
    let root = format!("/proc/{child}/root");
    assert!(!Path::new(&format!("{root}/etc/shadow")).exists());
    assert!(!Path::new(&format!("{root}/etc")).exists());
    assert!(!Path::new(&format!("{root}/proc/1")).exists());
    let mut entries: Vec<String> = std::fs::read_dir(format!("{root}/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["kvm"]);
    let kernel = std::fs::canonicalize(image("bench.elf")).unwrap();
    assert!(Path::new(&format!("{root}{}", kernel.display())).exists());
    // Its cgroup: guest RAM plus the default overhead, a pids limit, and it is inside.
    let cgroups = vmm::sandbox::jail::cgroup_dirs(&id);
    let procs = std::fs::read_to_string(cgroups[0].join("cgroup.procs")).unwrap();
    assert!(
        procs.split_whitespace().any(|p| p == child.to_string()),
        "{procs}"
    );
    let (limit_file, usage_file) = if cgroups.len() == 1 {
        ("memory.max", "memory.current")
    } else {
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
    };
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(cgroups[0].join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // Every thread, the vCPU and device threads born after the jail joined, is inside it in
    // every hierarchy.
    let inside = format!("/laundromat/{id}");
    for task in std::fs::read_dir(format!("/proc/{child}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(memberships) = std::fs::read_to_string(task.join("cgroup")) else {
            continue; // a thread that ended meanwhile
        };
        let n = memberships.lines().filter(|l| l.ends_with(&inside)).count();
        assert!(
            n >= cgroups.len(),
            "{} is outside the VM's cgroup:\n{memberships}",
            task.display()
        );
    }
    assert_eq!(read(limit_file), (64 + 96) << 20);
    assert!(read(usage_file) <= read(limit_file));
    let pids_dir = cgroups
        .last()
        .filter(|_| cgroups.len() == 1)
        .unwrap_or(&cgroups[1]);
    let pids = std::fs::read_to_string(pids_dir.join("pids.max")).unwrap();
    assert_eq!(pids.trim(), "128");

    // The workload runs to its end with every page intact.
    assert_eq!(vm.wait_exit(LIMIT), Some(0), "{}", vm.stderr());
    let progress: Vec<String> = vm
        .lines
        .try_iter()
        .filter(|l| l.contains("errors="))
        .collect();
    assert!(progress.len() >= 3, "{progress:?}\n{}", vm.stderr());
    for line in &progress {
        assert_eq!(field(line, "errors"), Some(0), "{line}");
    }
    // Nothing left behind.
    for dir in &cgroups {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(!vmm::sandbox::jail::root_dir(&id).exists());
}

#[test]
fn after_a_kill_9_of_the_supervisor_cleanup_kills_the_vm_and_removes_its_cgroup() {
    if !kvm_available() {
        return;
    }
    let id = format!("test-jail-kill-{}", std::process::id());
    let _cleanup = Cleanup(id.clone());
    let args = jail_args(&id, bench_args(64, 1, "workload=idle report-ms=200", None));
    let mut vm = Vmm::spawn(&args);
    let child = jailed_child(vm.child.id());
    vm.child.kill().unwrap();
    let _ = vm.wait_exit(LIMIT);
    // The VM dies with its supervisor (the parent-death signal, set again after the uid
    // changed, since that clears it).
    let deadline = Instant::now() + LIMIT;
    while Path::new(&format!("/proc/{child}/status")).exists()
        && !status_field(child, "State").starts_with('Z')
    {
        assert!(
            Instant::now() < deadline,
            "the jailed VM outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the supervisor could not do, cleanup (hostd's job on reaping) does: it removes the
    // VM's cgroup (killing anything still in it) and its root's mount point.
    assert!(vmm::sandbox::jail::cleanup(&id));
    for dir in vmm::sandbox::jail::cgroup_dirs(&id) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
