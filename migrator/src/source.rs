//! The sending side: iterative dirty-page pre-copy, then a commit-protocol switchover.
//!
//! Round 0 sends all memory except zero pages. Each later round sends what the merged dirty
//! log (KVM's log ∪ the VMM's device-write bitmap) says changed. [`convergence`] decides when
//! pre-copy stops: the downtime target is a ceiling, not a goal.
//!
//! Switchover and its failure semantics:
//! 1. Pause the VM, send the last dirty pages and the VM state.
//! 2. Wait for `Ready`: the destination has applied everything but does not run yet.
//!    Any failure up to here (write error, peer gone, timeout, abort) resumes the source VM,
//!    unchanged: status `failed` (or `cancelled`).
//! 3. Send `Commit`. From the moment we try, the destination may run the VM.
//! 4. Wait for `Running`. On success the caller stops the source VM: status `completed`.
//!    If the acknowledgement never comes, the outcome is unknown: the source VM stays paused
//!    (it is never resumed on a guess) and the status is `unknown`.
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::convergence::{self, Limits, Observation, StopReason};
use crate::dirty::DirtyBitmap;
use crate::identity::{Identity, IdentityError, PublicKey};
use crate::lanes::ExtraLanes;
use crate::params::{MigrateParams, OnTimeout, ParamsError};
use crate::sender::{Pass, Sender};
use crate::stats::{DowntimeParts, Progress, RoundStats, Stats, Status};
use crate::transport::{self, SecureStream, TransportError};
use crate::wire::{self, Message, Tag, WireError, MAX_PAGES_PER_FRAME, PAGE_SIZE};
use crate::{vmm_bitmap, MigratableVm, VmError};

/// How long to wait for the destination to apply the state, or resume.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// A write that makes no progress for this long means the destination is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the parting `Abort` may take: after a failure the stream may be what failed, and
/// the source must not wait a whole write timeout more to say goodbye.
const ABORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Socket buffer: large writes go straight to the kernel, headers and lone pages coalesce.
const SEND_BUFFER: usize = 1 << 20;
/// Auto-converge: start, step and cap of the vCPU throttle, as in QEMU.
const THROTTLE_START: u8 = 20;
const THROTTLE_STEP: u8 = 10;
const THROTTLE_MAX: u8 = 99;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid migration request")]
    Params(#[from] ParamsError),
    #[error("cannot use this host's identity")]
    Identity(#[from] IdentityError),
    #[error("cannot open the migration connection")]
    Transport(#[from] TransportError),
    #[error("the migration stream broke")]
    Wire(#[from] WireError),
    #[error("the VM failed during migration: {0}")]
    Vm(VmError),
    #[error("guest memory could not be read")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("pre-copy did not converge within {0:?}")]
    Timeout(Duration),
    #[error("cancelled before commit: {0}")]
    Cancelled(String),
}

/// Where a held switchover stands when the orchestrator is asked to decide: the VM is
/// paused here, the destination holds everything and waits for `Commit`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReadyToCommit {
    /// Since the pause: how long the guest has been stopped so far.
    pub downtime_ms: f64,
    pub final_pages_ms: f64,
    pub state_ms: f64,
    pub transferred: u64,
    pub rounds: u32,
}

/// The orchestrator's answer to [`ReadyToCommit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitDecision {
    Commit,
    /// Give up: the source VM resumes, unchanged, and the destination never runs it.
    Cancel(String),
}

impl From<std::io::Error> for SourceError {
    fn from(e: std::io::Error) -> Self {
        SourceError::Wire(WireError::Io(e))
    }
}

pub(crate) fn vm_err(e: VmError) -> SourceError {
    SourceError::Vm(e)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Why pre-copy ended.
enum Converged {
    /// Switch over; these dirty pages (read from a log that reading cleared) are still to go.
    Yes(Vec<(u64, DirtyBitmap)>),
    Cancel,
}

/// Runs pre-copy; returns the dirty maps left for the switchover, or a cancellation.
fn precopy<V: MigratableVm>(
    s: &mut Sender<'_, V>,
    params: &MigrateParams,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Converged, SourceError> {
    let ram = s.stats.ram.total;
    // Round 0: everything.
    let t = Instant::now();
    let full: Vec<(u64, DirtyBitmap)> =
        s.vm.memory()
            .iter()
            .map(|r| (r.start_addr().0, DirtyBitmap::full(r.len() / PAGE_SIZE)))
            .collect();
    let (pages, bytes) = s.send_maps(&full, Pass::First)?;
    s.out.flush()?;
    let took = t.elapsed();
    s.bandwidth = bytes as f64 / took.as_secs_f64().max(1e-6);
    s.stats.rounds.push(RoundStats {
        round: 0,
        pages,
        bytes,
        duration_ms: ms(took),
        dirty_pages: pages,
    });
    wire::send(&mut s.out, &Message::RoundEnd { round: 0 })?;

    let mut round = 0u32;
    let mut last_round_time = took;
    let mut previous = bytes;
    let limits = Limits {
        downtime: params.downtime(),
        max_rounds: params.max_rounds,
    };
    loop {
        let maps = s.dirty_maps()?;
        let dirty: u64 = maps.iter().map(|(_, m)| m.count()).sum();
        s.stats.ram.dirty_sync_count += 1;
        let remaining = dirty * PAGE_SIZE;
        let dirty_rate = (dirty as f64 / last_round_time.as_secs_f64().max(1e-3)) as u64;
        s.stats.ram.remaining = remaining;
        s.stats.ram.dirty_pages_rate = dirty_rate;
        let timed_out = s.started.elapsed() > params.timeout();
        let stop = convergence::decide(
            &Observation {
                remaining,
                previous,
                bandwidth: s.bandwidth,
                dirty_rate: (dirty_rate * PAGE_SIZE) as f64,
                round,
                transferred: s.stats.ram.transferred,
                ram,
                timed_out,
            },
            &limits,
        );
        previous = remaining;
        let mut p = s.progress(round, remaining, dirty_rate);
        p.stop_reason = stop;
        s.stats.expected_downtime_ms = p.expected_downtime_ms;
        s.stats.stop_reason = stop;
        progress(&p);
        match stop {
            Some(StopReason::Timeout) if params.on_timeout == OnTimeout::Cancel => {
                return Ok(Converged::Cancel);
            }
            Some(_) => {
                s.sync()?;
                return Ok(Converged::Yes(maps));
            }
            None => {}
        }
        if params.auto_converge && dirty_rate as f64 * PAGE_SIZE as f64 > 0.5 * s.bandwidth {
            let next = match s.stats.cpu_throttle_percentage {
                0 => THROTTLE_START,
                t => t.saturating_add(THROTTLE_STEP).min(THROTTLE_MAX),
            };
            s.stats.cpu_throttle_percentage = next;
            s.vm.set_throttle(next);
        }
        round += 1;
        let t = Instant::now();
        let (pages, bytes) = s.send_maps(&maps, Pass::Again)?;
        wire::send(&mut s.out, &Message::RoundEnd { round })?;
        last_round_time = t.elapsed();
        if bytes >= 1 << 20 {
            s.bandwidth = bytes as f64 / last_round_time.as_secs_f64().max(1e-6);
        }
        s.stats.rounds.push(RoundStats {
            round,
            pages,
            bytes,
            duration_ms: ms(last_round_time),
            dirty_pages: dirty,
        });
    }
}

/// Pauses the VM, sends the rest and the state, and waits for `Ready`.
/// `paused_at` is when the pause was requested: stopping the vCPUs counts as part of sending
/// the final pages, so the downtime parts add up to the downtime.
fn prepare_switchover<V: MigratableVm>(
    s: &mut Sender<'_, V>,
    paused_at: Instant,
    pending: &[(u64, DirtyBitmap)],
) -> Result<(f64, f64), SourceError> {
    let t0 = paused_at;
    let synced = Instant::now();
    let mut maps = s.dirty_maps()?;
    s.stats.downtime_parts.final_sync_ms = ms(synced.elapsed());
    for ((_, map), (_, left)) in maps.iter_mut().zip(pending) {
        map.merge(left);
    }
    let (pages, bytes) = s.send_maps(&maps, Pass::Final)?;
    s.out.flush()?;
    // Every page is on its way before the state: the destination applies the state only
    // after each lane has ended.
    s.extra.finish()?;
    let final_pages = ms(t0.elapsed());
    s.stats.rounds.push(RoundStats {
        round: s.stats.rounds.len() as u32,
        pages,
        bytes,
        duration_ms: final_pages,
        dirty_pages: maps.iter().map(|(_, m)| m.count()).sum(),
    });
    let t1 = Instant::now();
    let state = s.vm.save_state().map_err(vm_err)?;
    wire::send(&mut s.out, &Message::State(state))?;
    s.out.get_ref().set_read_timeout(Some(REPLY_TIMEOUT))?;
    wire::expect(s.out.get_mut(), Tag::Ready, "ready")?;
    Ok((final_pages, ms(t1.elapsed())))
}

/// Runs a whole migration of `vm` to `params.url`. The returned statistics say what happened
/// and what state the VM is in (see the module documentation); `progress` is called once per
/// pre-copy round.
pub fn migrate<V: MigratableVm>(
    vm: &V,
    params: &MigrateParams,
    progress: &mut dyn FnMut(&Progress),
) -> Stats {
    migrate_with_hold(vm, params, progress, &mut |_| CommitDecision::Commit)
}

/// [`migrate`], asking `hold` whether to commit once the destination is ready (the VM
/// paused, nothing committed). `Cancel` ends the migration as `cancelled` with the source
/// VM resumed, unchanged; the time `hold` takes is downtime (`hold-ms`).
pub fn migrate_with_hold<V: MigratableVm>(
    vm: &V,
    params: &MigrateParams,
    progress: &mut dyn FnMut(&Progress),
    hold: &mut dyn FnMut(&ReadyToCommit) -> CommitDecision,
) -> Stats {
    let started = Instant::now();
    let mut stats = Stats::default();
    let result = run(vm, params, progress, hold, started, &mut stats);
    stats.total_time_ms = ms(started.elapsed());
    if let Err(e) = result {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        stats.error = Some(msg);
    }
    stats
}

/// Opens the migration's authenticated connections to the destination.
fn connect(params: &MigrateParams) -> Result<Vec<SecureStream>, SourceError> {
    let identity = Identity::load(&params.identity)?;
    let peer = PublicKey::from_hex(&params.peer)?;
    let lanes = u16::try_from(params.connections)
        .map_err(|_| ParamsError::Connections(params.connections))?;
    let streams = transport::open(params.address()?, &identity, peer, lanes)?;
    for s in &streams {
        s.set_write_timeout(Some(WRITE_TIMEOUT))?;
        s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    }
    Ok(streams)
}

fn run<V: MigratableVm>(
    vm: &V,
    params: &MigrateParams,
    progress: &mut dyn FnMut(&Progress),
    hold: &mut dyn FnMut(&ReadyToCommit) -> CommitDecision,
    started: Instant,
    stats: &mut Stats,
) -> Result<(), SourceError> {
    stats.status = Status::Failed;
    params.validate()?;
    let mut lanes = connect(params)?.into_iter();
    let Some(mut stream) = lanes.next() else {
        return Err(ParamsError::Connections(0).into());
    };
    let ram: u64 = vm.memory().iter().map(|r| r.len()).sum();
    wire::send(
        &mut stream,
        &Message::Machine {
            ram_bytes: ram,
            blob: vm.machine(),
        },
    )?;

    vm.set_dirty_logging(true).map_err(vm_err)?;
    for region in vm.memory().iter() {
        vmm_bitmap(region).reset();
    }
    let mut s = Sender {
        vm,
        out: BufWriter::with_capacity(SEND_BUFFER, stream),
        extra: ExtraLanes::new(lanes)?,
        staging: vec![0u8; (MAX_PAGES_PER_FRAME * PAGE_SIZE) as usize],
        stats: Stats::default(),
        started,
        bandwidth: 1.0,
        manual_log: vm.manual_dirty_log(),
    };
    s.stats.ram.total = ram;
    s.stats.setup_time_ms = ms(started.elapsed());
    s.stats.status = Status::Active;

    let outcome = switch_over(&mut s, params, progress, hold);
    vm.set_throttle(0);
    if s.stats.status != Status::Completed && s.stats.status != Status::Unknown {
        // Tell the destination, if the first connection still takes it, then end the other
        // connections at once: their threads may be blocked on a peer that is gone.
        let _ = s.out.get_ref().set_write_timeout(Some(ABORT_TIMEOUT));
        let _ = wire::send(
            &mut s.out,
            &Message::Abort("the source cancelled the migration".into()),
        );
        s.extra.abandon();
    }
    let _ = vm.set_dirty_logging(false);
    s.stats.ram.mbps = s.bandwidth * 8.0 / 1e6;
    *stats = std::mem::take(&mut s.stats);
    outcome
}

fn switch_over<V: MigratableVm>(
    s: &mut Sender<'_, V>,
    params: &MigrateParams,
    progress: &mut dyn FnMut(&Progress),
    hold: &mut dyn FnMut(&ReadyToCommit) -> CommitDecision,
) -> Result<(), SourceError> {
    let pending = match precopy(s, params, progress) {
        Ok(Converged::Yes(pending)) => pending,
        Ok(Converged::Cancel) => {
            s.stats.status = Status::Cancelled;
            return Err(SourceError::Timeout(params.timeout()));
        }
        Err(e) => {
            s.stats.status = Status::Failed;
            return Err(e);
        }
    };
    let paused_at = Instant::now();
    if let Err(e) = s.vm.pause() {
        // E.g. the guest exited meanwhile: there is nothing left to move.
        s.stats.status = Status::Failed;
        return Err(vm_err(e));
    }
    s.stats.downtime_parts.pause_ms = ms(paused_at.elapsed());
    let prepared = prepare_switchover(s, paused_at, &pending);
    let (final_pages_ms, state_ms) = match prepared {
        Ok(t) => t,
        Err(e) => {
            s.stats.status = Status::Failed;
            // Nothing was committed: the source VM carries on as if nothing happened.
            if let Err(r) = s.vm.resume() {
                tracing::error!("cannot resume the VM after a failed migration: {r}");
            }
            return Err(e);
        }
    };
    let held_at = Instant::now();
    let ready = ReadyToCommit {
        downtime_ms: ms(paused_at.elapsed()),
        final_pages_ms,
        state_ms,
        transferred: s.stats.ram.transferred,
        rounds: s.stats.rounds.len() as u32,
    };
    if let CommitDecision::Cancel(why) = hold(&ready) {
        s.stats.status = Status::Cancelled;
        if let Err(r) = s.vm.resume() {
            tracing::error!("cannot resume the VM after a cancelled migration: {r}");
        }
        return Err(SourceError::Cancelled(why));
    }
    let hold_ms = ms(held_at.elapsed());
    // From here on the destination may run the VM: never resume the source on a guess.
    s.stats.status = Status::Unknown;
    let t = Instant::now();
    wire::send(&mut s.out, &Message::Commit)?;
    wire::expect(s.out.get_mut(), Tag::Running, "running")?;
    s.stats.status = Status::Completed;
    s.stats.downtime_ms = ms(paused_at.elapsed());
    s.stats.downtime_parts = DowntimeParts {
        final_pages_ms,
        state_ms,
        hold_ms,
        resume_ms: ms(t.elapsed()),
        ..s.stats.downtime_parts
    };
    s.stats.ram.remaining = 0;
    Ok(())
}
