//! The timeline on bench-unikernel agents (`workload=agent`) for `agent-bench --vms`: three VMs,
//! each in a namespace host of its own on one switch, run their reads against each other, and
//! the figures come from their console lines. Namespaces, bridges and taps are this run's own
//! and go when it ends, and the VMs are killed, even on failure.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::netns::TestNetwork;

const TAP: &str = "vmtap0";
const PORT: u16 = 7000;
const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];

/// One run's shape.
#[derive(Clone, Debug)]
pub struct VmRun {
    pub users: u32,
    /// Timeline reads each agent submits.
    pub reads_per_agent: u64,
    /// Reads each agent keeps outstanding (a closed loop).
    pub window: u64,
    /// `move`, `fetch` or `ship-or-fetch`.
    pub policy: &'static str,
    /// Milliseconds of warm-up reads before the measured ones (0: none), and the placement
    /// period during the warm-up (0: no passes).
    pub warmup_ms: u64,
    pub place_ms: u64,
    /// How long the whole run may take.
    pub limit: Duration,
}

/// What the agents reported, summed over them.
#[derive(Clone, Debug, Default)]
pub struct VmFigures {
    /// Measured reads home.
    pub reads: u64,
    /// Warm-up reads home, placement passes, and objects the passes moved.
    pub warm: u64,
    pub passes: u64,
    pub moved: u64,
    /// Continuation hops of the completed tasks.
    pub hops: u64,
    pub fetches: u64,
    /// Application bytes sent (continuations, results, fetches).
    pub bytes: u64,
    /// Every read's latency (VM clock), microseconds.
    pub latencies_us: Vec<u64>,
    /// The longest agent's time from its first submit to its last result, microseconds.
    pub span_us: u64,
    /// While placement converges: the placement periods in which every agent passed (the
    /// first one only starts the count).
    pub converging: Vec<Period>,
}

/// One placement period of the warm-up, from the agents' `agent pass` lines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Period {
    pub period: u64,
    /// Hops and application bytes per task completed since the previous such period.
    pub hops: f64,
    pub bytes: f64,
    /// Objects the passes moved so far.
    pub moved: u64,
}

/// An agent's counters at its pass of one period, as its `agent pass` line gives them.
#[derive(Clone, Copy, Debug, Default)]
struct AtPass {
    completed: u64,
    hops: u64,
    bytes: u64,
    moved: u64,
}

/// Each agent's counters at its pass of each period.
#[derive(Default)]
struct Passes(Vec<BTreeMap<u64, AtPass>>);

impl Passes {
    fn record(&mut self, agent: usize, line: &str) {
        if self.0.len() <= agent {
            self.0.resize_with(agent + 1, BTreeMap::new);
        }
        let passes = &mut self.0[agent];
        let moved =
            passes.values().last().map_or(0, |p| p.moved) + field(line, "moved").unwrap_or(0);
        if let (Some(period), Some(completed), Some(hops), Some(bytes)) = (
            field(line, "period"),
            field(line, "completed"),
            field(line, "hops"),
            field(line, "bytes"),
        ) {
            let at = AtPass {
                completed,
                hops,
                bytes,
                moved,
            };
            passes.insert(period, at);
        }
    }

    /// The periods in which every one of `agents` passed, with the hops and bytes per task
    /// completed over the agents since the previous one.
    fn converging(&self, agents: usize) -> Vec<Period> {
        let Some(first) = self.0.first() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut last: Option<AtPass> = None;
        for &period in first.keys() {
            let at: Option<Vec<&AtPass>> =
                (0..agents).map(|a| self.0.get(a)?.get(&period)).collect();
            let Some(at) = at else { continue };
            let sum = at.iter().fold(AtPass::default(), |s, p| AtPass {
                completed: s.completed + p.completed,
                hops: s.hops + p.hops,
                bytes: s.bytes + p.bytes,
                moved: s.moved + p.moved,
            });
            if let Some(before) = last {
                let reads = sum.completed.saturating_sub(before.completed).max(1) as f64;
                out.push(Period {
                    period,
                    hops: sum.hops.saturating_sub(before.hops) as f64 / reads,
                    bytes: sum.bytes.saturating_sub(before.bytes) as f64 / reads,
                    moved: sum.moved,
                });
            }
            last = Some(sum);
        }
        out
    }
}

struct Vms(Vec<Child>);

impl Drop for Vms {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn guest_ip(agent: usize) -> String {
    format!("10.77.0.{}", 100 + agent)
}

/// The integer after `key=` in a console line.
fn field(line: &str, key: &str) -> Option<u64> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

/// Boots the three agents with `vmm` and `image`, waits until every one has all its reads home,
/// and returns the figures. An agent that reports a wrong, doubled, failed or missing result
/// fails the run.
pub fn run(vmm: &Path, image: &Path, run: &VmRun) -> Result<VmFigures, String> {
    let net = TestNetwork::create(&HOSTS).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut vms = Vms(Vec::new());
    for (agent, name) in HOSTS.iter().enumerate() {
        let host = net.host(name).ok_or("a test host is missing")?;
        host.attach_tap(TAP).map_err(|e| e.to_string())?;
        let peers: Vec<String> = (0..HOSTS.len())
            .filter(|&p| p != agent)
            .map(|p| format!("peer={p}@{}:{PORT}", guest_ip(p)))
            .collect();
        let cmdline = format!(
            "workload=agent ip={}/24 port={PORT} agent={agent} tasks={} window={} users={} \
             policy={} warmup-ms={} place-ms={} report-ms=500 exit-after-ms={} {}",
            guest_ip(agent),
            run.reads_per_agent,
            run.window,
            run.users,
            run.policy,
            run.warmup_ms,
            run.place_ms,
            run.limit.as_millis(),
            peers.join(" ")
        );
        let mut command = host.command(vmm);
        command
            .args(["run", "--boot", "bench", "--kernel"])
            .arg(image)
            .args(["--mem", "64", "--vcpus", "1", "--cmdline", &cmdline])
            .args([
                "--net",
                &format!("tap={TAP},mac=52:54:00:77:02:{:02x}", agent + 1),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", vmm.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        vms.0.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((agent, line)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let deadline = Instant::now() + run.limit;
    let mut figures = VmFigures::default();
    let mut done = [false; HOSTS.len()];
    let mut last = vec![String::new(); HOSTS.len()];
    let mut all_done_at: Option<Instant> = None;
    let mut passes = Passes::default();
    loop {
        let now = Instant::now();
        // Once every agent is done, one more report from each gives the final counters. The
        // latency lines take a while: the console costs two exits a byte.
        if all_done_at.is_some_and(|t| now > t + Duration::from_millis(1500))
            && figures.latencies_us.len() as u64 >= figures.reads
        {
            break;
        }
        let left = deadline.saturating_duration_since(now);
        let (agent, line) = match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(got) => got,
            Err(mpsc::RecvTimeoutError::Timeout) if now < deadline => continue,
            Err(e) => {
                return Err(format!(
                    "the agents did not finish within {:?} ({e})",
                    run.limit
                ))
            }
        };
        if let Some(values) = line.strip_prefix("bench: agent latencies-us ") {
            for v in values.split_whitespace() {
                let us = v
                    .parse()
                    .map_err(|_| format!("a bad latency in {line:?}"))?;
                figures.latencies_us.push(us);
            }
        } else if line.starts_with("bench: agent done") {
            for key in ["wrong", "twice", "failed", "outstanding"] {
                if field(&line, key) != Some(0) {
                    return Err(format!("agent {agent} finished badly: {line}"));
                }
            }
            figures.reads += field(&line, "measured").unwrap_or(0);
            figures.span_us = figures.span_us.max(field(&line, "span-us").unwrap_or(0));
            done[agent] = true;
        } else if line.starts_with("bench: agent t=") {
            last[agent] = line;
            if all_done_at.is_none() && done.iter().all(|&d| d) {
                all_done_at = Some(Instant::now());
            }
        } else if line.starts_with("bench: agent pass ") {
            passes.record(agent, &line);
        } else if line.starts_with("bench: agent cannot") || line.contains("panic") {
            return Err(format!("agent {agent}: {line}"));
        }
    }
    for (agent, line) in last.iter().enumerate() {
        figures.hops += field(line, "hops").ok_or(format!("agent {agent}: no report"))?;
        figures.fetches += field(line, "fetches").unwrap_or(0);
        figures.bytes += field(line, "bytes").unwrap_or(0);
        figures.warm += field(line, "warm").unwrap_or(0);
        figures.passes += field(line, "passes").unwrap_or(0);
        figures.moved += field(line, "moved").unwrap_or(0);
    }
    figures.converging = passes.converging(HOSTS.len());
    if figures.latencies_us.len() as u64 != figures.reads {
        return Err(format!(
            "{} latencies for {} reads",
            figures.latencies_us.len(),
            figures.reads
        ));
    }
    drop(vms);
    net.delete().map_err(|e| e.to_string())?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_count_from_the_agents_pass_lines_where_every_agent_passed() {
        let mut passes = Passes::default();
        let lines = [
            (0, "bench: agent pass t=1ms n=1 period=0 moved=2 objects=9 completed=10 hops=30 bytes=1000"),
            (1, "bench: agent pass t=1ms n=1 period=0 moved=0 objects=9 completed=10 hops=20 bytes=500"),
            (0, "bench: agent pass t=2ms n=2 period=1 moved=3 objects=9 completed=30 hops=50 bytes=1800"),
            (1, "bench: agent pass t=2ms n=2 period=1 moved=1 objects=9 completed=20 hops=30 bytes=700"),
            // Agent 1 never passed in period 2: it is left out.
            (0, "bench: agent pass t=3ms n=3 period=2 moved=0 objects=9 completed=40 hops=60 bytes=1900"),
        ];
        for (agent, line) in lines {
            passes.record(agent, line);
        }
        let want = Period {
            period: 1,
            hops: 30.0 / 30.0,
            bytes: 1000.0 / 30.0,
            moved: 6,
        };
        assert_eq!(passes.converging(2), [want]);
        assert!(Passes::default().converging(2).is_empty());
    }
}
