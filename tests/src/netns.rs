//! Test hosts in network namespaces (see DESIGN.md, "Networking and test hosts").
//!
//! A [`TestNetwork`] is a private L2 network: one namespace per host and a "switch" namespace
//! holding a bridge, with a veth pair from each host to the bridge. Every interface is created
//! directly inside these namespaces (`ip -n`), so the root namespace never sees a new link or
//! address, and every set can use the same subnet, [`SUBNET`]: its addresses exist only inside
//! the set's namespaces. Deleting the namespaces deletes everything else with them (the bridge,
//! both ends of every veth pair), which is what `Drop` does.
//!
//! Namespace names are `lm<pid>n<seq>-<host>`: the pid keeps concurrent test processes apart,
//! the sequence number keeps sets made by one process (parallel tests) apart. Creating a set
//! first removes what a crashed run left behind: namespaces with the same prefix (an earlier
//! process with the same pid) and namespaces of this scheme whose process is gone.

use std::{
    ffi::OsStr,
    fs, io,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;
use thiserror::Error;

use crate::process::command_line;

/// The subnet of every set; host `i` (from 0) gets `10.77.0.<i + 1>`.
pub const SUBNET: &str = "10.77.0.0/24";
const SUBNET_BASE: [u8; 3] = [10, 77, 0];
const PREFIX_LEN: u8 = 24;
/// Where `ip netns add` mounts named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The switch namespace's suffix, and the bridge in it.
const SWITCH: &str = "switch";
pub const BRIDGE: &str = "br0";
/// The host side of each veth pair, inside the host's namespace.
const HOST_LINK: &str = "eth0";
/// Linux's limit on interface names (IFNAMSIZ less the NUL); host names name the switch ports.
const MAX_IFNAME: usize = 15;
/// Hosts a /24 can address, leaving .0 and .255.
const MAX_HOSTS: usize = 254;
/// `ip` answers in milliseconds; this only guards against a hung tool.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("invalid host name {0:?}: use 1 to 15 of a-z, 0-9 and '-', not {SWITCH:?}")]
    HostName(String),
    #[error("a test network holds 1 to {MAX_HOSTS} distinct hosts, not {0}")]
    HostCount(usize),
    #[error("cannot run `{command}` (is iproute2 installed? `apt-get install iproute2`)")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {IP_TIMEOUT:?}")]
    Timeout { command: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot list the network namespaces in {NETNS_DIR}")]
    List(#[source] io::Error),
    #[error("could not delete every namespace: {0}")]
    Cleanup(String),
}

/// One host of a test network: a namespace with `eth0` on the bridge.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    name: String,
    namespace: String,
    addr: Ipv4Addr,
}

impl Host {
    /// The name the caller gave it, e.g. `host-a`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its network namespace, for `ip netns exec` or `ip -n`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `program` run inside this host's network namespace. The child enters it with `setns`
    /// just before it executes `program`, so the spawned child's pid is the program's own
    /// (killing it kills the program). Unlike `ip netns exec`, it keeps the caller's mount
    /// namespace: `ip netns exec` remounts `/sys`, which hides `/sys/fs/cgroup`, and a hostd
    /// started that way could not give its jailed VMs their cgroups.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        enter_on_exec(&mut command, &self.namespace);
        command
    }
}

/// Makes `command`'s child join the network namespace `namespace` (a name under
/// `/run/netns`, as `ip netns add` makes) before it executes; if it cannot, the spawn fails
/// with the reason. Only the network namespace changes.
pub fn enter_on_exec(command: &mut Command, namespace: &str) {
    use std::os::unix::process::CommandExt;
    let path = std::ffi::CString::new(format!("{NETNS_DIR}/{namespace}"))
        .unwrap_or_else(|_| c"/nonexistent/netns".into());
    // SAFETY: between fork and exec the closure only makes system calls (open, setns, close)
    // on a path allocated before the fork; it touches no lock and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let joined = libc::setns(fd, libc::CLONE_NEWNET);
            let error = io::Error::last_os_error();
            libc::close(fd);
            if joined != 0 {
                return Err(error);
            }
            Ok(())
        });
    }
}

/// The bridge inside a host that joins its VMs' taps to its uplink (`eth0`).
pub const HOST_BRIDGE: &str = "vmbr0";

impl Host {
    /// Gives this host a tap `tap` for a VM, on a bridge of the host's own whose uplink is
    /// `eth0` (so the VM is on the shared switch). The host's address moves from `eth0` to the
    /// bridge. The tap is persistent until the namespace goes, so a `vmm` can attach to it, leave
    /// and another attach again.
    pub fn attach_tap(&self, tap: &str) -> Result<(), NetnsError> {
        let ns = self.namespace.as_str();
        self.add_bridge()?;
        ip(&["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["-n", ns, "link", "set", tap, "master", HOST_BRIDGE, "up"])?;
        Ok(())
    }

    /// Gives this host the bridge [`HOST_BRIDGE`] with `eth0` as its uplink, if it has none: VM
    /// taps on it are on the shared switch. The host's address moves from `eth0` to the bridge.
    pub fn add_bridge(&self) -> Result<(), NetnsError> {
        let ns = self.namespace.as_str();
        if ip(&["-n", ns, "link", "show", HOST_BRIDGE]).is_ok() {
            return Ok(());
        }
        let cidr = format!("{}/{PREFIX_LEN}", self.addr);
        ip(&["-n", ns, "link", "add", HOST_BRIDGE, "type", "bridge"])?;
        ip(&["-n", ns, "addr", "del", &cidr, "dev", HOST_LINK])?;
        ip(&["-n", ns, "link", "set", HOST_LINK, "master", HOST_BRIDGE])?;
        ip(&["-n", ns, "addr", "add", &cidr, "dev", HOST_BRIDGE])?;
        ip(&["-n", ns, "link", "set", HOST_BRIDGE, "up"])?;
        Ok(())
    }

    /// Runs `f` on a thread that has entered this host's network namespace: sockets it opens
    /// live there (and may be used from any thread afterwards).
    pub fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let path = Path::new(NETNS_DIR).join(&self.namespace);
        let file = fs::File::open(path)?;
        let handle = thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a namespace file we hold open; it changes only this thread's
                // network namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })?;
        handle
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }
}

/// A set of namespace hosts on one bridge, deleted when dropped.
#[derive(Debug)]
pub struct TestNetwork {
    prefix: String,
    switch: String,
    hosts: Vec<Host>,
    /// Namespaces created so far, in order; what `delete` removes.
    created: Vec<String>,
}

impl TestNetwork {
    /// Creates a namespace per host in `hosts` (names such as `host-a`, in address order) and the
    /// switch joining them, all links up, loopback included. On error, whatever was already
    /// made is deleted.
    pub fn create(hosts: &[&str]) -> Result<Self, NetnsError> {
        check_hosts(hosts)?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "lm{}n{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        remove_leftovers(&prefix)?;
        let mut network = TestNetwork {
            switch: format!("{prefix}-{SWITCH}"),
            hosts: hosts
                .iter()
                .zip(1..)
                .map(|(name, index)| Host {
                    name: (*name).to_owned(),
                    namespace: format!("{prefix}-{name}"),
                    addr: host_addr(index),
                })
                .collect(),
            prefix,
            created: Vec::new(),
        };
        // On error `network` is dropped here, which deletes what was made.
        network.build()?;
        Ok(network)
    }

    fn build(&mut self) -> Result<(), NetnsError> {
        let switch = self.switch.clone();
        self.add_namespace(&switch)?;
        ip(&["-n", &switch, "link", "add", BRIDGE, "type", "bridge"])?;
        // With STP off (the default), ports forward as soon as they are up.
        ip(&["-n", &switch, "link", "set", BRIDGE, "up"])?;
        for host in self.hosts.clone() {
            let ns = host.namespace.as_str();
            self.add_namespace(ns)?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Made in the switch with its peer put straight into the host: neither end ever
            // exists in the root namespace.
            ip(&[
                "-n", &switch, "link", "add", &host.name, "type", "veth", "peer", "name",
                HOST_LINK, "netns", ns,
            ])?;
            ip(&[
                "-n", &switch, "link", "set", &host.name, "master", BRIDGE, "up",
            ])?;
            let cidr = format!("{}/{PREFIX_LEN}", host.addr);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", HOST_LINK])?;
            ip(&["-n", ns, "link", "set", HOST_LINK, "up"])?;
        }
        Ok(())
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), NetnsError> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The prefix of every namespace of this set.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace that holds the bridge.
    pub fn switch_namespace(&self) -> &str {
        &self.switch
    }

    /// Every namespace of the set: the hosts', then the switch's.
    pub fn namespaces(&self) -> Vec<&str> {
        let hosts = self.hosts.iter().map(|host| host.namespace.as_str());
        hosts.chain([self.switch.as_str()]).collect()
    }

    /// Deletes every namespace now and says which could not be deleted (dropping does the same
    /// silently). Processes still running inside a host keep its namespace alive, unnamed,
    /// until they exit: stop them first.
    pub fn delete(mut self) -> Result<(), NetnsError> {
        self.delete_created()
    }

    fn delete_created(&mut self) -> Result<(), NetnsError> {
        let failures: Vec<String> = self
            .created
            .drain(..)
            .rev()
            .filter_map(|ns| ip(&["netns", "del", &ns]).err())
            .map(|error| error.to_string())
            .collect();
        match failures.is_empty() {
            true => Ok(()),
            false => Err(NetnsError::Cleanup(failures.join("; "))),
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // Best effort: a destructor cannot report, and `delete` exists for callers who care.
        let _ = self.delete_created();
    }
}

fn check_hosts(hosts: &[&str]) -> Result<(), NetnsError> {
    let mut seen = std::collections::HashSet::new();
    if hosts.is_empty() || hosts.len() > MAX_HOSTS || !hosts.iter().all(|h| seen.insert(*h)) {
        return Err(NetnsError::HostCount(hosts.len()));
    }
    let valid = |name: &str| {
        (1..=MAX_IFNAME).contains(&name.len())
            && name != SWITCH
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match hosts.iter().find(|name| !valid(name)) {
        Some(bad) => Err(NetnsError::HostName((*bad).to_owned())),
        None => Ok(()),
    }
}

/// Host `index` (from 1) of the subnet; `check_hosts` keeps it below 255.
fn host_addr(index: u8) -> Ipv4Addr {
    let [a, b, c] = SUBNET_BASE;
    Ipv4Addr::new(a, b, c, index)
}

/// The named network namespaces on this machine.
pub fn list_namespaces() -> Result<Vec<String>, NetnsError> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        // No namespace was ever named on this machine.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(NetnsError::List(error)),
    };
    entries
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()
        .map_err(NetnsError::List)
}

/// Deletes namespaces a crashed run left: those with `prefix`, and those of this module's
/// naming scheme whose owning process no longer exists.
fn remove_leftovers(prefix: &str) -> Result<(), NetnsError> {
    for ns in list_namespaces()? {
        let ours = ns.starts_with(&format!("{prefix}-"));
        let orphan = owner_pid(&ns).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if ours || orphan {
            // Best effort: another cleaner may have won the race.
            let _ = ip(&["netns", "del", &ns]);
        }
    }
    Ok(())
}

/// The pid in a name of the form `lm<pid>n<seq>-<host>`.
fn owner_pid(namespace: &str) -> Option<u32> {
    let (prefix, host) = namespace.split_once('-')?;
    let (pid, seq) = prefix.strip_prefix("lm")?.split_once('n')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(pid) && digits(seq) && !host.is_empty() {
        pid.parse().ok()
    } else {
        None
    }
}

/// Runs `ip ARGS`, bounded in time.
fn ip(args: &[&str]) -> Result<Output, NetnsError> {
    let mut command = Command::new("ip");
    command.args(args);
    run_bounded(&mut command, IP_TIMEOUT)
}

/// Runs `command` to completion with stdin closed, killing it after `timeout`. Its output must
/// fit the pipe buffers (64 KiB), as short tool runs do, since it is read only at exit.
fn run_bounded(command: &mut Command, timeout: Duration) -> Result<Output, NetnsError> {
    let text = command_line(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::Spawn {
            command: text.clone(),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let exited = loop {
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
            Ok(None) | Err(_) => break false,
        }
    };
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        return Err(NetnsError::Timeout { command: text });
    }
    let output = child
        .wait_with_output()
        .map_err(|source| NetnsError::Spawn {
            command: text.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(NetnsError::Failed {
            command: text,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Whether the process `pid` sees a TCP socket listening on `addr` in its network namespace
/// (`/proc/PID/net/tcp` shows the namespace of that process). A server started with
/// `Host::command` can thus be awaited from outside its namespace.
pub fn is_listening(pid: u32, addr: SocketAddrV4) -> io::Result<bool> {
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    Ok(listens(&table, addr))
}

/// Whether a `/proc/net/tcp` table has a socket in state LISTEN (0A) on `addr`. Addresses are
/// hex in the kernel's byte order (`0100007F:1F90` is 127.0.0.1:8080 on x86).
fn listens(table: &str, addr: SocketAddrV4) -> bool {
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    );
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn host_names_must_fit_an_interface_name() {
        for bad in [
            &["host-a", "host-a"][..],
            &[],
            &["Host"],
            &["a-very-long-hostname"],
            &["switch"],
            &["a b"],
        ] {
            assert!(TestNetwork::create(bad).is_err(), "{bad:?}");
        }
        assert!(check_hosts(&["host-a", "host-b", "client"]).is_ok());
    }

    #[test]
    fn owner_pids_come_only_from_this_scheme() {
        assert_eq!(owner_pid("lm1234n0-host-a"), Some(1234));
        assert_eq!(owner_pid("lm1234n12-switch"), Some(1234));
        for other in [
            "lm1234n0",
            "lm1234-host",
            "lmxn0-a",
            "lm12n-a",
            "vpn0",
            "lm1234n0-",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn finds_listening_sockets_in_a_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
           1: 02004D0A:115C 01004D0A:C350 01 00000000:00000000 00:00000000 00000000\n";
        let at = |a, b, c, d, port| SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port);
        assert!(listens(table, at(127, 0, 0, 1, 8080)));
        // Established, not listening.
        assert!(!listens(table, at(10, 77, 0, 2, 4444)));
        assert!(!listens(table, at(127, 0, 0, 1, 8081)));
    }

    #[test]
    fn sees_a_real_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let Ok(std::net::SocketAddr::V4(addr)) = listener.local_addr() else {
            panic!("an IPv4 address");
        };
        assert!(is_listening(std::process::id(), addr).expect("our own tcp table"));
        drop(listener);
        assert!(!is_listening(std::process::id(), addr).expect("our own tcp table"));
    }

    /// Needs root, iproute2 and ping (`apt-get install iproute2 iputils-ping`).
    #[test]
    fn hosts_reach_each_other_and_vanish_when_dropped() {
        let network = TestNetwork::create(&["host-a", "host-b", "client"]).expect("a network");
        let existing = list_namespaces().expect("a namespace list");
        let names = network.namespaces();
        assert_eq!(names.len(), 4);
        assert!(
            names.iter().all(|n| existing.iter().any(|e| e == n)),
            "{existing:?}"
        );
        for from in network.hosts() {
            for to in network.hosts() {
                ping(from, to.addr());
            }
        }
        // The root namespace got no address from the set.
        let root = ip(&["-4", "-o", "addr", "show"]).expect("root addresses");
        assert!(!String::from_utf8_lossy(&root.stdout).contains("10.77.0."));
        let prefix = format!("{}-", network.prefix());
        drop(network);
        let left: Vec<String> = list_namespaces()
            .expect("a namespace list")
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn delete_reports_and_removes_everything() {
        let network = TestNetwork::create(&["solo"]).expect("a network");
        let host = network.host("solo").expect("the host").clone();
        assert_eq!(host.addr(), Ipv4Addr::new(10, 77, 0, 1));
        ping(&host, host.addr());
        let prefix = format!("{}-", network.prefix());
        network.delete().expect("a clean delete");
        let existing = list_namespaces().expect("a namespace list");
        assert!(!existing.iter().any(|n| n.starts_with(&prefix)));
    }

    /// One ping, retried a few times: a fresh bridge port may still be coming up.
    fn ping(from: &Host, to: Ipv4Addr) {
        let mut last = None;
        for _ in 0..3 {
            let mut command = from.command("ping");
            command.args(["-c", "1", "-W", "1", &to.to_string()]);
            match run_bounded(&mut command, Duration::from_secs(5)) {
                Ok(_) => return,
                Err(error) => last = Some(error),
            }
        }
        panic!(
            "{} cannot ping {to}: {}",
            from.name(),
            last.map_or_else(String::new, |e| e.to_string())
        );
    }
}
