//! The hold before `Commit`: a migration started with `hold_before_commit_s` stops once the
//! destination is ready (the guest paused here, nothing committed) and waits for a `commit`
//! or `cancel` request on the control socket, so that the orchestrator (hostd) can hand the
//! VM's lease over before the VM switches hosts. No decision within the hold cancels.
//!
//! One mutex holds the whole exchange, so a decision either reaches the waiting migration or
//! is refused: a `commit` that arrives after the hold timed out is told so, never lost.
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use migrator::source::CommitDecision;

#[derive(Debug, Default)]
enum Gate {
    #[default]
    Idle,
    Waiting,
    Decided(CommitDecision),
}

/// Where a held migration waits for its decision.
#[derive(Debug, Default)]
pub struct CommitGate {
    gate: Mutex<Gate>,
    decided: Condvar,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("no migration is waiting for a commit (none is held, or its hold ended)")]
    NotWaiting,
}

impl CommitGate {
    /// Waits up to `limit` for a decision; none means cancel.
    pub fn wait(&self, limit: Duration) -> CommitDecision {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        *gate = Gate::Waiting;
        let (mut gate, _) = self
            .decided
            .wait_timeout_while(gate, limit, |g| matches!(g, Gate::Waiting))
            .unwrap_or_else(|e| e.into_inner());
        match std::mem::take(&mut *gate) {
            Gate::Decided(decision) => decision,
            _ => CommitDecision::Cancel(format!(
                "no commit within the {} s hold",
                limit.as_secs_f64()
            )),
        }
    }

    /// Hands `decision` to the waiting migration.
    pub fn decide(&self, decision: CommitDecision) -> Result<(), GateError> {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*gate, Gate::Waiting) {
            return Err(GateError::NotWaiting);
        }
        *gate = Gate::Decided(decision);
        self.decided.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_decision_reaches_the_waiter_and_late_ones_are_refused() {
        let gate = Arc::new(CommitGate::default());
        assert_eq!(
            gate.decide(CommitDecision::Commit),
            Err(GateError::NotWaiting)
        );
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait(Duration::from_secs(30)))
        };
        while gate.decide(CommitDecision::Commit).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(waiter.join().unwrap(), CommitDecision::Commit);
        assert_eq!(
            gate.decide(CommitDecision::Commit),
            Err(GateError::NotWaiting)
        );
        match gate.wait(Duration::from_millis(10)) {
            CommitDecision::Cancel(why) => assert!(why.contains("hold"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            gate.decide(CommitDecision::Cancel("late".into())),
            Err(GateError::NotWaiting)
        );
    }
}
