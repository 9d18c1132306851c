//! How hostd starts a VM's `vmm`: plainly (`--no-jail`, debugging only) or through `vmm jail`,
//! with a jail named after the VM's directory and a uid of its own.
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The first uid (and gid) given to jailed VMs; each running VM gets its own above it.
pub const JAIL_UID_BASE: u32 = 700_000;
/// How many uids jailed VMs may use.
const JAIL_UIDS: u32 = 100_000;

/// Names a VM's jail after its directory: the VM id, and a digest of the whole path so that
/// two hosts on one machine (a migration between them) never share a cgroup.
pub fn jail_id(dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(dir.as_os_str().as_bytes());
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(40)
        .collect();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("vm-{name}-{hex}")
}

/// Whether any process runs as `uid`.
fn uid_in_use(uid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                .is_some_and(|real| real == uid.to_string())
        })
    })
}

/// A uid no other VM runs as: the next of hostd's own, skipping any a process already uses
/// (VMs adopted after a restart).
pub(crate) fn next_jail_uid() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut uid = 0;
    for _ in 0..JAIL_UIDS {
        uid = JAIL_UID_BASE + NEXT.fetch_add(1, Ordering::Relaxed) % JAIL_UIDS;
        if !uid_in_use(uid) {
            break;
        }
    }
    uid
}

/// How hostd starts `vmm` processes.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `vmm` binary.
    pub vmm: PathBuf,
    /// Through `vmm jail` (the default; `--no-jail` turns it off for debugging).
    pub jail: bool,
    /// The host's migration key (never its identity), copied into each jail: an outgoing
    /// migration names it.
    pub identity: PathBuf,
}

impl Launch {
    pub fn of(host: &crate::host::Host) -> Self {
        Self {
            vmm: host.config.vmm.clone(),
            jail: host.config.jail,
            identity: host.migration_key.path.clone(),
        }
    }

    /// The arguments for `args` (`run ...`): as they are, or turned into `vmm jail ...`.
    pub(crate) fn args(&self, args: &[String], id: &str, uid: impl FnOnce() -> u32) -> Vec<String> {
        if !self.jail {
            return args.to_vec();
        }
        let rest = match args.first().map(String::as_str) {
            Some("run") => &args[1..],
            _ => args,
        };
        let uid = uid().to_string();
        let mut jailed: Vec<String> = ["jail", "--id", id, "--uid", &uid, "--gid", &uid]
            .map(String::from)
            .into();
        // `--identity` (incoming migrations) is copied in without asking.
        if !rest.iter().any(|a| a == "--identity") {
            jailed.push("--copy".into());
            jailed.push(self.identity.display().to_string());
        }
        jailed.extend_from_slice(rest);
        jailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(jail: bool) -> Launch {
        Launch {
            vmm: "vmm".into(),
            jail,
            identity: "/data/host.key".into(),
        }
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_jailed_launch_turns_run_into_jail_with_the_identity_copied_in() {
        let run = strings(&["run", "--boot", "bench", "--kernel", "/k"]);
        assert_eq!(launch(false).args(&run, "vm-x", || unreachable!()), run);
        assert_eq!(
            launch(true).args(&run, "vm-x", || 700_007),
            strings(&[
                "jail",
                "--id",
                "vm-x",
                "--uid",
                "700007",
                "--gid",
                "700007",
                "--copy",
                "/data/host.key",
                "--boot",
                "bench",
                "--kernel",
                "/k"
            ])
        );
        // An incoming migration names its identity itself; the jail copies that one.
        let incoming = strings(&["run", "--incoming", "tcp://x", "--identity", "/id"]);
        let jailed = launch(true).args(&incoming, "vm-y", || 700_001);
        assert!(!jailed.contains(&"--copy".to_string()), "{jailed:?}");
        assert_eq!(jailed[7..], incoming[1..]);
    }

    #[test]
    fn jail_ids_are_valid_and_differ_between_hosts() {
        let a = jail_id(Path::new("/srv/a/vms/0123456789abcdef0123456789abcdef"));
        let b = jail_id(Path::new("/srv/b/vms/0123456789abcdef0123456789abcdef"));
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(id.len() <= 64, "{id}");
            assert!(id.starts_with("vm-0123456789abcdef"), "{id}");
            assert!(id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
    }
}
