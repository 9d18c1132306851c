//! `POST /v1/vms/{id}/payments`: metering a VM's hash-chain payments.
//!
//! A link is checked by the `token` verifier with the host's own maximum skip, written to
//! the VM's record (fsync, rename, fsync) and only then acknowledged: an acknowledged link is
//! never lost, because it is the host's claim on the tenant's escrow. A refused link changes
//! nothing, in memory or on disk.

use axum::http::StatusCode;
use token::chain::verifier::LinkError;
use token::Payment;

use crate::host::{Host, Phase};
use crate::http::error::{chain, ApiError};

pub use laundromat_api::hostd::PaymentReceipt;
use laundromat_api::hostd::{moved_message, VM_MOVED};

fn refusal(error: &LinkError) -> (StatusCode, &'static str) {
    match error {
        LinkError::WrongToken { .. } => (StatusCode::FORBIDDEN, "wrong_chain"),
        LinkError::Stale { .. } => (StatusCode::CONFLICT, "replayed"),
        LinkError::BeyondChainEnd { .. } => (StatusCode::BAD_REQUEST, "beyond_chain_end"),
        LinkError::SkipTooLarge { .. } => (StatusCode::BAD_REQUEST, "skip_too_large"),
        LinkError::Mismatch { .. } => (StatusCode::FORBIDDEN, "forged"),
    }
}

/// The answer for a VM that is not here: "moved, retry at host B" if it migrated away.
fn moved_or_not_found(host: &Host, vm_id: &str) -> ApiError {
    match host.moved_to(vm_id) {
        Some((to, url)) => ApiError::new(
            StatusCode::CONFLICT,
            VM_MOVED,
            moved_message(vm_id, &to.to_string(), &url),
        ),
        None => ApiError::not_found(vm_id),
    }
}

pub async fn pay(host: &Host, vm_id: &str, payment: Payment) -> Result<PaymentReceipt, ApiError> {
    let result = pay_inner(host, vm_id, payment).await;
    host.metrics.inc(
        "hostd_payments_total",
        match &result {
            Ok(_) => "accepted",
            Err(error) => error.code,
        },
    );
    result
}

async fn pay_inner(host: &Host, vm_id: &str, payment: Payment) -> Result<PaymentReceipt, ApiError> {
    let vm = host
        .vm(vm_id)
        .ok_or_else(|| moved_or_not_found(host, vm_id))?;
    let mut state = vm.state.lock().await;
    // Checked under the lock: stopping and the migration switchover take it too, so no
    // payment slips in after the final claim was made.
    if vm.phase() == Phase::Moved {
        return Err(moved_or_not_found(host, vm_id));
    }
    if !matches!(vm.phase(), Phase::Running | Phase::Migrating) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "vm_not_running",
            format!(
                "VM {vm_id} is {}, not accepting payments",
                vm.phase().name()
            ),
        ));
    }
    let mut next = state.verifier.clone();
    let links_paid = next.accept_payment(&payment).map_err(|error| {
        let (status, code) = refusal(&error);
        ApiError::new(status, code, error.to_string())
    })?;
    let mut record = state.record.clone();
    record.payment = next.state().clone();
    tokio::task::block_in_place(|| record.save(&vm.dir)).map_err(|e| {
        tracing::error!(
            vm = vm_id,
            "cannot persist an accepted link; refusing it: {}",
            chain(&e)
        );
        ApiError::internal(format!("cannot persist the payment: {}", chain(&e)))
    })?;
    state.record = record;
    state.verifier = next;
    let index = state.verifier.index();
    Ok(PaymentReceipt {
        vm_id: vm_id.to_string(),
        index,
        links_paid,
        paid_until_ms: vm.meter.paid_until(index),
        reclaim_at_ms: vm.meter.reclaim_at(index),
    })
}
