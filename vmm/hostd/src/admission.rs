//! `POST /v1/vms`: admitting a VM on a boot token.
//!
//! The checks, in order, each with its own refusal: the token's form, the broker's key and
//! signature, not-before and expiry, the cluster, the image digest, the resources asked for
//! (within the token, then within the host's free capacity), the token not already running
//! here, and the broker's lease. Only then does `vmm` start. A refusal starts nothing and
//! leaves nothing behind: the capacity reservation, the lease and the VM directory are all
//! undone.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use token::chain::verifier::Verifier;
use token::signed_token::VerifyError;
use token::SignedToken;

use crate::broker::BrokerError;
use crate::host::{now_ms, vm_from_record, Host, Phase, VmView};
use crate::http::error::{chain, ApiError};
use crate::images::ImageError;
use crate::network::VmNet;
use crate::record::VmRecord;
use crate::vmm_process::VmmProcess;

pub use laundromat_api::hostd::AdmitRequest;

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

pub(crate) fn token_refusal(error: VerifyError) -> ApiError {
    use StatusCode as S;
    let (status, code) = match &error {
        VerifyError::Malformed(_) => (S::BAD_REQUEST, "malformed_token"),
        VerifyError::UnsupportedVersion { .. } => (S::BAD_REQUEST, "unsupported_token_version"),
        VerifyError::UnknownBrokerKey { .. } => (S::UNAUTHORIZED, "unknown_broker_key"),
        VerifyError::BadSignature => (S::UNAUTHORIZED, "bad_token_signature"),
        VerifyError::NotYetValid { .. } => (S::FORBIDDEN, "token_not_yet_valid"),
        VerifyError::Expired { .. } => (S::FORBIDDEN, "token_expired"),
        VerifyError::WrongCluster { .. } => (S::FORBIDDEN, "wrong_cluster"),
        VerifyError::WrongImage { .. } => (S::FORBIDDEN, "wrong_image"),
    };
    refuse(status, code, chain(&error))
}

fn broker_unavailable(error: &BrokerError) -> ApiError {
    refuse(
        StatusCode::BAD_GATEWAY,
        "broker_unavailable",
        error.to_string(),
    )
}

/// `vmm run` arguments for a record (the control socket is added by the supervisor).
fn vmm_args(host: &Host, record: &VmRecord) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--boot".into(),
        record.boot.name().into(),
        "--kernel".into(),
        host.images.path(&record.kernel).display().to_string(),
        "--mem".into(),
        record.memory_mib.to_string(),
        "--vcpus".into(),
        record.vcpus.to_string(),
        "--cmdline".into(),
        record.cmdline.clone(),
    ];
    if let Some(initrd) = &record.initrd {
        args.push("--initrd".into());
        args.push(host.images.path(initrd).display().to_string());
    }
    if let Some(net) = &record.net {
        args.push("--net".into());
        args.push(net.vmm_arg());
    }
    if let Some(disk) = &record.disk {
        args.push("--disk".into());
        args.push(disk.vmm_arg());
    }
    args
}

pub async fn admit(host: &Arc<Host>, request: AdmitRequest) -> Result<VmView, ApiError> {
    let outcome = admit_inner(host, request).await;
    host.metrics.inc(
        "hostd_admissions_total",
        match &outcome {
            Ok(_) => "admitted",
            Err(error) => error.code,
        },
    );
    outcome
}

async fn admit_inner(host: &Arc<Host>, request: AdmitRequest) -> Result<VmView, ApiError> {
    let began = std::time::Instant::now();
    // 1-3. Form, broker key and signature, validity, cluster. The image is checked separately
    // below (it needs the blobs), so the token is first checked against its own digest.
    let bytes = token::hex::decode(request.token.trim()).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "malformed_token",
            format!("the token is not hex: {e}"),
        )
    })?;
    let signed = SignedToken::from_bytes(&bytes).map_err(|e| token_refusal(e.into()))?;
    let token = signed.token().clone();
    let keys = host
        .broker_keys_for(token.broker_key_id)
        .await
        .map_err(|e| broker_unavailable(&e))?;
    let now_s = now_ms() / 1000;
    signed
        .verify(&keys, now_s, &host.config.cluster_id, &token.image_digest)
        .map_err(token_refusal)?;

    // 4. The image: blobs present, and the token's digest over kernel, initrd, cmdline and
    // disk.
    let missing = |e: ImageError| refuse(StatusCode::NOT_FOUND, "image_not_found", e.to_string());
    let blobs = [Some(&request.kernel), request.initrd.as_ref()];
    let disk_blob = request.disk.as_ref().map(|d| &d.sha256);
    for blob in blobs.into_iter().chain([disk_blob]).flatten() {
        host.images.existing(blob).map_err(missing)?;
    }
    let digest = host
        .images
        .token_digest(
            &request.kernel,
            request.initrd.as_ref(),
            &request.cmdline,
            request.disk.as_ref(),
        )
        .await
        .map_err(|e| match e {
            ImageError::NotFound(_) => missing(e),
            ImageError::TooLarge { .. } => refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "image_too_large",
                e.to_string(),
            ),
            other => ApiError::internal(format!("cannot read the image: {}", chain(&other))),
        })?;
    if digest != token.image_digest {
        return Err(token_refusal(VerifyError::WrongImage {
            expected: digest,
            found: token.image_digest,
        }));
    }

    // 5. Resources within the token.
    let memory_mib = request.memory_mib.unwrap_or(token.memory_mib);
    let vcpus = request.vcpus.unwrap_or(token.vcpus);
    if memory_mib == 0 || vcpus == 0 || vcpus > u32::from(u8::MAX) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_resources",
            format!("{memory_mib} MiB and {vcpus} vCPUs is not a VM this host can run"),
        ));
    }
    if memory_mib > token.memory_mib || vcpus > token.vcpus {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "exceeds_token",
            format!(
                "{memory_mib} MiB and {vcpus} vCPUs exceed the token's {} MiB and {} vCPUs",
                token.memory_mib, token.vcpus
            ),
        ));
    }

    // 6-7. Free capacity and the token not running here, checked and reserved at once.
    let vm_id = token::hex::encode(&rand::random::<[u8; 16]>());
    let net = match host.network {
        Some(_) => Some(VmNet::for_vm(&vm_id).map_err(|e| ApiError::internal(e.to_string()))?),
        None => None,
    };
    let record = VmRecord {
        vm_id: vm_id.clone(),
        token: signed.clone(),
        boot: request.boot,
        kernel: request.kernel,
        initrd: request.initrd,
        cmdline: request.cmdline,
        memory_mib,
        vcpus,
        admitted_at_ms: now_ms(),
        payment: Verifier::new(&token, host.config.max_skip)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .state()
            .clone(),
        redeemed_index: 0,
        net,
        // Made below, once the resources are reserved: a copy is not made for nothing.
        disk: None,
        process: None,
    };
    let verifier = Verifier::new(&token, host.config.max_skip)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let vm = vm_from_record(host, record, verifier, Phase::Starting);
    reserve(host, &vm)?;
    let unreserve = || {
        host.vms().remove(&vm_id);
    };
    let disk = match &request.disk {
        Some(image) => match crate::disks::for_admission(host, &vm_id, image).await {
            Ok(disk) => Some(disk),
            Err(error) => {
                unreserve();
                return Err(error);
            }
        },
        None => None,
    };
    vm.state.lock().await.record.disk = disk.clone();
    let unreserve = || {
        crate::disks::remove_owned(&vm_id, disk.as_ref());
        unreserve();
    };

    // 8. The broker's lease, while the record is made durable: a record without a process
    // is settled on restart, so writing it before the lease is held loses nothing, and the
    // two waits overlap.
    let checked = began.elapsed();
    let persist = {
        let (dir, record) = (vm.dir.clone(), vm.state.lock().await.record.clone());
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot make the VM directory: {e}"))?;
            record.save(&dir).map_err(|e| chain(&e))
        })
    };
    let (lease, persisted) = tokio::join!(
        host.broker.acquire_lease(token.token_id, host.host_id()),
        persist
    );
    let persisted = persisted
        .map_err(|e| format!("the record task failed: {e}"))
        .and_then(|r| r);
    if let Err(error) = lease {
        let _ = std::fs::remove_dir_all(&vm.dir);
        unreserve();
        return Err(match error {
            BrokerError::LeaseHeld { .. } => {
                refuse(StatusCode::CONFLICT, "lease_held", error.to_string())
            }
            BrokerError::UnknownHost(_) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "host_not_registered",
                format!("{error}; the operator must register this host's key"),
            ),
            other => broker_unavailable(&other),
        });
    }

    // Start `vmm`. From here a failure undoes the lease, the directory and the reservation.
    let leased = began.elapsed();
    let started = match persisted {
        Ok(()) => start(host, &vm).await,
        Err(error) => Err(ApiError::internal(error)),
    };
    match started {
        Ok(()) => {
            // Where admission time goes: the checks (with the image digest), the broker's
            // lease, and starting `vmm` until its control socket answers.
            tracing::info!(vm = %vm_id, token = %token.token_id, memory_mib, vcpus,
                checks_ms = checked.as_millis() as u64,
                lease_ms = (leased - checked).as_millis() as u64,
                start_ms = (began.elapsed() - leased).as_millis() as u64,
                "VM admitted");
            host.capacity_changed.notify_one();
            Ok(host.view(&vm).await)
        }
        Err(error) => {
            crate::network::remove_vm_tap(host, &vm_id, vm.net.as_ref()).await;
            let _ = std::fs::remove_dir_all(&vm.dir);
            if let Err(e) = host
                .broker
                .release_lease(token.token_id, host.host_id())
                .await
            {
                tracing::warn!(token = %token.token_id, "cannot release the lease of a VM that failed to start: {e}");
            }
            unreserve();
            Err(error)
        }
    }
}

/// Checks that `vm`'s token does not run here and that its resources are free, and reserves
/// them by entering it in the host's VMs, all under one lock.
pub(crate) fn reserve(host: &Host, vm: &Arc<crate::host::Vm>) -> Result<(), ApiError> {
    let mut vms = host.vms();
    if let Some(other) = vms
        .values()
        .find(|v| v.token.token_id == vm.token.token_id || v.id == vm.id)
    {
        return Err(refuse(
            StatusCode::CONFLICT,
            "token_running",
            format!(
                "token {} already runs here as VM {}",
                vm.token.token_id, other.id
            ),
        ));
    }
    let used_mem: u64 = vms.values().map(|v| v.memory_mib).sum();
    let used_vcpus: u64 = vms.values().map(|v| v.vcpus).sum();
    if used_mem + vm.memory_mib > host.config.memory_mib
        || used_vcpus + vm.vcpus > host.config.vcpus
    {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "insufficient_capacity",
            format!(
                "this host has {} MiB and {} vCPUs free, not {} MiB and {}",
                host.config.memory_mib.saturating_sub(used_mem),
                host.config.vcpus.saturating_sub(used_vcpus),
                vm.memory_mib,
                vm.vcpus
            ),
        ));
    }
    vms.insert(vm.id.clone(), vm.clone());
    Ok(())
}

/// Starts `vmm` for a VM whose record is saved, records its process and starts supervising it.
async fn start(host: &Arc<Host>, vm: &Arc<crate::host::Vm>) -> Result<(), ApiError> {
    let mut state = vm.state.lock().await;
    let args = vmm_args(host, &state.record);
    let process = spawn_vmm(host, vm, &mut state, &args).await?;
    vm.set_phase(Phase::Running);
    drop(state);
    crate::lifecycle::supervise(host.clone(), vm.clone(), process);
    Ok(())
}

/// Gives a VM whose record is saved its tap (if it has a network), starts its `vmm` with
/// `args`, and records the process durably, so a restarted hostd re-adopts it. Shared by
/// admission and incoming migrations.
pub(crate) async fn spawn_vmm(
    host: &Host,
    vm: &crate::host::Vm,
    state: &mut crate::host::VmState,
    args: &[String],
) -> Result<Arc<VmmProcess>, ApiError> {
    // The tap exists, on this host's bridge, before the VM can run and announce itself.
    if let Some(net) = &vm.net {
        crate::network::create_vm_tap(host, &vm.id, net)
            .await
            .map_err(|e| {
                ApiError::internal(format!("cannot give the VM its tap: {}", chain(&e)))
            })?;
    }
    let process = VmmProcess::spawn(
        &crate::vmm_process::Launch::of(host),
        args,
        &vm.dir,
        vm.console.clone(),
        vm.log.clone(),
        host.config.start_timeout,
    )
    .await
    .map_err(|e| {
        refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "vm_failed_to_start",
            chain(&e),
        )
    })?;
    state.record.process = Some(process.id);
    if let Err(e) = state.record.save(&vm.dir) {
        process.kill_and_wait(Duration::from_secs(5)).await;
        return Err(ApiError::internal(chain(&e)));
    }
    let process = Arc::new(process);
    state.process = Some(process.clone());
    Ok(process)
}
