//! Running the broker: bind, serve, sweep refunds, stop cleanly on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::router;
use crate::service::Broker;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// A running broker.
pub struct Running {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Stops accepting, finishes the requests in flight, and waits for the server to end.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(ServeError::Serve(std::io::Error::other(join))),
        }
    }

    /// Waits for the server to end by itself.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(ServeError::Serve(std::io::Error::other(join))),
        }
    }

    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Binds `addr` and serves the broker until stopped. Every `refund_every`, tokens past
/// expiry plus grace are refunded.
pub async fn start(
    broker: Arc<Broker>,
    addr: &str,
    refund_every: Duration,
) -> Result<Running, ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    let (stop, mut stopped) = watch::channel(false);
    let sweeper = broker.clone();
    let mut sweeper_stop = stop.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(refund_every) => {}
                _ = sweeper_stop.changed() => return,
            }
            if let Err(error) = sweeper.refund_due().await {
                tracing::warn!(%error, "refund sweep failed; will retry");
            }
        }
    });
    let app = router(broker.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await
            .map_err(ServeError::Serve)?;
        broker.db.close().await;
        Ok(())
    });
    tracing::info!(%local, "broker listening");
    Ok(Running {
        addr: local,
        stop,
        task,
    })
}
