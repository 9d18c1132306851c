//! `workload=agent`: a guest agent on the virtio-net device, run by vCPU 0 (the others idle).
//!
//! The agent is `guest_agent::Agent`, the same core and the same timeline tasks as the Linux
//! daemon `guest-agentd`, and it speaks the daemon's peer protocol (`bench_core::agent`): for
//! each peer it keeps one TCP connection it opened and writes hops and acknowledgements on, and
//! it accepts the connections its peers open to it on `port`. Whatever a broken connection
//! loses, the agent resends (every unacknowledged hop goes again on reconnect and on its
//! retransmission timer) and the receiver de-duplicates, so hops run exactly once. A
//! connection that starts with `C` is a client's instead: JSON requests and answers as
//! `guest-agentd`'s, all of them (`bench_core::agent::client`).
//!
//! Every agent seeds its share of the timeline data set and, once connected to every peer,
//! submits `tasks` timeline reads at `task-rate` per second (at most `window` outstanding),
//! checking each result against the seeded data when it comes home; `policy=` sets how remote
//! reads are served. With `warmup-ms=`, warm-up reads come first, with a placement pass by
//! each agent in turn every `place-ms`, and the agents pass barriers so that the measured
//! reads and figures contain nothing of the warm-up (`bench_core::agent::phases`). All of it
//! is ordinary guest memory, so a live migration carries the agent, its links and its load.
//! Console lines (after `bench: `):
//! - `agent t=<ms>ms submitted=<n> results=<n> wrong=<n> twice=<n> failed=<n>
//!   outstanding=<n> completed=<n> duplicates=<n> unacked=<n> bad-frames=<n>
//!   hops=<n> fetches=<n> bytes=<n> measured=<n> warm=<n> passes=<n> moved=<n>` every
//!   `report-ms` (the read counts include warm-up reads; `measured` counts measured results
//!   home and `warm` warm-up ones; `hops`, `fetches` and `bytes` are those of the tasks that
//!   completed here and the application bytes this agent sent, since the measured reads
//!   began; `passes` and `moved` are this agent's placement passes and the objects they sent
//!   away);
//! - with a warm-up, `agent ready`, `agent warm-up`, `agent pass n=<n> period=<k> moved=<n>
//!   objects=<n> completed=<n> hops=<n> bytes=<n>` (the last three: tasks completed here,
//!   their hops and the application bytes this agent sent, warm-up included), `agent warm`,
//!   `agent counted` and `agent measuring` as the run goes on;
//! - `agent done ... p50-us=<n> p99-us=<n> span-us=<n>` once, when every measured read is
//!   home and everything acknowledged, then `agent latencies-us <n> <n> ...` lines with every
//!   measured read's latency;
//! - at `exit-after-ms`: `agent final ...`, then `done gen=<results> errors=<n>`, where errors
//!   counts wrong, doubled, failed and missing results (the guest then exits with 3).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::{add_errors, finish, Shared};
use crate::control;
use crate::netdev::{self, NetDev};
use bench_core::agent::client::Clients;
use bench_core::agent::phases::Change;
use bench_core::agent::{self as proto, Inbound, Load, Phases};
use bench_core::cmdline::Peer;
use bench_core::NS_PER_MS;
use guest_agent::{Agent, AgentId, Transport};

/// Where vCPU 0 finds the device, and the agents of the run, checked by `Plan::new`.
pub struct Plan {
    base: u64,
    len: u64,
    peers: Vec<Peer>,
}

/// Why `workload=agent` cannot run.
#[derive(Debug)]
pub enum AgentSetupError {
    NoAddress,
    NoDevice,
    /// Agent ids must be 0 to n-1, each once, this agent's among them.
    BadIds,
    /// Placement passes run during the warm-up only.
    PlaceWithoutWarmup,
}

impl core::fmt::Display for AgentSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            AgentSetupError::NoAddress => "workload=agent needs ip=ADDR/PREFIX",
            AgentSetupError::NoDevice => "workload=agent needs a network device (vmm run --net)",
            AgentSetupError::BadIds => {
                "workload=agent needs agent= and peer=ID@ADDR:PORT to number the agents 0, 1, \
                 ... without gaps or repeats"
            }
            AgentSetupError::PlaceWithoutWarmup => {
                "place-ms= needs warmup-ms=: placement passes run during the warm-up"
            }
        })
    }
}

impl Plan {
    pub fn new(
        config: &bench_core::cmdline::Config,
        virtio: &[bench_abi::VirtioDevice],
    ) -> Result<Self, AgentSetupError> {
        if config.ip.is_none() {
            return Err(AgentSetupError::NoAddress);
        }
        let dev = virtio.first().ok_or(AgentSetupError::NoDevice)?;
        let peers: Vec<Peer> = config.peers().collect();
        if !proto::ids_are_dense(config.agent, peers.iter().map(|p| u64::from(p.id))) {
            return Err(AgentSetupError::BadIds);
        }
        if config.place_ms > 0 && config.warmup_ms == 0 {
            return Err(AgentSetupError::PlaceWithoutWarmup);
        }
        Ok(Plan {
            base: dev.base,
            len: dev.len,
            peers,
        })
    }
}

const RX_BUF: usize = 64 * 1024;
const TX_BUF: usize = 64 * 1024;
/// Bytes queued for a peer before new frames are dropped (the agent resends them).
const OUT_QUEUE: usize = 1 << 20;
/// Task steps per turn of the loop: enough to batch, few enough to keep the network polled.
const STEPS_PER_TURN: usize = 500;
/// How often an agent shares its load, co-access pairs and directory (as `guest-agentd`).
const SHARE_MS: u64 = 500;
/// Wait this long before reconnecting to a peer that is not there.
const RECONNECT_MS: u64 = 100;
/// A connection still opening after this long is started afresh: TCP backs its SYNs off for
/// seconds, and meanwhile this agent's acknowledgements to that peer cannot leave, so the peer
/// resends hops that already arrived. Each attempt that fails so waits twice as long (up to
/// `MAX_CONNECT_MS`), so a slow network still gets a connection through.
const CONNECT_MS: u64 = 300;
const MAX_CONNECT_MS: u64 = 5000;
/// First local port of outgoing connections; each new one takes the next.
const EPHEMERAL: u16 = 49152;

/// The connection this agent opened to one peer, and the bytes waiting for it.
struct Out {
    peer: Peer,
    handle: SocketHandle,
    queue: Vec<u8>,
    /// Whether the agent has been told this connection is up (and resent what it must).
    up: bool,
    next_try_ns: u64,
    /// When the current connection attempt began, and how long it may take.
    connecting_since_ns: u64,
    connect_ms: u64,
}

/// A connection a peer opened to this agent.
struct In {
    handle: SocketHandle,
    stream: Inbound,
    /// The last phase told to the peer on this connection.
    told: u8,
    /// Answers waiting to go to a client on this connection.
    reply: Vec<u8>,
}

/// Hands frames from `Agent::flush` to the peers' queues (only while their connection is up:
/// anything else is resent once it is).
struct Queues<'a>(&'a mut [Out]);

impl Transport for Queues<'_> {
    fn send(&mut self, to: AgentId, frame: &[u8]) {
        if let Some(out) = self.0.iter_mut().find(|o| o.peer.id == to.0) {
            if out.up && out.queue.len() + frame.len() <= OUT_QUEUE {
                proto::push_frame(&mut out.queue, frame);
            }
        }
    }
}

/// What the console lines report.
struct Counts {
    completed: u64,
    bad_frames: u64,
}

fn socket() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; RX_BUF]),
        tcp::SocketBuffer::new(vec![0; TX_BUF]),
    );
    // Frames are small and latency is the point: no Nagle. Keep-alives find a vanished peer;
    // the agent resends over a new connection whatever the old one lost.
    socket.set_nagle_enabled(false);
    socket.set_keep_alive(Some(Duration::from_millis(1000)));
    socket.set_timeout(Some(Duration::from_millis(10_000)));
    socket
}

pub fn run(plan: &Plan, shared: &Shared, vcpu: u32) -> ! {
    if vcpu != 0 {
        finish(shared, vcpu, || 0);
    }
    let cfg = &shared.config;
    let fail = |what: &dyn core::fmt::Display| -> ! {
        println!("bench: agent cannot start: {what}");
        control::exit(bench_core::exit_code::BAD_CMDLINE)
    };
    let mut dev = NetDev::new(plan.base, plan.len).unwrap_or_else(|e| fail(&e));
    let (mut iface, _mac) = netdev::interface(&mut dev, cfg);
    let me = AgentId(cfg.agent as u16);
    let agents = plan.peers.len() as u16 + 1;
    let registry = Arc::new(guest_agent::timeline::registry().unwrap_or_else(|e| fail(&e)));
    let ids: Vec<AgentId> = (0..agents).map(AgentId).collect();
    let agent_config = guest_agent::Config {
        policy: cfg.policy,
        ..guest_agent::Config::default()
    };
    let mut agent = Agent::new(me, &ids, registry, agent_config);
    let params = proto::params(cfg.users as u32, agents);
    let placed = params.seed_agent(&mut agent).unwrap_or_else(|e| fail(&e));
    let mut load = Load::new(params, me, cfg.tasks, cfg.task_rate)
        .with_window(cfg.window)
        .waiting();
    let mut clients = Clients::new(params);
    let mut phases = Phases::new(me.0, agents, cfg.warmup_ms, cfg.place_ms, cfg.policy);

    let mut sockets = SocketSet::new(Vec::new());
    let port = cfg.port as u16;
    let mut outs: Vec<Out> = plan
        .peers
        .iter()
        .map(|&peer| Out {
            peer,
            handle: sockets.add(socket()),
            queue: Vec::new(),
            up: false,
            next_try_ns: 0,
            connecting_since_ns: 0,
            connect_ms: CONNECT_MS,
        })
        .collect();
    // Two listeners per peer: a peer's new connection can arrive before its old one is gone.
    let mut ins: Vec<In> = (0..2 * plan.peers.len() + 1)
        .map(|_| In {
            handle: sockets.add(socket()),
            stream: Inbound::default(),
            told: 0,
            reply: Vec::new(),
        })
        .collect();
    for i in &ins {
        // A fresh socket on a nonzero port: listening cannot fail.
        let _ = sockets.get_mut::<tcp::Socket>(i.handle).listen(port);
    }
    println!(
        "bench: agent {} listening on port {port} agents={agents} objects={placed} tasks={}",
        me.0, cfg.tasks
    );

    let start = control::clock_ns();
    let deadline = cfg.deadline_ns();
    let report_ns = cfg.report_ms.saturating_mul(NS_PER_MS);
    let mut next_report = start.saturating_add(report_ns);
    let mut next_share = start;
    let mut next_port = EPHEMERAL;
    let mut counts = Counts {
        completed: 0,
        bad_frames: 0,
    };
    let mut announced = false;
    let mut scratch = vec![0u8; RX_BUF];
    loop {
        let t = control::clock_ns();
        let ms = t / NS_PER_MS;
        if t >= deadline {
            println!(
                "bench: agent final {}",
                line(&load, &agent, &phases, &counts)
            );
            add_errors(load.wrong + load.twice + load.failed + load.missing());
            let results = load.results;
            finish(shared, vcpu, || results);
        }
        let ts = netdev::now();
        let mut busy = iface.poll(ts, &mut dev, &mut sockets) != smoltcp::iface::PollResult::None;

        for i in &mut ins {
            let s = sockets.get_mut::<tcp::Socket>(i.handle);
            busy |= receive(
                i,
                s,
                port,
                &mut agent,
                &mut clients,
                &mut counts,
                &mut scratch,
            );
            busy |= tell_phase(i, s, phases.reported());
            if !i.reply.is_empty() {
                if let Ok(n) = s.send_slice(&i.reply) {
                    i.reply.drain(..n);
                    busy |= n > 0;
                }
            }
        }
        for out in &mut outs {
            let s = sockets.get_mut::<tcp::Socket>(out.handle);
            if !s.is_open() {
                out.up = false;
                out.queue.clear();
                if t >= out.next_try_ns {
                    let [a, b, c, d] = out.peer.addr;
                    let remote = IpEndpoint::new(IpAddress::v4(a, b, c, d), out.peer.port);
                    next_port = if next_port == u16::MAX {
                        EPHEMERAL
                    } else {
                        next_port + 1
                    };
                    if s.connect(iface.context(), remote, next_port).is_ok() {
                        out.queue.extend_from_slice(&proto::hello(me.0));
                        out.connecting_since_ns = t;
                    }
                    out.next_try_ns = t.saturating_add(RECONNECT_MS * NS_PER_MS);
                }
                continue;
            }
            if s.state() == tcp::State::SynSent
                && t.saturating_sub(out.connecting_since_ns) > out.connect_ms * NS_PER_MS
            {
                s.abort();
                out.connect_ms = (out.connect_ms * 2).min(MAX_CONNECT_MS);
                continue;
            }
            if s.may_recv() && s.can_recv() {
                // Bench agents in a run with a warm-up write their phase on our connection
                // (daemons write nothing); any other byte is ignored.
                let id = out.peer.id;
                let _ = s.recv(|data| {
                    for &b in data.iter() {
                        phases.peer_said(id, b);
                    }
                    (data.len(), ())
                });
            }
            if !matches!(
                s.state(),
                tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Established
            ) {
                // The peer closed (it restarted, or no longer wants this connection): start over.
                s.abort();
                continue;
            }
            if s.state() == tcp::State::Established && !out.up {
                out.up = true;
                out.connect_ms = CONNECT_MS;
                agent.reconnected(AgentId(out.peer.id));
            }
            if !out.queue.is_empty() && s.can_send() {
                if let Ok(n) = s.send_slice(&out.queue) {
                    out.queue.drain(..n);
                    busy |= n > 0;
                }
            }
        }

        // Reads start once every peer is connected (with a warm-up: once every agent is
        // connected to every other), so no read waits for a peer that is still booting; once
        // started, they go on whatever the connections do.
        let connected = outs.iter().all(|o| o.up);
        if let Some(change) = phases.advance(ms, connected, &mut agent, &mut load) {
            busy = true;
            announce(change, ms, &agent, &load, &phases);
        }
        let now_us = t / 1000;
        let submitted = load.submit_due(&mut agent, now_us);
        busy |= submitted.is_ok_and(|n| n > 0);
        if agent.runnable() > 0 {
            agent.run(STEPS_PER_TURN);
            busy = true;
        }
        let events = agent.take_events();
        let events = clients.observe(events);
        counts.completed += load.observe(&mut agent, events, now_us);
        if t >= next_share {
            agent.report_load();
            agent.share_pairs();
            agent.share_directory();
            next_share = t.saturating_add(SHARE_MS * NS_PER_MS);
        }
        agent.flush(ms, &mut Queues(&mut outs));
        for out in outs.iter_mut().filter(|o| o.up && !o.queue.is_empty()) {
            let s = sockets.get_mut::<tcp::Socket>(out.handle);
            if let Ok(n) = s.send_slice(&out.queue) {
                out.queue.drain(..n);
                busy |= n > 0;
            }
        }
        busy |= iface.poll(ts, &mut dev, &mut sockets) != smoltcp::iface::PollResult::None;

        if !announced && load.finished() && agent.unacked() == 0 {
            announced = true;
            println!(
                "bench: agent done {} p50-us={} p99-us={} span-us={}",
                line(&load, &agent, &phases, &counts),
                load.percentile(50),
                load.percentile(99),
                load.span_us()
            );
            // Every read's latency, for a benchmark that pools them over the agents.
            for chunk in load.latencies().chunks(32) {
                let mut text = alloc::string::String::new();
                for us in chunk {
                    let _ = core::fmt::Write::write_fmt(&mut text, format_args!(" {us}"));
                }
                println!("bench: agent latencies-us{text}");
            }
        }
        if t >= next_report {
            println!(
                "bench: agent t={ms}ms {}",
                line(&load, &agent, &phases, &counts)
            );
            next_report = t.saturating_add(report_ns);
        }
        if busy || dev.can_recv() {
            continue;
        }
        let delay = iface
            .poll_delay(ts, &sockets)
            .map_or(NS_PER_MS, |d| d.total_micros() * 1000)
            .min(NS_PER_MS);
        control::idle_until(t.saturating_add(delay).min(next_report).min(deadline));
    }
}

/// Reads what a peer or a client sent on one accepted connection: a peer's frames go to the
/// agent, a client's requests are answered (into `reply`). Re-listens when the connection is
/// gone. Returns whether anything happened.
fn receive(
    i: &mut In,
    s: &mut tcp::Socket,
    port: u16,
    agent: &mut Agent,
    clients: &mut Clients,
    counts: &mut Counts,
    scratch: &mut [u8],
) -> bool {
    if !s.is_open() {
        i.stream = Inbound::default();
        i.told = 0;
        i.reply.clear();
        return s.listen(port).is_ok();
    }
    let mut busy = false;
    while s.can_recv() {
        let n = match s.recv_slice(scratch) {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        busy = true;
        match i.stream.push(&scratch[..n]) {
            Ok(frames) if i.stream.client => {
                for frame in frames {
                    let answer = clients.answer(agent, &frame);
                    proto::push_frame(&mut i.reply, &answer);
                }
                // A client that asks and never reads would grow the answers without bound.
                if i.reply.len() > OUT_QUEUE {
                    println!("bench: agent dropped a client that does not read its answers");
                    s.abort();
                    return true;
                }
            }
            Ok(frames) => {
                for frame in frames {
                    if agent.receive(&frame).is_err() {
                        counts.bad_frames += 1;
                    }
                }
            }
            Err(error) => {
                println!("bench: agent dropped a connection: {error}");
                s.abort();
                return true;
            }
        }
    }
    if s.state() == tcp::State::CloseWait {
        s.close();
    }
    busy
}

/// Tells the peer on an accepted connection this agent's phase, once per phase and connection
/// (`phase` 0: nothing to tell). Returns whether it did.
fn tell_phase(i: &mut In, s: &mut tcp::Socket, phase: u8) -> bool {
    if phase <= i.told || i.stream.from.is_none() || !s.may_send() {
        return false;
    }
    if s.send_slice(&[phase]) == Ok(1) {
        i.told = phase;
        return true;
    }
    false
}

/// The console line of a phase change.
fn announce(change: Change, ms: u64, agent: &Agent, load: &Load, phases: &Phases) {
    match change {
        Change::Measuring if !phases.barriers() => {}
        Change::Pass { moved } => println!(
            "bench: agent pass t={ms}ms n={} period={} moved={moved} objects={} completed={} \
             hops={} bytes={}",
            phases.passes,
            phases.period(),
            agent.objects(),
            agent.stats().completed,
            agent.stats().task_hops_at_completion,
            agent.stats().request_bytes()
        ),
        Change::Ready => println!("bench: agent ready t={ms}ms"),
        Change::WarmUp => println!("bench: agent warm-up t={ms}ms"),
        Change::Warm => println!("bench: agent warm t={ms}ms warm={}", load.warm),
        Change::Counted => println!("bench: agent counted t={ms}ms"),
        Change::Measuring => println!("bench: agent measuring t={ms}ms"),
    }
}

/// The fields of a console line.
fn line(load: &Load, agent: &Agent, phases: &Phases, counts: &Counts) -> impl core::fmt::Display {
    let stats = agent.stats();
    let (hops, fetches, bytes) = phases.measured(stats);
    alloc::format!(
        "submitted={} results={} wrong={} twice={} failed={} outstanding={} completed={} \
         duplicates={} unacked={} bad-frames={} hops={hops} fetches={fetches} bytes={bytes} \
         measured={} warm={} passes={} moved={}",
        load.submitted,
        load.results,
        load.wrong,
        load.twice,
        load.failed,
        load.outstanding(),
        counts.completed,
        stats.duplicates,
        agent.unacked(),
        counts.bad_frames,
        load.latencies().len(),
        load.warm,
        phases.passes,
        phases.moved
    )
}
