//! hostd's HTTP API (see the README's "hostd" section for the list).
//!
//! Overload protection wraps every route: at most `max_concurrent` requests are handled at
//! once, and a request beyond that is shed at once with 503 and `Retry-After` rather than
//! queued, so a flood costs neither unbounded memory nor the latency of paying tenants.

mod console_stream;
pub mod error;
pub mod handlers;
mod lines;

use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use tower::ServiceBuilder;

use crate::host::Host;
use crate::images::BlobKind;
use error::ApiError;

/// Largest JSON request body (tokens, payments): far above any legitimate one.
const MAX_JSON_BODY: usize = 64 * 1024;

pub fn router(host: Arc<Host>, max_concurrent: usize) -> Router {
    let limit = |kind| usize::try_from(host.images.limit(kind)).unwrap_or(usize::MAX);
    let (image_limit, disk_limit) = (limit(BlobKind::Boot), limit(BlobKind::Disk));
    let routes = Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/host", get(handlers::host_info))
        .route(
            "/v1/images/{sha256}",
            put(handlers::put_image).layer(DefaultBodyLimit::max(image_limit)),
        )
        .route(
            "/v1/disks/{sha256}",
            put(handlers::put_disk).layer(DefaultBodyLimit::max(disk_limit)),
        )
        .route("/v1/vms", post(handlers::admit).get(handlers::list))
        .route("/v1/vms/{id}", get(handlers::show).delete(handlers::delete))
        .route("/v1/vms/{id}/payments", post(handlers::pay))
        .route("/v1/vms/{id}/console", get(handlers::console))
        .route("/v1/vms/{id}/migrate", post(handlers::migrate))
        .route("/v1/drain", post(handlers::drain))
        .route("/v1/migrations", post(handlers::prepare_incoming))
        .route(
            "/v1/migrations/{id}",
            get(handlers::incoming_outcome).delete(handlers::abort_incoming),
        )
        .route("/v1/migrations/{id}/payment", post(handlers::sync_payment))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(host);
    // One limit for the whole API: `Router::layer` would give each route its own.
    let limited = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "hostd is handling as many requests as it allows; retry shortly",
            )
        }))
        .load_shed()
        .concurrency_limit(max_concurrent)
        .service(routes);
    Router::new().fallback_service(limited)
}
