//! Running hostd: recovery, the periodic work, the HTTP server and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::host::Host;
use crate::lifecycle::{end_vm, EndReason};

/// Waits for SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers hostd can still be stopped by killing it; it recovers.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Serves `host` on `listen` until SIGTERM or SIGINT. VMs keep running across a hostd
/// restart (they are re-adopted) unless `stop_vms_on_exit`.
pub async fn run(
    host: Arc<Host>,
    listen: SocketAddr,
    max_concurrent: usize,
    stop_vms_on_exit: bool,
) -> std::io::Result<()> {
    crate::recovery::recover(&host).await;
    crate::network::remove_orphan_taps(&host).await;
    crate::lifecycle::spawn_periodic(host.clone());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        host_id = %host.host_id(),
        cluster = %host.config.cluster_id,
        vms = host.vms().len(),
        "hostd serving"
    );
    let app = crate::http::router(host.clone(), max_concurrent);
    let stopping = host.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Graceful shutdown waits for every answer to end: followed consoles must.
            stopping.shutting_down.send_replace(true);
        })
        .await?;
    if stop_vms_on_exit {
        let vms: Vec<_> = host.vms().values().cloned().collect();
        for vm in vms {
            end_vm(&host, &vm, EndReason::HostShutdown).await;
        }
    } else {
        tracing::info!(
            vms = host.vms().len(),
            "leaving VMs running; the next hostd start re-adopts them"
        );
    }
    Ok(())
}
