//! One agent process: the event loop that owns the agent, and the threads that move bytes.
//!
//! Threads: one acceptor, one reader per connection, one writer per peer. They only move
//! frames; the loop alone touches the agent. Each turn of the loop handles what arrived, runs
//! tasks, appends the turn's inputs to the write-ahead log and `fdatasync`s it if anything
//! changed (see `journal`), and only then sends hops, acknowledgements and client answers. So
//! an acknowledged hop or an answered submit survives `kill -9`, and a hop sent but not
//! acknowledged is resent after a restart.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use guest_agent::client::{Response, Value};
use guest_agent::timeline::{self, Params};
use guest_agent::{Agent, AgentId, Config as AgentConfig, Registry, Transport};
use tracing::{debug, info, warn};

use crate::api::{Request, HELLO_CLIENT, HELLO_PEER};
use crate::config::Config;
use crate::frame::{read_frame, write_frame};
use crate::journal::{Journal, Logged, Turn};
use crate::persist::Saved;

/// Frames queued for one peer before new ones are dropped (the agent resends them).
const PEER_QUEUE: usize = 4096;
/// Steps per loop turn: enough to batch, few enough to keep answering.
const STEPS_PER_TURN: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Agent(#[from] guest_agent::AgentError),
    #[error("the task registry is inconsistent")]
    Registry(#[from] guest_agent::RegistryError),
}

enum Input {
    Frame(Vec<u8>),
    Connected(AgentId),
    Client(Request, Sender<Answer>),
}

/// The daemon's answer to a client, as it goes on the wire.
type Answer = Response<Value>;

struct Writers(BTreeMap<AgentId, SyncSender<Vec<u8>>>);

impl Transport for Writers {
    fn send(&mut self, to: AgentId, frame: &[u8]) {
        if let Some(tx) = self.0.get(&to) {
            if let Err(TrySendError::Full(_)) = tx.try_send(frame.to_vec()) {
                debug!(%to, "the peer's queue is full; the frame will be resent");
            }
        }
    }
}

pub fn registry() -> Result<Arc<Registry>, NodeError> {
    Ok(Arc::new(timeline::registry()?))
}

/// Runs the agent until the process is killed.
pub fn run(config: Config) -> Result<(), NodeError> {
    let registry = registry()?;
    let me = AgentId(config.id);
    let params = config.timeline.unwrap_or_default();
    let limit = config.wal_limit_bytes;
    let (mut agent, mut saved, journal) = match Journal::recover(&config.data_dir, limit)? {
        Some((journal, found)) => {
            let mut agent = Agent::restore(&found.saved.agent, Arc::clone(&registry))?;
            let mut saved = found.saved;
            let turns = found.turns.len();
            for turn in found.turns {
                replay(&mut agent, &mut saved, &params, turn);
            }
            info!(%me, objects = agent.objects(), unacked = agent.unacked(), turns,
                torn_bytes = found.torn, "restored durable state");
            if found.torn > 0 {
                warn!(%me, bytes = found.torn, "dropped a torn record at the end of the log");
            }
            (agent, saved, journal)
        }
        None => {
            let agent_config = AgentConfig {
                policy: config.policy,
                rto_ms: config.rto_ms,
                ..AgentConfig::default()
            };
            let mut agent =
                Agent::new(me, &config.agent_ids(), Arc::clone(&registry), agent_config);
            if let Some(params) = &config.timeline {
                let placed = params.seed_agent(&mut agent)?;
                info!(%me, placed, "seeded the timeline data set");
            }
            let mut saved = Saved {
                agent: agent.snapshot()?,
                ..Saved::default()
            };
            let journal = Journal::create(&config.data_dir, limit, &mut saved)?;
            (agent, saved, journal)
        }
    };

    let listener = TcpListener::bind(config.listen).map_err(|source| NodeError::Listen {
        addr: config.listen,
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    let accept_tx = tx.clone();
    thread::spawn(move || accept(listener, accept_tx));
    let mut writers = Writers(BTreeMap::new());
    for (&peer, &addr) in &config.peers {
        let (peer_tx, peer_rx) = mpsc::sync_channel(PEER_QUEUE);
        writers.0.insert(AgentId(peer), peer_tx);
        let events = tx.clone();
        thread::spawn(move || write_peer(me, AgentId(peer), addr, peer_rx, events));
    }
    info!(%me, listen = %config.listen, "agent running");
    let mut node = Node {
        agent: &mut agent,
        saved: &mut saved,
        journal,
        params,
    };
    node.event_loop(rx, &mut writers)
}

/// Applies a logged turn again, exactly as it first ran (answers go nowhere).
fn replay(agent: &mut Agent, saved: &mut Saved, params: &Params, turn: Turn) {
    for input in turn.inputs {
        match input {
            Logged::Frame(frame) => {
                let _ = agent.receive(&frame);
            }
            Logged::Client(json) => {
                if let Ok(request) = serde_json::from_slice::<Request>(&json) {
                    answer(agent, saved, params, request);
                }
            }
        }
    }
    agent.run(turn.steps as usize);
}

struct Node<'a> {
    agent: &'a mut Agent,
    saved: &'a mut Saved,
    journal: Journal,
    params: Params,
}

impl Node<'_> {
    fn event_loop(&mut self, rx: Receiver<Input>, writers: &mut Writers) -> Result<(), NodeError> {
        let start = Instant::now();
        let mut last_load = Instant::now();
        loop {
            let mut inputs = Vec::new();
            if let Ok(input) = rx.recv_timeout(Duration::from_millis(5)) {
                inputs.push(input);
                inputs.extend(rx.try_iter().take(10_000));
            }
            let answers = self.turn(inputs)?;
            if last_load.elapsed() >= Duration::from_millis(500) {
                self.agent.report_load();
                self.agent.share_pairs();
                self.agent.share_directory();
                last_load = Instant::now();
            }
            for (response, reply) in answers {
                let _ = reply.send(response);
            }
            self.agent
                .flush(start.elapsed().as_millis() as u64, writers);
        }
    }

    /// Applies inputs and runs tasks, logging what changes state; returns the client answers,
    /// which (like hops and acknowledgements) may leave only now that the turn is durable.
    fn turn(&mut self, inputs: Vec<Input>) -> Result<Vec<(Answer, Sender<Answer>)>, NodeError> {
        let mut turn = Turn::default();
        let mut answers = Vec::new();
        for input in inputs {
            match input {
                Input::Frame(frame) => match self.agent.receive(&frame) {
                    Ok(()) => turn.inputs.push(Logged::Frame(frame)),
                    Err(error) => warn!(%error, "dropped a frame from a peer"),
                },
                Input::Connected(peer) => self.agent.reconnected(peer),
                Input::Client(request, reply) => {
                    if request.changes_state() {
                        if let Ok(json) = serde_json::to_vec(&request) {
                            turn.inputs.push(Logged::Client(json));
                        }
                    }
                    let response = answer(self.agent, self.saved, &self.params, request);
                    answers.push((response, reply));
                }
            }
        }
        // Routing a runnable task changes state even when no step runs (it ships or parks).
        if self.agent.runnable() > 0 {
            turn.steps = STEPS_PER_TURN as u32;
            self.agent.run(STEPS_PER_TURN);
        }
        if !turn.inputs.is_empty() || turn.steps > 0 {
            self.journal.commit(&turn)?;
            if self.journal.wants_snapshot() {
                self.saved.agent = self.agent.snapshot()?;
                self.journal.compact(self.saved)?;
                debug!(compactions = self.journal.compactions, "compacted the log");
            }
        }
        Ok(answers)
    }
}

/// Client submits the daemon keeps, with their results: its disk, not its memory, bounds them.
const MAX_KEPT: usize = usize::MAX;

fn answer(agent: &mut Agent, saved: &mut Saved, params: &Params, request: Request) -> Answer {
    saved.clients.answer(agent, params, request, MAX_KEPT)
}

fn accept(listener: TcpListener, tx: Sender<Input>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let tx = tx.clone();
        thread::spawn(move || {
            if let Err(error) = serve(stream, tx) {
                debug!(%error, "a connection ended");
            }
        });
    }
}

fn serve(mut stream: TcpStream, tx: Sender<Input>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut hello = [0u8; 1];
    stream.read_exact(&mut hello)?;
    match hello[0] {
        HELLO_PEER => {
            let mut id = [0u8; 2];
            stream.read_exact(&mut id)?;
            let mut reader = std::io::BufReader::new(stream);
            while let Some(frame) = read_frame(&mut reader)? {
                if tx.send(Input::Frame(frame)).is_err() {
                    break;
                }
            }
        }
        HELLO_CLIENT => {
            while let Some(frame) = read_frame(&mut stream)? {
                let response: Answer = match serde_json::from_slice::<Request>(&frame) {
                    Ok(request) => {
                        let (reply_tx, reply_rx) = mpsc::channel();
                        if tx.send(Input::Client(request, reply_tx)).is_err() {
                            break;
                        }
                        match reply_rx.recv() {
                            Ok(response) => response,
                            Err(_) => break,
                        }
                    }
                    Err(error) => Response::Error {
                        reason: format!("the request is not valid: {error}"),
                    },
                };
                let body = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
                write_frame(&mut stream, &body)?;
            }
        }
        other => debug!(hello = other, "a connection did not say who it is"),
    }
    Ok(())
}

/// Keeps a connection to one peer and writes its frames, reconnecting with backoff. A frame
/// that cannot be written is dropped: the agent resends whatever is not acknowledged.
fn write_peer(
    me: AgentId,
    peer: AgentId,
    addr: SocketAddr,
    rx: Receiver<Vec<u8>>,
    events: Sender<Input>,
) {
    let mut stream: Option<std::io::BufWriter<TcpStream>> = None;
    let mut backoff = Duration::from_millis(20);
    let mut next_try = Instant::now();
    while let Ok(frame) = rx.recv() {
        if stream.is_none() && Instant::now() >= next_try {
            match connect_peer(me, addr) {
                Ok(s) => {
                    stream = Some(std::io::BufWriter::new(s));
                    backoff = Duration::from_millis(20);
                    info!(%peer, %addr, "connected to peer");
                    if events.send(Input::Connected(peer)).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    debug!(%peer, %error, "peer unreachable");
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let mut result = write_frame(s, &frame);
        // Write everything already queued before the flush `write_frame` did.
        for more in rx.try_iter().take(256) {
            if result.is_err() {
                break;
            }
            result = write_frame(s, &more);
        }
        if let Err(error) = result.and_then(|()| s.flush()) {
            warn!(%peer, %error, "lost the connection to a peer");
            stream = None;
        }
    }
}

fn connect_peer(me: AgentId, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_nodelay(true)?;
    let mut hello = vec![HELLO_PEER];
    hello.extend_from_slice(&me.0.to_le_bytes());
    stream.write_all(&hello)?;
    Ok(stream)
}
