//! The source's side of a host-to-host migration (see [`super`]).
//!
//! Failure semantics, as the `vmm` gives them:
//! - before `Commit` (prepare refused, pre-copy failed or timed out, the destination refused
//!   the payment state, the broker refused the handover): the VM runs on here, unchanged and
//!   paid; a prepared handover is cancelled, the destination told to give up;
//! - `completed`: the destination runs the VM and owns it; this host frees everything and
//!   answers later payments with "moved, retry at host B";
//! - `unknown` (the link broke after `Commit`): the VM stays paused here and payments stay
//!   frozen until the destination says whether it runs the VM: if it does, the paused copy
//!   is stopped; if not, it resumes. Never both, never neither.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use token::{Claim, HostId};
use vmm::api::protocol::Request;

use super::messages::{
    IncomingOutcome, MovingVm, OutcomeAnswer, PaymentSync, PrepareIncoming, Prepared,
};
use super::{emit, Events};
use crate::broker::{Handover, HostRecord};
use crate::host::{Host, Phase, Vm, VmState};
use crate::http::error::{chain, ApiError};
use crate::peer;
use crate::vmm_process::VmmProcess;

/// How long the `vmm` holds the paused VM for the handover before it cancels by itself.
const HOLD_S: u64 = 20;
/// Longest silence of the `vmm`'s migration stream (pre-copy reports once per round).
const STREAM_SILENCE: Duration = Duration::from_secs(700);

/// A migration the destination prepared, ready to drive.
pub struct Outgoing {
    vm: Arc<Vm>,
    dest: HostRecord,
    migration_id: String,
    prepared: Prepared,
    process: Arc<VmmProcess>,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// Checks the request and has the destination prepare. The VM is `migrating` from here (a
/// second migration is refused) and back to `running` if this fails.
pub async fn begin(host: &Arc<Host>, vm: Arc<Vm>, to: HostId) -> Result<Outgoing, ApiError> {
    if to == host.host_id() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "migrate_to_self",
            "the VM already runs on this host",
        ));
    }
    if !vm.change_phase(Phase::Running, Phase::Migrating) {
        return Err(refuse(
            StatusCode::CONFLICT,
            "vm_not_running",
            format!(
                "VM {} is {}; only a running VM can migrate",
                vm.id,
                vm.phase().name()
            ),
        ));
    }
    let prepared = prepare(host, &vm, to).await;
    if prepared.is_err() {
        vm.change_phase(Phase::Migrating, Phase::Running);
        host.metrics.inc("hostd_migrations_total", "refused");
    }
    prepared
}

async fn prepare(host: &Arc<Host>, vm: &Arc<Vm>, to: HostId) -> Result<Outgoing, ApiError> {
    let dest = host
        .broker
        .host(to)
        .await
        .map_err(|e| refuse(StatusCode::BAD_GATEWAY, "broker_unavailable", e.to_string()))?
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "unknown_host",
                format!("host {to} is not registered with the broker"),
            )
        })?;
    if dest.cluster_id != host.config.cluster_id {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "wrong_cluster",
            format!(
                "host {to} serves cluster {}, not {}",
                dest.cluster_id, host.config.cluster_id
            ),
        ));
    }
    if dest.url.is_none() {
        return Err(refuse(
            StatusCode::CONFLICT,
            "host_unreachable",
            format!("host {to} has not advertised where it listens"),
        ));
    }
    let (moving, process) = {
        let state = vm.state.lock().await;
        let record = &state.record;
        let index = state.verifier.index();
        let moving = MovingVm {
            vm_id: vm.id.clone(),
            token: record.token.clone(),
            boot: record.boot,
            kernel: record.kernel.clone(),
            initrd: record.initrd.clone(),
            cmdline: record.cmdline.clone(),
            memory_mib: record.memory_mib,
            vcpus: record.vcpus,
            admitted_at_ms: record.admitted_at_ms,
            mac: vm.net.as_ref().map(|net| net.mac.to_string()),
            disk: record.disk.as_ref().map(|disk| disk.image.clone()),
            payment: state.verifier.state().clone(),
            paid_until_ms: vm.meter.paid_until(index),
        };
        (moving, state.process.clone())
    };
    let process = process.ok_or_else(|| ApiError::internal("the VM has no vmm process"))?;
    let migration_id = token::hex::encode(&rand::random::<[u8; 16]>());
    let request = PrepareIncoming {
        migration_id: migration_id.clone(),
        vm: moving,
        migration_key: host.migration_key.public_hex(),
    };
    let prepared: Prepared = peer::call(host, &dest, Method::POST, "/v1/migrations", &request)
        .await
        .map_err(|e| refuse(StatusCode::BAD_GATEWAY, "destination_refused", chain(&e)))?;
    // The migration's TLS is pinned to the registered key whatever the answer says; a
    // different one means the destination cannot take the VM.
    let registered = token::hex::encode(dest.key.as_bytes());
    if prepared.host_key != registered {
        return Err(refuse(
            StatusCode::BAD_GATEWAY,
            "destination_refused",
            format!(
                "host {to} presents key {}, not its registered {registered}",
                prepared.host_key
            ),
        ));
    }
    // The answer is not signed: its migration key counts only with the registered key's
    // signature, or anyone on the path could take the VM's memory.
    crate::migration_key::verify(
        dest.host_id,
        &dest.key,
        &prepared.migration_key,
        &prepared.migration_key_endorsement,
    )
    .map_err(|e| {
        refuse(
            StatusCode::BAD_GATEWAY,
            "destination_refused",
            format!("host {to}: {e}"),
        )
    })?;
    Ok(Outgoing {
        vm: vm.clone(),
        dest,
        migration_id,
        prepared,
        process,
    })
}

/// At the hold: the final payment state to the destination, then the lease handover with
/// the final claim. Payments are frozen by the caller holding `state`.
async fn hand_over(host: &Host, out: &Outgoing, state: &VmState) -> Result<(), String> {
    let payment = state.verifier.state();
    let sync = PaymentSync {
        index: payment.index,
        link: payment.link,
    };
    let path = format!("/v1/migrations/{}/payment", out.migration_id);
    peer::call::<serde_json::Value>(host, &out.dest, Method::POST, &path, &sync)
        .await
        .map_err(|e| format!("the destination refused the payment state: {}", chain(&e)))?;
    let final_claim =
        Claim::from_verifier(host.host_id(), &state.verifier).sign(&host.identity.key);
    host.broker
        .hand_over_lease(Handover {
            token_id: out.vm.token.token_id,
            from: host.host_id(),
            to: out.dest.host_id,
            final_claim,
        })
        .await
        .map_err(|e| format!("the broker refused the lease handover: {e}"))?;
    Ok(())
}

/// Drives a prepared migration to its end, reporting to `events`; returns the outcome
/// (`completed`, `cancelled` or `failed`).
pub async fn drive(host: Arc<Host>, out: Outgoing, events: Events) -> &'static str {
    let vm = out.vm.clone();
    let dest_url = out.dest.url.clone().unwrap_or_default();
    // Both ends present their migration keys, never their host identities.
    let mut params = migrator::MigrateParams::new(
        out.prepared.url.clone(),
        host.migration_key.path.clone(),
        out.prepared.migration_key.clone(),
    );
    params.hold_before_commit_s = Some(HOLD_S);
    emit(
        &events,
        json!({"event": "started", "vm_id": vm.id, "to": out.dest.host_id.to_string(), "url": dest_url}),
    );
    // Held from the hold to the end: payments wait, then see where the VM is.
    let mut frozen = None;
    let mut committed = false;
    let mut answer = None;
    match out.process.stream(&Request::Migrate(params)).await {
        Err(e) => tracing::warn!(vm = %vm.id, "cannot start the migration: {}", chain(&e)),
        Ok(mut lines) => loop {
            let line = match tokio::time::timeout(STREAM_SILENCE, lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                _ => break,
            };
            let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            match value["event"].as_str() {
                Some("progress") => {
                    value["vm_id"] = vm.id.clone().into();
                    emit(&events, value);
                }
                Some("ready_to_commit") => {
                    let state = vm.state.lock().await;
                    let decision = hand_over(&host, &out, &state).await;
                    let request = match &decision {
                        Ok(()) => Request::Commit {},
                        Err(why) => Request::Cancel {
                            reason: Some(why.clone()),
                        },
                    };
                    committed = decision.is_ok();
                    emit(
                        &events,
                        json!({"event": "switchover", "vm_id": vm.id, "index": state.verifier.index(),
                               "commit": committed, "error": decision.err()}),
                    );
                    if let Err(e) = out.process.call(&request, Duration::from_secs(10)).await {
                        tracing::warn!(vm = %vm.id, "cannot tell the vmm the decision: {}", chain(&e));
                    }
                    frozen = Some(state);
                }
                Some(_) => {}
                None => {
                    answer = Some(value);
                    break;
                }
            }
        },
    }
    let status = answer
        .as_ref()
        .and_then(|a| a["status"].as_str())
        .unwrap_or(if committed { "unknown" } else { "failed" });
    let outcome = match status {
        "completed" => IncomingOutcome::Running,
        "unknown" => {
            emit(
                &events,
                json!({"event": "unknown", "vm_id": vm.id,
                "message": "the link broke after commit; asking the destination"}),
            );
            resolve(&host, &out).await
        }
        _ => IncomingOutcome::Failed,
    };
    let result = if outcome == IncomingOutcome::Running {
        if let Some(ms) = answer.as_ref().and_then(|a| a["downtime-ms"].as_f64()) {
            host.metrics.observe_downtime(ms / 1000.0);
        }
        moved(&host, &out, status == "unknown").await;
        "completed"
    } else {
        stayed(&host, &out, committed, status == "unknown").await;
        if status == "cancelled" {
            "cancelled"
        } else {
            "failed"
        }
    };
    drop(frozen);
    host.metrics.inc("hostd_migrations_total", result);
    tracing::info!(event = "vm_migrated", vm = %vm.id, to = %out.dest.host_id, outcome = result, "migration ended");
    emit(
        &events,
        json!({"event": "result", "vm_id": vm.id, "status": result, "to": out.dest.host_id.to_string(),
               "url": dest_url, "stats": answer}),
    );
    result
}

/// After `unknown`: asks the destination until it says whether it runs the VM. The VM stays
/// paused here and its payments frozen meanwhile; a destination that stays silent keeps it
/// so (the operator sees it in the log), because guessing could run it twice.
async fn resolve(host: &Host, out: &Outgoing) -> IncomingOutcome {
    let path = format!("/v1/migrations/{}", out.migration_id);
    let mut wait = Duration::from_millis(200);
    loop {
        match peer::call::<OutcomeAnswer>(host, &out.dest, Method::GET, &path, &()).await {
            Ok(OutcomeAnswer {
                outcome: outcome @ (IncomingOutcome::Running | IncomingOutcome::Failed),
            }) => return outcome,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(vm = %out.vm.id, "migration outcome unknown and the destination cannot tell yet: {}", chain(&e))
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// The destination runs the VM: free everything here, settle nothing (the handover paid us).
async fn moved(host: &Host, out: &Outgoing, paused_here: bool) {
    let vm = &out.vm;
    vm.set_phase(Phase::Moved);
    host.moved.lock().unwrap_or_else(|e| e.into_inner()).insert(
        vm.id.clone(),
        (out.dest.host_id, out.dest.url.clone().unwrap_or_default()),
    );
    // A completed `vmm` exits by itself; a paused one after `unknown` is stopped.
    if paused_here
        || tokio::time::timeout(Duration::from_secs(10), out.process.exited())
            .await
            .is_err()
    {
        out.process.kill_and_wait(Duration::from_secs(5)).await;
    }
    // The destination announced the VM on its own tap; this one only held the old port.
    crate::network::remove_vm_tap(host, &vm.id, vm.net.as_ref()).await;
    crate::vmm_process::remove_files(&vm.dir);
    if let Err(e) = std::fs::remove_dir_all(&vm.dir) {
        tracing::warn!(vm = %vm.id, "cannot remove the VM directory: {e}");
    }
    host.vms().remove(&vm.id);
}

/// The VM stays: cancel the handover, tell the destination, and run on.
async fn stayed(host: &Host, out: &Outgoing, handed_over: bool, paused_here: bool) {
    let vm = &out.vm;
    if handed_over {
        if let Err(e) = host
            .broker
            .cancel_handover(vm.token.token_id, host.host_id())
            .await
        {
            tracing::error!(vm = %vm.id, "cannot cancel the lease handover: {e}");
        }
    }
    let path = format!("/v1/migrations/{}", out.migration_id);
    if let Err(e) =
        peer::call::<serde_json::Value>(host, &out.dest, Method::DELETE, &path, &()).await
    {
        tracing::warn!(vm = %vm.id, "cannot tell the destination to give up: {}", chain(&e));
    }
    if paused_here {
        if let Err(e) = out
            .process
            .call(&Request::Resume {}, Duration::from_secs(10))
            .await
        {
            tracing::error!(vm = %vm.id, "cannot resume the VM: {}", chain(&e));
        }
    }
    vm.change_phase(Phase::Migrating, Phase::Running);
}
