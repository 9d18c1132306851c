//! The bench guest's command line: `key=value` pairs separated by white space.
//!
//! Unknown keys and bad values are errors (the guest prints them and exits with
//! [`crate::exit_code::BAD_CMDLINE`]) rather than being ignored, so a typo in a test cannot
//! silently run the wrong workload.

use crate::netcfg::{self, Cidr};
use core::fmt;
use guest_agent::Policy;

/// What the guest runs. New workloads (http, the guest agent) add a variant here and a module
/// under `src/guest/workload/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Every vCPU parks until the next report.
    Idle,
    /// Every vCPU rewrites and verifies its share of a working set.
    Dirty,
    /// An HTTP/1.1 server on the virtio-net device (vCPU 0; the others idle).
    Http,
    /// A hostile driver: hands the virtio-net device one malformed descriptor chain (`evil`
    /// says which) to show that the VMM stops the VM cleanly.
    EvilNet,
    /// The virtio-blk device (vCPU 0): verifies what the last run wrote, writes a new
    /// generation over `wss` MiB of the disk, flushes, and reads it back.
    Blk,
    /// The virtio-blk device (vCPU 0): reads `wss` MiB of the disk again and again and prints
    /// each pass's checksum (a disk read while the VM migrates).
    BlkRead,
    /// A guest agent on the virtio-net device (vCPU 0): holds its share of the timeline data
    /// set, serves its peers' tasks, and runs `tasks` timeline reads of its own.
    Agent,
}

impl Workload {
    const ALL: [Workload; 7] = [
        Workload::Idle,
        Workload::Dirty,
        Workload::Http,
        Workload::EvilNet,
        Workload::Blk,
        Workload::BlkRead,
        Workload::Agent,
    ];

    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Idle => "idle",
            Workload::Dirty => "dirty",
            Workload::Http => "http",
            Workload::EvilNet => "evil-net",
            Workload::Blk => "blk",
            Workload::BlkRead => "blk-read",
            Workload::Agent => "agent",
        }
    }
}

/// The parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub workload: Workload,
    /// Working-set size of `dirty`, in MiB.
    pub wss_mib: u64,
    /// Pages per second the whole VM writes; 0 means as fast as it can.
    pub rate: u64,
    /// Interval between progress lines, in milliseconds.
    pub report_ms: u64,
    /// VM clock time at which the run ends, in milliseconds; 0 means never.
    pub exit_after_ms: u64,
    /// `http`: the guest's address and prefix.
    pub ip: Option<Cidr>,
    /// `http`: the default gateway.
    pub gw: Option<[u8; 4]>,
    /// `http`: the MAC to send from; the device's own if not given.
    pub mac: Option<[u8; 6]>,
    /// `http`: the TCP port.
    pub port: u64,
    /// `http`: bytes in the body of `GET /`.
    pub size: u64,
    /// `http`: TCP sockets, i.e. the most connections served at once.
    pub conns: u64,
    /// `evil-net`: 1 = a buffer outside RAM, 2 = a descriptor loop, 3 = an oversized chain.
    pub evil: u64,
    /// `agent`: this agent's id (agents are numbered 0, 1, ... without gaps).
    pub agent: u64,
    /// `agent`: the other agents, each `peer=ID@A.B.C.D:PORT`.
    pub peers: [Option<Peer>; MAX_PEERS],
    /// `agent`: timeline reads this agent submits.
    pub tasks: u64,
    /// `agent`: timeline reads submitted per second; 0 submits them all at once.
    pub task_rate: u64,
    /// `agent`: users in the timeline data set (every agent must be given the same number).
    pub users: u64,
    /// `agent`: most reads outstanding at once; 0 for no limit.
    pub window: u64,
    /// `agent`: how a read of a remote object is served.
    pub policy: Policy,
    /// `agent`: milliseconds of warm-up reads before the measured ones; 0 for none.
    pub warmup_ms: u64,
    /// `agent`: during the warm-up, each agent runs a placement pass once per this many
    /// milliseconds, in its own slot; 0 for no placement.
    pub place_ms: u64,
}

/// `policy=` values, as `guest-agentd` names them.
const POLICIES: [(&str, Policy); 3] = [
    ("move", Policy::Move),
    ("fetch", Policy::Fetch),
    ("ship-or-fetch", Policy::ShipOrFetch),
];

fn policy_name(policy: Policy) -> &'static str {
    POLICIES
        .iter()
        .find(|(_, p)| *p == policy)
        .map_or("move", |(name, _)| name)
}

/// Most peers `workload=agent` takes.
pub const MAX_PEERS: usize = 8;

/// Another agent: its id and where it listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: u16,
    pub addr: [u8; 4],
    pub port: u16,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.addr;
        write!(f, "{}@{a}.{b}.{c}.{d}:{}", self.id, self.port)
    }
}

/// `ID@A.B.C.D:PORT`.
pub fn parse_peer(s: &str) -> Option<Peer> {
    let (id, rest) = s.split_once('@')?;
    let (addr, port) = rest.split_once(':')?;
    let digits = |t: &str| !t.is_empty() && t.len() <= 5 && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(id) || !digits(port) {
        return None;
    }
    Some(Peer {
        id: id.parse().ok()?,
        addr: netcfg::parse_ipv4(addr)?,
        port: port.parse().ok().filter(|&p| p != 0)?,
    })
}

impl Config {
    /// The peers given, in command-line order.
    pub fn peers(&self) -> impl Iterator<Item = Peer> + '_ {
        self.peers.iter().flatten().copied()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workload: Workload::Idle,
            wss_mib: 16,
            rate: 0,
            report_ms: 1000,
            exit_after_ms: 0,
            ip: None,
            gw: None,
            mac: None,
            port: 80,
            size: 64,
            conns: 64,
            evil: 1,
            agent: 0,
            peers: [None; MAX_PEERS],
            tasks: 0,
            task_rate: 0,
            users: 300,
            window: 0,
            policy: Policy::Move,
            warmup_ms: 0,
            place_ms: 0,
        }
    }
}

impl Config {
    /// VM clock time at which the run ends, in nanoseconds; `u64::MAX` if it never does.
    pub fn deadline_ns(&self) -> u64 {
        match self.exit_after_ms {
            0 => u64::MAX,
            ms => ms.saturating_mul(crate::NS_PER_MS),
        }
    }
}

/// The canonical command line for a configuration, every key spelled out.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workload={} wss={} rate={} report-ms={} exit-after-ms={}",
            self.workload.name(),
            self.wss_mib,
            self.rate,
            self.report_ms,
            self.exit_after_ms
        )?;
        if self.workload == Workload::EvilNet {
            write!(f, " evil={}", self.evil)?;
        }
        if self.workload == Workload::Agent {
            write!(
                f,
                " port={} agent={} tasks={} task-rate={} users={} window={} policy={} \
                 warmup-ms={} place-ms={}",
                self.port,
                self.agent,
                self.tasks,
                self.task_rate,
                self.users,
                self.window,
                policy_name(self.policy),
                self.warmup_ms,
                self.place_ms
            )?;
            for peer in self.peers() {
                write!(f, " peer={peer}")?;
            }
        }
        if self.workload == Workload::Http {
            write!(
                f,
                " port={} size={} conns={}",
                self.port, self.size, self.conns
            )?;
        }
        if matches!(self.workload, Workload::Http | Workload::Agent) {
            if let Some(Cidr {
                addr: [a, b, c, d],
                prefix,
            }) = self.ip
            {
                write!(f, " ip={a}.{b}.{c}.{d}/{prefix}")?;
            }
            if let Some([a, b, c, d]) = self.gw {
                write!(f, " gw={a}.{b}.{c}.{d}")?;
            }
            if let Some(m) = self.mac {
                write!(
                    f,
                    " mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )?;
            }
        }
        Ok(())
    }
}

/// Largest `wss` accepted: 1 TiB, far above any RAM size, and small enough that byte and page
/// counts cannot overflow.
pub const MAX_WSS_MIB: u64 = 1 << 20;
/// Largest time value accepted, in milliseconds (about 34 years): its nanoseconds fit a u64.
pub const MAX_MS: u64 = 1 << 40;
/// Largest rate accepted, in pages per second.
pub const MAX_RATE: u64 = 1 << 40;

/// A numeric key: its name, the accepted range, and the field it sets.
struct NumKey {
    name: &'static str,
    min: u64,
    max: u64,
    set: fn(&mut Config, u64),
}

const fn key(name: &'static str, min: u64, max: u64, set: fn(&mut Config, u64)) -> NumKey {
    NumKey {
        name,
        min,
        max,
        set,
    }
}

/// Largest `size` accepted: 1 GiB.
pub const MAX_SIZE: u64 = 1 << 30;
/// Most sockets `conns` may ask for.
pub const MAX_CONNS: u64 = 1024;

/// Most timeline reads `tasks` may ask for, and most users.
pub const MAX_TASKS: u64 = 1 << 20;

const NUM_KEYS: [NumKey; 15] = [
    key("wss", 1, MAX_WSS_MIB, |c, v| c.wss_mib = v),
    key("rate", 0, MAX_RATE, |c, v| c.rate = v),
    key("report-ms", 1, MAX_MS, |c, v| c.report_ms = v),
    key("exit-after-ms", 0, MAX_MS, |c, v| c.exit_after_ms = v),
    key("port", 1, 65535, |c, v| c.port = v),
    key("size", 0, MAX_SIZE, |c, v| c.size = v),
    key("conns", 1, MAX_CONNS, |c, v| c.conns = v),
    key("evil", 1, 3, |c, v| c.evil = v),
    key("agent", 0, MAX_PEERS as u64, |c, v| c.agent = v),
    key("tasks", 0, MAX_TASKS, |c, v| c.tasks = v),
    key("task-rate", 0, MAX_TASKS, |c, v| c.task_rate = v),
    key("users", 1, MAX_TASKS, |c, v| c.users = v),
    key("window", 0, MAX_TASKS, |c, v| c.window = v),
    key("warmup-ms", 0, MAX_MS, |c, v| c.warmup_ms = v),
    key("place-ms", 0, MAX_MS, |c, v| c.place_ms = v),
];

/// Why a command line was rejected. Borrowed strings point into the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error<'a> {
    NotUtf8,
    NotKeyValue(&'a str),
    UnknownKey(&'a str),
    BadWorkload(&'a str),
    BadAddress {
        key: &'static str,
        value: &'a str,
    },
    TooManyPeers,
    BadNumber {
        key: &'static str,
        value: &'a str,
        min: u64,
        max: u64,
    },
}

impl fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NotUtf8 => write!(f, "the command line is not UTF-8"),
            Error::NotKeyValue(word) => write!(f, "\"{word}\" is not a key=value pair"),
            Error::UnknownKey(key) => {
                write!(f, "unknown key \"{key}\"; the keys are workload")?;
                NUM_KEYS
                    .iter()
                    .try_for_each(|k| write!(f, ", {}", k.name))?;
                write!(f, ", ip, gw, mac, peer, policy")
            }
            Error::BadAddress {
                key: "policy",
                value,
            } => write!(
                f,
                "bad value \"{value}\" for policy: expected move, fetch or ship-or-fetch"
            ),
            Error::BadAddress { key, value } => {
                let example = match key {
                    "ip" => "10.77.0.10/24",
                    "gw" => "10.77.0.1",
                    "peer" => "1@10.77.0.101:7000",
                    _ => "52:54:00:12:34:56",
                };
                write!(
                    f,
                    "bad value \"{value}\" for {key}: expected an address like {example}"
                )
            }
            Error::TooManyPeers => write!(f, "more than {MAX_PEERS} peers"),
            Error::BadWorkload(value) => {
                write!(f, "unknown workload \"{value}\"; the workloads are")?;
                for (i, w) in Workload::ALL.iter().enumerate() {
                    write!(f, "{}{}", if i == 0 { " " } else { ", " }, w.name())?;
                }
                Ok(())
            }
            Error::BadNumber {
                key,
                value,
                min,
                max,
            } => {
                write!(
                    f,
                    "bad value \"{value}\" for {key}: expected a whole number from {min} to {max}"
                )
            }
        }
    }
}

/// Parses a command line. A key given twice takes its last value, as on Linux.
pub fn parse(line: &[u8]) -> Result<Config, Error<'_>> {
    let line = core::str::from_utf8(line).map_err(|_| Error::NotUtf8)?;
    let mut config = Config::default();
    for word in line.split_ascii_whitespace() {
        let (key, value) = word.split_once('=').ok_or(Error::NotKeyValue(word))?;
        if key == "workload" {
            config.workload = Workload::ALL
                .into_iter()
                .find(|w| w.name() == value)
                .ok_or(Error::BadWorkload(value))?;
            continue;
        }
        let bad_address = |key| Error::BadAddress { key, value };
        match key {
            "ip" => {
                config.ip = Some(netcfg::parse_cidr(value).ok_or(bad_address("ip"))?);
                continue;
            }
            "gw" => {
                config.gw = Some(netcfg::parse_ipv4(value).ok_or(bad_address("gw"))?);
                continue;
            }
            "mac" => {
                config.mac = Some(netcfg::parse_mac(value).ok_or(bad_address("mac"))?);
                continue;
            }
            "policy" => {
                config.policy = POLICIES
                    .iter()
                    .find(|(name, _)| *name == value)
                    .map(|(_, p)| *p)
                    .ok_or(bad_address("policy"))?;
                continue;
            }
            "peer" => {
                let peer = parse_peer(value).ok_or(bad_address("peer"))?;
                // A peer named twice takes its last address, as other keys take their last value.
                let slot = match config
                    .peers
                    .iter()
                    .position(|p| p.is_some_and(|p| p.id == peer.id))
                {
                    Some(i) => i,
                    None => config
                        .peers
                        .iter()
                        .position(Option::is_none)
                        .ok_or(Error::TooManyPeers)?,
                };
                config.peers[slot] = Some(peer);
                continue;
            }
            _ => {}
        }
        let k = NUM_KEYS
            .iter()
            .find(|k| k.name == key)
            .ok_or(Error::UnknownKey(key))?;
        let bad = Error::BadNumber {
            key: k.name,
            value,
            min: k.min,
            max: k.max,
        };
        // `u64::from_str` accepts a leading '+'; a command line should not need one.
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
        match value.parse::<u64>() {
            Ok(v) if (k.min..=k.max).contains(&v) => (k.set)(&mut config, v),
            _ => return Err(bad),
        }
    }
    Ok(config)
}

#[cfg(test)]
#[path = "cmdline_tests.rs"]
mod tests;
