//! The destination's side of a host-to-host migration.
//!
//! 1. `prepare`: the source host (authenticated by [`crate::peer`]) describes the VM. The
//!    token is checked as at admission (broker signature, validity, cluster), the payment
//!    state against the token with this host's own skip limit (hashing up to the chain: done
//!    here, long before the source pauses the guest), the capacity is reserved, and a
//!    `vmm run --incoming` is started that accepts only the source's migration key (named in
//!    the request its host identity signed).
//! 2. `sync_payment`: while the source holds the switchover, it sends its last accepted link;
//!    it is checked against the state verified in 1 and recorded durably.
//! 3. A watcher follows the `vmm` through its control socket: once it runs the VM, this host
//!    owns it (payments, reclaim) and confirms the lease handover with the broker; if it
//!    exits first, nothing ran and everything is freed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use token::chain::verifier::{Verifier, VerifierState};
use token::HostId;
use vmm::api::protocol::Request;

use super::messages::{IncomingOutcome, PaymentSync, PrepareIncoming, Prepared};
use crate::broker::HostRecord;
use crate::host::{now_ms, vm_from_record, Host, Phase, Vm};
use crate::http::error::{chain, ApiError};
use crate::network::VmNet;
use crate::record::VmRecord;
use crate::vmm_process::VmmProcess;

/// How long a prepared destination waits for its source before giving up.
const INCOMING_TIMEOUT_S: u64 = 120;
/// How often the watcher asks the incoming `vmm` whether it runs the VM.
const WATCH_INTERVAL: Duration = Duration::from_millis(20);
/// Most finished migrations whose outcome is remembered for the source to ask.
const OUTCOMES_KEPT: usize = 1024;

/// A migration this host receives.
#[derive(Debug, Clone)]
pub struct IncomingEntry {
    pub vm_id: String,
    pub source: HostId,
    pub outcome: IncomingOutcome,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

fn set_outcome(host: &Host, migration_id: &str, outcome: IncomingOutcome) {
    let mut incoming = host.incoming();
    if let Some(entry) = incoming.get_mut(migration_id) {
        entry.outcome = outcome;
    }
    // Forget the oldest finished ones beyond the bound.
    while incoming.len() > OUTCOMES_KEPT {
        let Some(oldest) = incoming
            .iter()
            .find(|(_, e)| e.outcome != IncomingOutcome::Waiting)
            .map(|(id, _)| id.clone())
        else {
            break;
        };
        incoming.remove(&oldest);
    }
}

/// A free TCP port on `ip` for the incoming `vmm` (bound and released: the `vmm` binds it
/// right after; a lost race makes it exit and the source sees a refused prepare).
fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

pub async fn prepare(
    host: &Arc<Host>,
    source: HostRecord,
    request: PrepareIncoming,
) -> Result<Prepared, ApiError> {
    let PrepareIncoming {
        migration_id,
        vm,
        migration_key: source_key,
    } = request;
    if migration_id.len() != 32 || !migration_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "a migration id is 32 hex digits",
        ));
    }
    if vm.vm_id.len() != 32 || !vm.vm_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "a VM id is 32 hex digits",
        ));
    }
    let key_ok = token::hex::decode_array::<32>(&source_key)
        .is_ok_and(|k| token::VerifyingKey::from_bytes(&k).is_ok());
    if !key_ok {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "the source's migration key is not an ed25519 public key in 64 hex digits",
        ));
    }
    // The token, as at admission (the image travels inside the VM's memory).
    let token = vm.token.token().clone();
    let keys = host
        .broker_keys_for(token.broker_key_id)
        .await
        .map_err(|e| refuse(StatusCode::BAD_GATEWAY, "broker_unavailable", e.to_string()))?;
    vm.token
        .verify(
            &keys,
            now_ms() / 1000,
            &host.config.cluster_id,
            &token.image_digest,
        )
        .map_err(crate::admission::token_refusal)?;
    // The payment state against the token, with this host's own skip limit.
    let max_skip = host.config.max_skip;
    let (check_token, state) = (token.clone(), vm.payment.clone());
    let verifier =
        tokio::task::spawn_blocking(move || Verifier::restore(&check_token, state, max_skip))
            .await
            .map_err(|e| ApiError::internal(format!("the payment check failed: {e}")))?
            .map_err(|e| {
                refuse(
                    StatusCode::FORBIDDEN,
                    "bad_payment_state",
                    format!("the payment state does not match the token: {e}"),
                )
            })?;
    let net = match (&vm.mac, &host.network) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(refuse(
                StatusCode::CONFLICT,
                "no_network",
                "the VM has a network card, and this host gives VMs no network (hostd runs without --bridge)",
            ))
        }
        (Some(mac), Some(_)) => {
            let mac = mac
                .parse()
                .map_err(|e: String| refuse(StatusCode::BAD_REQUEST, "malformed_request", e))?;
            Some(VmNet::arriving(&vm.vm_id, mac).map_err(|e| {
                refuse(StatusCode::BAD_REQUEST, "malformed_request", e.to_string())
            })?)
        }
    };
    let disk = vm
        .disk
        .as_ref()
        .map(|image| crate::disks::for_arrival(host, &vm.vm_id, image))
        .transpose()?;
    let record = VmRecord {
        vm_id: vm.vm_id.clone(),
        token: vm.token.clone(),
        boot: vm.boot,
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone(),
        cmdline: vm.cmdline.clone(),
        memory_mib: vm.memory_mib,
        vcpus: vm.vcpus,
        admitted_at_ms: vm.admitted_at_ms,
        payment: verifier.state().clone(),
        // The broker pays this host only above the source's final claim.
        redeemed_index: verifier.index(),
        net,
        disk,
        process: None,
    };
    let new_vm = vm_from_record(host, record, verifier, Phase::Incoming);
    let paid_until = new_vm.meter.paid_until(vm.payment.index);
    if paid_until != vm.paid_until_ms {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "bad_payment_state",
            format!(
                "the source says paid until {}, but the token and link {} give {paid_until}",
                vm.paid_until_ms, vm.payment.index
            ),
        ));
    }
    crate::admission::reserve(host, &new_vm)?;
    let unreserve = || {
        host.vms().remove(&new_vm.id);
    };
    let port = match free_port(host.config.migration_ip) {
        Ok(port) => port,
        Err(e) => {
            unreserve();
            return Err(ApiError::internal(format!("no free migration port: {e}")));
        }
    };
    let url = format!(
        "tcp://{}",
        std::net::SocketAddr::new(host.config.migration_ip, port)
    );
    host.incoming().insert(
        migration_id.clone(),
        IncomingEntry {
            vm_id: new_vm.id.clone(),
            source: source.host_id,
            outcome: IncomingOutcome::Waiting,
        },
    );
    let mut args = vec![
        "run".to_string(),
        "--incoming".into(),
        url.clone(),
        "--identity".into(),
        host.migration_key.path.display().to_string(),
        "--peer".into(),
        source_key,
        "--incoming-timeout".into(),
        INCOMING_TIMEOUT_S.to_string(),
    ];
    if let Some(net) = &new_vm.net {
        args.push("--net".into());
        args.push(net.vmm_arg());
    }
    if let Some(disk) = &new_vm.state.lock().await.record.disk {
        args.push("--disk".into());
        args.push(disk.vmm_arg());
    }
    let process = match start(host, &new_vm, &args).await {
        Ok(process) => process,
        Err(e) => {
            crate::network::remove_vm_tap(host, &new_vm.id, new_vm.net.as_ref()).await;
            let _ = std::fs::remove_dir_all(&new_vm.dir);
            unreserve();
            set_outcome(host, &migration_id, IncomingOutcome::Failed);
            return Err(e);
        }
    };
    tracing::info!(vm = %new_vm.id, source = %source.host_id, %url, "prepared an incoming migration");
    tokio::spawn(watch(host.clone(), new_vm, process, migration_id));
    Ok(Prepared {
        url,
        host_key: host.identity.public_hex(),
        migration_key: host.migration_key.public_hex(),
        migration_key_endorsement: host.migration_key.endorsement_hex(),
    })
}

async fn start(host: &Host, vm: &Vm, args: &[String]) -> Result<Arc<VmmProcess>, ApiError> {
    let mut state = vm.state.lock().await;
    std::fs::create_dir_all(&vm.dir)
        .map_err(|e| ApiError::internal(format!("cannot make the VM directory: {e}")))?;
    state
        .record
        .save(&vm.dir)
        .map_err(|e| ApiError::internal(chain(&e)))?;
    crate::admission::spawn_vmm(host, vm, &mut state, args).await
}

/// Follows the incoming `vmm` until it runs the VM or ends.
async fn watch(host: Arc<Host>, vm: Arc<Vm>, process: Arc<VmmProcess>, migration_id: String) {
    let deadline = Instant::now() + Duration::from_secs(INCOMING_TIMEOUT_S + 60);
    let running = loop {
        if process.has_exited() {
            break false;
        }
        let status = process
            .call(&Request::Status {}, Duration::from_secs(5))
            .await;
        if status.is_ok_and(|s| s["state"] == "running") {
            break true;
        }
        if Instant::now() > deadline {
            tracing::warn!(vm = %vm.id, "the incoming migration never finished; stopping it");
            process.kill_and_wait(Duration::from_secs(5)).await;
            break false;
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    };
    if !running {
        process.exited().await;
        tracing::info!(vm = %vm.id, log = %vm.log.tail_text(300), "the incoming migration ended without running the VM");
        crate::network::remove_vm_tap(&host, &vm.id, vm.net.as_ref()).await;
        crate::vmm_process::remove_files(&vm.dir);
        let _ = std::fs::remove_dir_all(&vm.dir);
        host.vms().remove(&vm.id);
        set_outcome(&host, &migration_id, IncomingOutcome::Failed);
        host.metrics
            .inc("hostd_incoming_migrations_total", "failed");
        return;
    }
    // The VM runs here now: this host bills and supervises it, and its writable disk copy is
    // this host's to remove when it ends.
    take_disk(&vm).await;
    vm.set_phase(Phase::Running);
    set_outcome(&host, &migration_id, IncomingOutcome::Running);
    host.metrics
        .inc("hostd_incoming_migrations_total", "running");
    tracing::info!(event = "vm_arrived", vm = %vm.id, token = %vm.token.token_id, "the migrated VM runs here");
    crate::lifecycle::supervise(host.clone(), vm.clone(), process);
    confirm_handover(&host, &vm).await;
}

/// Makes an arrived VM's disk copy this host's (recorded durably): the source no longer runs
/// the VM, so the copy goes when the VM ends here.
async fn take_disk(vm: &Vm) {
    let mut state = vm.state.lock().await;
    let Some(disk) = state.record.disk.as_mut().filter(|d| !d.owned) else {
        return;
    };
    disk.owned = true;
    let record = state.record.clone();
    if let Err(e) = tokio::task::block_in_place(|| record.save(&vm.dir)) {
        tracing::warn!(vm = %vm.id, "cannot record that the disk copy is this host's: {}", chain(&e));
    }
}

/// Confirms the lease handover, retrying while the broker cannot be reached (bounded: after
/// that the error is logged for the operator, and this host's claims for the VM are refused
/// until the handover is confirmed).
pub async fn confirm_handover(host: &Host, vm: &Vm) {
    for attempt in 0..10u32 {
        match host
            .broker
            .confirm_handover(vm.token.token_id, host.host_id())
            .await
        {
            Ok(_) => {
                tracing::info!(vm = %vm.id, "lease handover confirmed");
                return;
            }
            Err(crate::broker::BrokerError::Unavailable(e)) => {
                tracing::warn!(vm = %vm.id, attempt, "cannot confirm the lease handover yet: {e}");
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
            Err(e) => {
                tracing::error!(vm = %vm.id, "the broker refused the lease handover: {e}");
                return;
            }
        }
    }
}

/// The source's final link, checked against the verified state and recorded durably.
pub async fn sync_payment(
    host: &Host,
    source: HostId,
    migration_id: &str,
    sync: PaymentSync,
) -> Result<u64, ApiError> {
    let entry = host
        .incoming()
        .get(migration_id)
        .cloned()
        .filter(|e| e.source == source)
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "migration_not_found",
                format!("no migration {migration_id} from this host"),
            )
        })?;
    let vm = host
        .vm(&entry.vm_id)
        .filter(|vm| vm.phase() == Phase::Incoming)
        .ok_or_else(|| {
            refuse(
                StatusCode::CONFLICT,
                "migration_over",
                "the migration is no longer waiting for its switchover",
            )
        })?;
    let mut state = vm.state.lock().await;
    let current = state.verifier.state().clone();
    if sync.index == current.index && sync.link == current.link {
        return Ok(sync.index);
    }
    // The links paid during pre-copy: at most the rest of the chain to hash, a bound the
    // token sets, not the source.
    let mut wide = Verifier::try_from(VerifierState {
        max_skip: vm.token.chain_length,
        ..current
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    wide.accept(sync.index, &sync.link).map_err(|e| {
        refuse(
            StatusCode::FORBIDDEN,
            "bad_payment_state",
            format!("the final link does not follow the verified one: {e}"),
        )
    })?;
    let next = Verifier::try_from(VerifierState {
        max_skip: host.config.max_skip,
        ..wide.state().clone()
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut record = state.record.clone();
    record.payment = next.state().clone();
    record.redeemed_index = next.index();
    tokio::task::block_in_place(|| record.save(&vm.dir)).map_err(|e| {
        ApiError::internal(format!("cannot persist the payment state: {}", chain(&e)))
    })?;
    state.record = record;
    state.verifier = next;
    Ok(sync.index)
}

/// How the migration stands, for its source.
pub fn outcome(
    host: &Host,
    source: HostId,
    migration_id: &str,
) -> Result<IncomingOutcome, ApiError> {
    host.incoming()
        .get(migration_id)
        .filter(|e| e.source == source)
        .map(|e| e.outcome)
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "migration_not_found",
                format!("no migration {migration_id} from this host"),
            )
        })
}

/// The source gave up: stop the incoming `vmm` if it has not run the VM.
pub async fn abort(host: &Host, source: HostId, migration_id: &str) -> Result<(), ApiError> {
    let entry = host
        .incoming()
        .get(migration_id)
        .cloned()
        .filter(|e| e.source == source);
    let Some(entry) = entry else {
        return Ok(());
    };
    if let Some(vm) = host
        .vm(&entry.vm_id)
        .filter(|vm| vm.phase() == Phase::Incoming)
    {
        let process = vm.state.lock().await.process.clone();
        if let Some(process) = process {
            process.kill_and_wait(Duration::from_secs(5)).await;
        }
    }
    Ok(())
}
