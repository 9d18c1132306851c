//! `POST /v1/drain`: the operator moves every VM of this host to other hosts of its cluster,
//! one at a time. Destinations come from the broker's host directory and are picked by the
//! free capacity each reports now (`GET /v1/host`), the one with the most free memory that
//! fits first, so the VMs spread out.

use std::sync::Arc;

use serde_json::json;

use super::{emit, Events};
use crate::host::{Host, Phase};
use crate::http::handlers::HostInfo;

struct Candidate {
    host_id: token::HostId,
    free_memory_mib: u64,
    free_vcpus: u64,
}

/// The other hosts of the cluster that answer, with their free capacity.
async fn candidates(host: &Host) -> Vec<Candidate> {
    let adverts = match host.broker.directory(host.config.cluster_id).await {
        Ok(adverts) => adverts,
        Err(e) => {
            tracing::warn!("cannot read the host directory: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for advert in adverts.into_iter().filter(|a| a.host_id != host.host_id()) {
        let url = format!("{}/v1/host", advert.url.trim_end_matches('/'));
        let info = async {
            let response = host
                .http
                .get(&url)
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await?;
            response.error_for_status()?.json::<HostInfo>().await
        };
        match info.await {
            Ok(info) if info.host_id == advert.host_id.to_string() => out.push(Candidate {
                host_id: advert.host_id,
                free_memory_mib: info.free_memory_mib,
                free_vcpus: info.free_vcpus,
            }),
            Ok(_) => tracing::warn!(%url, "a host answers for another host id; skipped"),
            Err(e) => tracing::warn!(%url, "host does not answer; skipped: {e}"),
        }
    }
    out
}

/// Migrates every running VM away; reports each migration and a summary to `events`.
pub async fn drain(host: Arc<Host>, events: Events) {
    let mut vms: Vec<_> = host
        .vms()
        .values()
        .filter(|vm| vm.phase() == Phase::Running)
        .cloned()
        .collect();
    // The largest first, while there is most room.
    vms.sort_by_key(|vm| std::cmp::Reverse((vm.memory_mib, vm.vcpus)));
    let mut candidates = candidates(&host).await;
    emit(
        &events,
        json!({"event": "drain", "vms": vms.len(), "hosts": candidates.len()}),
    );
    let (mut moved, mut failed) = (0u32, 0u32);
    for vm in vms {
        let Some(pick) = candidates
            .iter_mut()
            .filter(|c| c.free_memory_mib >= vm.memory_mib && c.free_vcpus >= vm.vcpus)
            .max_by_key(|c| (c.free_memory_mib, c.free_vcpus))
        else {
            failed += 1;
            emit(
                &events,
                json!({"event": "result", "vm_id": vm.id, "status": "failed",
                       "error": "no registered host has room for it"}),
            );
            continue;
        };
        let to = pick.host_id;
        let out = match super::outgoing::begin(&host, vm.clone(), to).await {
            Ok(out) => out,
            Err(e) => {
                failed += 1;
                emit(
                    &events,
                    json!({"event": "result", "vm_id": vm.id, "status": "failed",
                           "to": to.to_string(), "error": e.message}),
                );
                continue;
            }
        };
        pick.free_memory_mib -= vm.memory_mib;
        pick.free_vcpus -= vm.vcpus;
        match super::outgoing::drive(host.clone(), out, events.clone()).await {
            "completed" => moved += 1,
            _ => failed += 1,
        }
    }
    emit(
        &events,
        json!({"event": "drained", "moved": moved, "failed": failed, "left": host.vms().len()}),
    );
}
