//! The route handlers: parse, call the host, shape the answer.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use laundromat_api::hostd::{ImageStored, Stopped, CONSOLE_NEXT_HEADER, CONSOLE_START_HEADER};
use serde::Deserialize;
use token::Payment;

use super::error::{chain, ApiError};
use crate::admission::AdmitRequest;
use crate::host::{now_ms, Host, VmView};
use crate::images::{BlobDigest, ImageError};
use crate::lifecycle::{end_vm, EndReason};

type HostState = State<Arc<Host>>;

/// Parses a JSON body, answering a malformed one with a 400 that says what is wrong.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            format!("the request body is not valid: {e}"),
        )
    })
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn metrics(State(host): HostState) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        host.render_metrics(),
    )
}

pub use laundromat_api::hostd::HostInfo;

pub async fn host_info(State(host): HostState) -> Json<HostInfo> {
    let (free_memory_mib, free_vcpus) = host.free_capacity();
    Json(HostInfo {
        host_id: host.host_id().to_string(),
        public_key: token::hex::encode(host.identity.public_key().as_bytes()),
        cluster_id: host.config.cluster_id.to_string(),
        memory_mib: host.config.memory_mib,
        vcpus: host.config.vcpus,
        free_memory_mib,
        free_vcpus,
        max_skip: host.config.max_skip,
        grace_ms: host.config.grace.as_millis() as u64,
    })
}

pub async fn put_image(
    State(host): HostState,
    Path(digest): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let digest = BlobDigest::try_from(digest)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_digest", e.to_string()))?;
    let created = host.images.put(&digest, body).await.map_err(|e| {
        let (status, code) = match &e {
            ImageError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
            ImageError::DigestMismatch { .. } => (StatusCode::BAD_REQUEST, "digest_mismatch"),
            ImageError::NotFound(_) => (StatusCode::NOT_FOUND, "image_not_found"),
            ImageError::Upload(_) => (StatusCode::BAD_REQUEST, "upload_failed"),
            ImageError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, chain(&e))
    })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ImageStored { sha256: digest })).into_response())
}

pub async fn admit(State(host): HostState, body: Bytes) -> Result<Response, ApiError> {
    let request: AdmitRequest = parse(&body)?;
    let view = crate::admission::admit(&host, request).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn list(State(host): HostState) -> Json<Vec<VmView>> {
    let vms: Vec<_> = host.vms().values().cloned().collect();
    let mut views = Vec::with_capacity(vms.len());
    for vm in vms {
        views.push(host.view(&vm).await);
    }
    Json(views)
}

pub async fn show(
    State(host): HostState,
    Path(id): Path<String>,
) -> Result<Json<VmView>, ApiError> {
    let vm = host.vm(&id).ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(host.view(&vm).await))
}

pub async fn pay(
    State(host): HostState,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<crate::payments::PaymentReceipt>, ApiError> {
    let payment: Payment = parse(&body)?;
    Ok(Json(crate::payments::pay(&host, &id, payment).await?))
}

/// Checks that a request about `vm` is signed by the VM's tenant (path and query signed).
fn authorize(
    vm: &crate::host::Vm,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    crate::auth::verify(
        &vm.token.tenant_key,
        method.as_str(),
        path,
        body,
        headers,
        now_ms() / 1000,
    )
    .map_err(ApiError::from)
}

pub async fn delete(
    State(host): HostState,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Stopped>, ApiError> {
    let vm = host.vm(&id).ok_or_else(|| ApiError::not_found(&id))?;
    authorize(&vm, &method, &uri, &headers, &body)?;
    let index = vm.state.lock().await.verifier.index();
    end_vm(&host, &vm, EndReason::Deleted).await;
    Ok(Json(Stopped {
        vm_id: id,
        state: "stopped".into(),
        paid_index: index,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ConsoleQuery {
    /// Absolute offset to read from; older bytes than the ring holds are skipped.
    #[serde(default)]
    pub from: u64,
    #[serde(default)]
    pub max: Option<usize>,
}

/// Longest console read in one answer.
const MAX_CONSOLE_READ: usize = 1 << 20;

pub async fn console(
    State(host): HostState,
    Path(id): Path<String>,
    Query(query): Query<ConsoleQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let vm = host.vm(&id).ok_or_else(|| ApiError::not_found(&id))?;
    authorize(&vm, &method, &uri, &headers, b"")?;
    let max = query.max.unwrap_or(MAX_CONSOLE_READ).min(MAX_CONSOLE_READ);
    let chunk = vm.console.read_from(query.from, max);
    Ok((
        [
            ("content-type", "application/octet-stream".to_string()),
            (CONSOLE_START_HEADER, chunk.start.to_string()),
            (CONSOLE_NEXT_HEADER, chunk.next.to_string()),
        ],
        chunk.bytes,
    )
        .into_response())
}
