//! Startup after a crash or a restart: every VM directory is either re-adopted (its `vmm`
//! still runs and answers) or ended and settled (its `vmm` is gone or does not answer).
//! Nothing is orphaned: a `vmm` hostd cannot re-adopt is killed, and its paid links are
//! redeemed from the record.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use token::chain::verifier::Verifier;
use vmm::api::protocol::Request;

use crate::host::{vm_from_record, Host, Phase};
use crate::http::error::chain;
use crate::lifecycle::{end_vm, supervise, EndReason};
use crate::record::VmRecord;
use crate::vmm_process::{parent_pid, start_ticks, ProcessId, VmmProcess, API_SOCKET};

/// The pid of a process whose command line names `socket` (a `vmm` started with
/// `--api-sock SOCKET`): how a VM started just before a crash, whose pid was not yet
/// recorded, is found. A jailed VM is two such processes, the jail's supervisor and the VM it
/// forked with the same command line; hostd started, and watches, the supervisor.
fn find_by_socket(socket: &Path) -> Option<u32> {
    let needle = socket.as_os_str().as_encoded_bytes();
    let matches: Vec<(u32, Option<u32>)> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == needle)
                .then(|| (pid, parent_pid(pid)))
        })
        .collect();
    outermost(&matches)
}

/// Of `(pid, parent)` pairs, the first process whose parent is not among them.
fn outermost(matches: &[(u32, Option<u32>)]) -> Option<u32> {
    matches
        .iter()
        .find(|(_, parent)| parent.is_none_or(|p| !matches.iter().any(|(pid, _)| *pid == p)))
        .map(|(pid, _)| *pid)
}

/// Re-adopts or ends every VM found in the data directory.
pub async fn recover(host: &Arc<Host>) {
    let Ok(entries) = std::fs::read_dir(host.config.data_dir.join("vms")) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        if let Err(e) = recover_one(host, &dir).await {
            tracing::error!(dir = %dir.display(), "cannot recover this VM: {e}");
        }
    }
    crate::lifecycle::settle_pending(host).await;
}

async fn recover_one(host: &Arc<Host>, dir: &Path) -> Result<(), String> {
    let record = match VmRecord::load(dir) {
        Ok(record) => record,
        Err(e) => {
            // Without a record there is nothing to bill; stop what runs there.
            if let Some(pid) = find_by_socket(&dir.join(API_SOCKET)) {
                if let Some(start_ticks) = start_ticks(pid) {
                    let id = ProcessId { pid, start_ticks };
                    let log = Arc::new(crate::console::ConsoleRing::new(1024));
                    if let Ok(Some(process)) = VmmProcess::adopt(id, dir, log.clone(), log) {
                        process.kill_and_wait(Duration::from_secs(5)).await;
                    }
                }
            }
            return Err(format!(
                "its record is unreadable ({}); its vmm was stopped",
                chain(&e)
            ));
        }
    };
    // The host's own skip limit, whatever the file says; and the stored link is checked to
    // be on the token's chain, so a damaged file cannot make up paid time.
    let verifier = Verifier::restore(
        record.token.token(),
        record.payment.clone(),
        host.config.max_skip,
    )
    .map_err(|e| format!("its payment state does not match its token: {e}"))?;
    let id = record.process.or_else(|| {
        let pid = find_by_socket(&dir.join(API_SOCKET))?;
        Some(ProcessId {
            pid,
            start_ticks: start_ticks(pid)?,
        })
    });
    let vm = vm_from_record(host, record, verifier, Phase::Running);
    let adopted = match id {
        Some(id) => {
            VmmProcess::adopt(id, dir, vm.console.clone(), vm.log.clone()).map_err(|e| chain(&e))?
        }
        None => None,
    };
    let answering = match &adopted {
        Some(process) => process
            .call(&Request::Status {}, Duration::from_secs(5))
            .await
            .is_ok(),
        None => false,
    };
    host.vms().insert(vm.id.clone(), vm.clone());
    match adopted {
        Some(process) if answering => {
            let process = Arc::new(process);
            vm.state.lock().await.process = Some(process.clone());
            tracing::info!(vm = %vm.id, pid = process.id.pid, "re-adopted a running VM");
            supervise(host.clone(), vm, process);
        }
        other => {
            if let Some(process) = other {
                tracing::warn!(vm = %vm.id, "its vmm does not answer; stopping it");
                vm.state.lock().await.process = Some(Arc::new(process));
            } else {
                tracing::info!(vm = %vm.id, "its vmm ended while hostd was down");
            }
            end_vm(host, &vm, EndReason::Exited).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::outermost;

    #[test]
    fn a_jails_supervisor_is_found_rather_than_its_vm_whatever_the_pid_order() {
        // The VM (pid 90) was forked by its supervisor (pid 120) after a pid wrap.
        assert_eq!(outermost(&[(90, Some(120)), (120, Some(1))]), Some(120));
        assert_eq!(outermost(&[(120, Some(1)), (121, Some(120))]), Some(120));
        assert_eq!(outermost(&[(7, None)]), Some(7));
        assert_eq!(outermost(&[]), None);
    }
}
