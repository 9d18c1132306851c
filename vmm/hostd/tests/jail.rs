//! hostd starts VMs jailed: the VM runs as an unprivileged uid of its own, without
//! capabilities, in its own PID namespace and cgroup, with the host's migration key but not
//! its identity. A `kill -9` of its `vmm` ends the VM as
//! crashed, settles it, and leaves no cgroup, jail root or process behind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The jailed VM: the jail supervisor's only child.
fn jailed_child(supervisor: u32) -> Option<u32> {
    let path = format!("/proc/{supervisor}/task/{supervisor}/children");
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn gone(pid: u32) -> bool {
    !process_alive(pid) || status_field(pid, "State").starts_with('Z')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_runs_jailed_and_a_kill_9_of_its_vmm_ends_it_as_crashed_leaving_nothing() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let bought = TokenSpec::new(&kernel, IDLE).buy();
    let hostd = Hostd::start(&[], &[&bought], &[]);
    let vm = hostd.admit(&bought, &kernel, IDLE).await.unwrap();
    let supervisor = vm.pid.unwrap();
    let mut child = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            child = jailed_child(supervisor).filter(|&c| {
                let uid = status_field(c, "Uid");
                uid.split_whitespace()
                    .next()
                    .and_then(|u| u.parse::<u32>().ok())
                    .is_some_and(|u| u >= hostd::launch::JAIL_UID_BASE)
            });
            child.is_some()
        })
        .await,
        "no jailed VM under supervisor {supervisor}: {}",
        hostd.log()
    );
    let child = child.unwrap();
    assert_eq!(status_field(child, "CapEff"), "0000000000000000");
    assert_eq!(status_field(child, "NoNewPrivs"), "1");
    // The main thread (what /proc/PID/status shows) filters itself once the VM runs.
    assert!(
        eventually(Duration::from_secs(30), || status_field(child, "Seccomp")
            == "2")
        .await,
        "the jailed VM never filtered itself"
    );
    assert!(status_field(child, "NSpid").ends_with("\t1"));
    // Its root holds no host files, and the VM record stays out of its reach.
    let root = format!("/proc/{child}/root");
    assert!(!Path::new(&format!("{root}/etc")).exists());
    let vm_dir = hostd.data_dir().join("vms").join(&vm.vm_id);
    assert!(!Path::new(&format!("{root}{}/record.json", vm_dir.display())).exists());
    // It holds the host's migration key, for outgoing migrations, and never the host
    // identity, which signs claims and host-to-host requests.
    let data = hostd.data_dir();
    let host_key = data.join(hostd::identity::IDENTITY_FILE);
    let migration_key = data.join(hostd::migration_key::MIGRATION_KEY_FILE);
    assert!(Path::new(&format!("{root}{}", migration_key.display())).exists());
    assert!(!Path::new(&format!("{root}{}", host_key.display())).exists());
    assert!(host_key.exists());
    let jail = hostd::launch::jail_id(&vm_dir);
    let cgroups = vmm::sandbox::jail::cgroup_dirs(&jail);
    for dir in &cgroups {
        assert!(dir.exists(), "{} missing", dir.display());
    }

    // SAFETY: kill takes two integers; the supervisor is hostd's child, alive.
    unsafe { libc::kill(supervisor as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(30), || {
            futures_block(hostd.client.vm(&vm.vm_id)).is_err()
        })
        .await,
        "hostd did not end the VM: {}",
        hostd.log()
    );
    assert!(
        eventually(Duration::from_secs(30), || gone(child)).await,
        "the jailed VM outlived its supervisor"
    );
    for dir in &cgroups {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(!vmm::sandbox::jail::root_dir(&jail).exists());
    assert_eq!(hostd.vm_dirs(), 0);
    let metrics = hostd.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_vms_reclaimed_total{reason=\"crashed\"} 1\n"),
        "{metrics}"
    );
    assert!(hostd.broker().leases.is_empty());
}
