//! The end of a VM's life, and the host's periodic work.
//!
//! - A VM ends when its paid time plus the grace period has passed (reclaim), when its tenant
//!   deletes it, or when its `vmm` exits. Then hostd stops the process, frees its files,
//!   redeems the final claim and releases the lease.
//! - The final claim is written to `<data dir>/pending/` before anything is freed and removed
//!   only once the broker has it, so a broker outage or a crash delays settlement but never
//!   loses it; the redemption loop retries pending settlements.
//! - Redemption also runs periodically for running VMs, so that a crash loses little.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use token::{Claim, HostId, SignedClaim, TokenId};

use crate::broker::{BrokerError, CapacityAdvert};
use crate::host::{now_ms, Host, Phase, Vm};
use crate::http::error::chain;
use crate::vmm_process::VmmProcess;

pub const PENDING_DIR: &str = "pending";

/// Why a VM ended; also the label of `hostd_vms_reclaimed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Paid time and grace ran out.
    Unpaid,
    /// The tenant asked.
    Deleted,
    /// The `vmm` process exited by itself: the guest ended.
    Exited,
    /// The `vmm` process failed: a seccomp violation (a forbidden system call, exit code
    /// 159), a VMM error, a guest crash, or a signal.
    Crashed,
    /// hostd was told to stop its VMs when it shuts down.
    HostShutdown,
}

impl EndReason {
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Unpaid => "unpaid",
            EndReason::Deleted => "deleted",
            EndReason::Exited => "exited",
            EndReason::Crashed => "crashed",
            EndReason::HostShutdown => "host_shutdown",
        }
    }
}

/// A settlement owed by the broker: the final claim of an ended VM, and its lease to release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingSettlement {
    pub token_id: TokenId,
    pub host_id: HostId,
    /// `None` when there is nothing new to redeem.
    pub claim: Option<SignedClaim>,
}

fn pending_path(host: &Host, token_id: &TokenId) -> PathBuf {
    host.config
        .data_dir
        .join(PENDING_DIR)
        .join(format!("{token_id}.json"))
}

/// Watches a VM's process and ends the VM when it exits.
pub fn supervise(host: Arc<Host>, vm: Arc<Vm>, process: Arc<VmmProcess>) {
    tokio::spawn(async move {
        process.exited().await;
        let end = process.end();
        let reason = match end {
            Some(end) if end.is_crash() => EndReason::Crashed,
            _ => EndReason::Exited,
        };
        if vm.phase() == Phase::Running {
            let how = end.map_or_else(|| "an unknown status".to_string(), |e| e.to_string());
            let log = vm.log.tail_text(500);
            match end {
                Some(end) if end.is_seccomp_violation() => tracing::error!(
                    vm = %vm.id, %log,
                    "VM crashed: its vmm made a forbidden system call and was stopped ({how})"
                ),
                Some(end) if end.is_crash() => {
                    tracing::error!(vm = %vm.id, %log, "VM crashed: its vmm ended with {how}")
                }
                _ => tracing::info!(vm = %vm.id, %log, "vmm exited ({how})"),
            }
        }
        end_vm(&host, &vm, reason).await;
    });
}

/// Stops a VM, frees everything it held and settles with the broker. Idempotent: only the
/// first caller does the work.
pub async fn end_vm(host: &Host, vm: &Vm, reason: EndReason) {
    // A VM that moved away is cleaned up by its migration, and has nothing to settle here.
    match vm.set_phase(Phase::Stopping) {
        Phase::Stopping => return,
        Phase::Moved => {
            vm.set_phase(Phase::Moved);
            return;
        }
        _ => {}
    }
    let state = vm.state.lock().await;
    // A migration that held the lock may have moved the VM meanwhile (its `vmm` exits after
    // the switchover): then the migration cleans up.
    if vm.phase() == Phase::Moved {
        return;
    }
    if let Some(process) = &state.process {
        process.stop(host.config.stop_timeout).await;
    }
    crate::network::remove_vm_tap(host, &vm.id, vm.net.as_ref()).await;
    crate::disks::remove_owned(&vm.id, state.record.disk.as_ref());
    let index = state.verifier.index();
    let claim = (index > state.record.redeemed_index)
        .then(|| Claim::from_verifier(host.host_id(), &state.verifier).sign(&host.identity.key));
    let pending = PendingSettlement {
        token_id: vm.token.token_id,
        host_id: host.host_id(),
        claim,
    };
    // The claim is on disk before the record that also holds it is removed.
    let saved = serde_json::to_vec(&pending)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            crate::durable::write_atomic(&pending_path(host, &pending.token_id), &bytes)
        });
    if let Err(e) = &saved {
        // Keep the VM's record, which holds the same link, so nothing is lost; a restart
        // settles from it.
        tracing::error!(vm = %vm.id, "cannot write the pending settlement, keeping the VM record: {e}");
    } else {
        crate::vmm_process::remove_files(&vm.dir);
        if let Err(e) = std::fs::remove_dir_all(&vm.dir) {
            tracing::warn!(vm = %vm.id, "cannot remove the VM directory: {e}");
        }
    }
    drop(state);
    host.vms().remove(&vm.id);
    host.capacity_changed.notify_one();
    host.metrics.inc("hostd_vms_reclaimed_total", reason.name());
    tracing::info!(
        event = "vm_ended",
        vm = %vm.id,
        token = %vm.token.token_id,
        reason = reason.name(),
        paid_index = index,
        "VM stopped and freed"
    );
    if saved.is_ok() {
        settle(host, &pending).await;
    }
}

/// Redeems a pending settlement's claim and releases its lease; removes the pending file
/// once the broker has both.
async fn settle(host: &Host, pending: &PendingSettlement) -> bool {
    if let Some(claim) = &pending.claim {
        match host.broker.redeem(claim.clone()).await {
            Ok(redeemed) => {
                host.metrics.inc("hostd_redemptions_total", "ok");
                tracing::info!(token = %pending.token_id, credit = redeemed.credit, index = claim.claim.index, "final claim redeemed");
            }
            Err(BrokerError::Unavailable(e)) => {
                host.metrics.inc("hostd_redemptions_total", "failed");
                tracing::warn!(token = %pending.token_id, "cannot redeem now, will retry: {e}");
                return false;
            }
            Err(e) => {
                // Refused for good (e.g. already redeemed): retrying cannot help.
                host.metrics.inc("hostd_redemptions_total", "refused");
                tracing::warn!(token = %pending.token_id, "the broker refused the final claim: {e}");
            }
        }
    }
    match host
        .broker
        .release_lease(pending.token_id, pending.host_id)
        .await
    {
        Ok(()) | Err(BrokerError::NotLeaseHolder { .. }) => {}
        Err(e) => {
            tracing::warn!(token = %pending.token_id, "cannot release the lease now, will retry: {e}");
            // Keep the file, without the claim the broker already has.
            let rest = PendingSettlement {
                claim: None,
                ..pending.clone()
            };
            if let Ok(bytes) = serde_json::to_vec(&rest) {
                let _ =
                    crate::durable::write_atomic(&pending_path(host, &pending.token_id), &bytes);
            }
            return false;
        }
    }
    let _ = std::fs::remove_file(pending_path(host, &pending.token_id));
    true
}

/// Retries every pending settlement once.
pub async fn settle_pending(host: &Host) {
    let dir = host.config.data_dir.join(PENDING_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path).map(|b| serde_json::from_slice::<PendingSettlement>(&b)) {
            Ok(Ok(pending)) => {
                settle(host, &pending).await;
            }
            _ => {
                tracing::error!(path = %path.display(), "unreadable pending settlement; left for the operator")
            }
        }
    }
}

/// Ends every VM whose paid time plus grace has passed.
pub async fn reclaim_due(host: &Arc<Host>) {
    let now = now_ms();
    let running: Vec<Arc<Vm>> = host
        .vms()
        .values()
        .filter(|vm| vm.phase() == Phase::Running)
        .cloned()
        .collect();
    for vm in running {
        let index = vm.state.lock().await.verifier.index();
        if vm.meter.is_reclaimable(now, index) {
            tracing::info!(
                vm = %vm.id,
                paid_until_ms = vm.meter.paid_until(index),
                "paid time and grace have passed; reclaiming"
            );
            let (host, vm) = (host.clone(), vm.clone());
            tokio::spawn(async move { end_vm(&host, &vm, EndReason::Unpaid).await });
        }
    }
}

/// Redeems what each running VM has paid beyond what was redeemed: the claims of all of
/// them in one batch (see [`crate::broker::BrokerClient::redeem_many`]). Each VM's state is
/// locked only to make its claim and, after the answer, to record it; a VM that ended or
/// moved meanwhile settles through its own final claim, which then earns only what this
/// batch did not.
pub async fn redeem_running(host: &Host) {
    let running: Vec<Arc<Vm>> = host.vms().values().cloned().collect();
    let mut due = Vec::new();
    for vm in running {
        let state = vm.state.lock().await;
        if vm.phase() != Phase::Running || state.verifier.index() <= state.record.redeemed_index {
            continue;
        }
        let claim = Claim::from_verifier(host.host_id(), &state.verifier).sign(&host.identity.key);
        drop(state);
        due.push((vm, claim));
    }
    if !due.is_empty() {
        let claims = due.iter().map(|(_, claim)| claim.clone()).collect();
        match host.broker.redeem_many(claims).await {
            Ok(results) => {
                for ((vm, claim), result) in due.iter().zip(results) {
                    record_redemption(host, vm, claim.claim.index, result).await;
                }
            }
            Err(e) => {
                for (vm, _) in &due {
                    host.metrics.inc("hostd_redemptions_total", "failed");
                    tracing::warn!(vm = %vm.id, "redemption failed: {e}");
                }
            }
        }
    }
    settle_pending(host).await;
}

/// Keeps a running VM's redeemed index once the broker has credited its claim for `index`.
async fn record_redemption(
    host: &Host,
    vm: &Vm,
    index: u64,
    result: Result<crate::broker::Redeemed, BrokerError>,
) {
    let redeemed = match result {
        Ok(redeemed) => redeemed,
        Err(e) => {
            host.metrics.inc("hostd_redemptions_total", "failed");
            tracing::warn!(vm = %vm.id, "redemption failed: {e}");
            return;
        }
    };
    host.metrics.inc("hostd_redemptions_total", "ok");
    tracing::info!(vm = %vm.id, index, credit = redeemed.credit, "claim redeemed");
    let mut state = vm.state.lock().await;
    if vm.phase() != Phase::Running || state.record.redeemed_index >= index {
        return;
    }
    let mut record = state.record.clone();
    record.redeemed_index = index;
    match tokio::task::block_in_place(|| record.save(&vm.dir)) {
        Ok(()) => state.record = record,
        Err(e) => tracing::warn!(vm = %vm.id, "cannot record the redemption: {}", chain(&e)),
    }
}

/// Publishes the host's free capacity in the broker's host directory.
pub async fn advertise(host: &Host) {
    let (free_memory_mib, free_vcpus) = host.free_capacity();
    let advert = CapacityAdvert {
        host_id: host.host_id(),
        cluster_id: host.config.cluster_id,
        url: host.config.advertise_url.clone(),
        free_memory_mib,
        free_vcpus,
        min_price_per_link: host.config.min_price_per_link,
    };
    if let Err(e) = host.broker.advertise(advert).await {
        tracing::warn!("cannot advertise capacity: {e}");
    }
}

/// Runs reclaim, redemption and advertising until the process ends.
pub fn spawn_periodic(host: Arc<Host>) {
    let reclaimer = host.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(reclaimer.config.reclaim_interval);
        loop {
            tick.tick().await;
            reclaim_due(&reclaimer).await;
        }
    });
    let redeemer = host.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(redeemer.config.redeem_interval);
        loop {
            tick.tick().await;
            redeem_running(&redeemer).await;
        }
    });
    // Periodically, and whenever a VM starts or ends.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(host.config.advertise_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = host.capacity_changed.notified() => {}
            }
            advertise(&host).await;
        }
    });
}
