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
use crate::images::{BlobDigest, BlobKind, ImageError};
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
    store_blob(&host, digest, BlobKind::Boot, body).await
}

pub async fn put_disk(
    State(host): HostState,
    Path(digest): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    store_blob(&host, digest, BlobKind::Disk, body).await
}

async fn store_blob(
    host: &Host,
    digest: String,
    kind: BlobKind,
    body: Body,
) -> Result<Response, ApiError> {
    let digest = BlobDigest::try_from(digest)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_digest", e.to_string()))?;
    let created = host.images.put(&digest, kind, body).await.map_err(|e| {
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

/// The refusal for a request whose signature does not hold; `wrong_key` is the code when it
/// is signed, but not by whom it must be.
pub(crate) fn auth_refusal(e: crate::auth::AuthError, wrong_key: &'static str) -> ApiError {
    match e {
        crate::auth::AuthError::BadSignature => {
            ApiError::new(StatusCode::FORBIDDEN, wrong_key, e.to_string())
        }
        e => ApiError::from(e),
    }
}

/// Checks that a request is signed by one of `keys` (path and query signed; each nonce once).
fn signed_by(
    keys: &[token::VerifyingKey],
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<token::VerifyingKey, crate::auth::AuthError> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    crate::auth::verify_any(keys, method.as_str(), path, body, headers, now_ms() / 1000)
}

/// Checks that a request about `vm` is signed by the VM's tenant (path and query signed).
fn authorize(
    vm: &crate::host::Vm,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    signed_by(&[vm.token.tenant_key], method, uri, headers, body)
        .map(|_| ())
        .map_err(|e| auth_refusal(e, "not_the_tenant"))
}

/// Checks that a request is signed by the operator (`--operator-key`).
fn authorize_operator(
    host: &Host,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let key = host.config.operator_key.ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "not_the_operator",
            "this host has no operator key (--operator-key)",
        )
    })?;
    signed_by(&[key], method, uri, headers, body)
        .map(|_| ())
        .map_err(|e| auth_refusal(e, "not_the_operator"))
}

/// A JSON-lines answer that streams what `events` receives until every sender is gone.
fn json_lines(events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) -> Response {
    (
        [("content-type", "application/x-ndjson")],
        Body::new(super::lines::JsonLines(events)),
    )
        .into_response()
}

/// `POST /v1/vms/{id}/migrate`: signed by the VM's tenant or by the operator. Refusals come
/// as an error answer; once the destination prepared, progress streams as JSON lines.
pub async fn migrate(
    State(host): HostState,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let vm = host.vm(&id).ok_or_else(|| ApiError::not_found(&id))?;
    // One check against both keys: a request's nonce is spent by the first check.
    let allowed: Vec<token::VerifyingKey> = std::iter::once(vm.token.tenant_key)
        .chain(host.config.operator_key)
        .collect();
    signed_by(&allowed, &method, &uri, &headers, &body)
        .map_err(|e| auth_refusal(e, "not_the_tenant"))?;
    let request: crate::migration::messages::MigrateRequest = parse(&body)?;
    let out = crate::migration::outgoing::begin(&host, vm, request.to).await?;
    let (events, lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::migration::outgoing::drive(host.clone(), out, events));
    Ok(json_lines(lines))
}

/// `POST /v1/drain`: operator-signed; every VM to other hosts, progress as JSON lines.
pub async fn drain(
    State(host): HostState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize_operator(&host, &method, &uri, &headers, &body)?;
    let (events, lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(crate::migration::drain::drain(host.clone(), events));
    Ok(json_lines(lines))
}

/// `POST /v1/migrations`: a registered host asks this one to receive a VM.
pub async fn prepare_incoming(
    State(host): HostState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<crate::migration::messages::Prepared>, ApiError> {
    let source = crate::peer::authenticate(&host, &method, uri.path(), &headers, &body).await?;
    let request = parse(&body)?;
    Ok(Json(
        crate::migration::incoming::prepare(&host, source, request).await?,
    ))
}

/// `POST /v1/migrations/{id}/payment`: the source's final link at the switchover.
pub async fn sync_payment(
    State(host): HostState,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let source = crate::peer::authenticate(&host, &method, uri.path(), &headers, &body).await?;
    let sync = parse(&body)?;
    let index = crate::migration::incoming::sync_payment(&host, source.host_id, &id, sync).await?;
    Ok(Json(serde_json::json!({ "index": index })))
}

/// `GET /v1/migrations/{id}`: how a migration from the asking host stands here.
pub async fn incoming_outcome(
    State(host): HostState,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<crate::migration::messages::OutcomeAnswer>, ApiError> {
    let source = crate::peer::authenticate(&host, &method, uri.path(), &headers, b"").await?;
    let outcome = crate::migration::incoming::outcome(&host, source.host_id, &id)?;
    Ok(Json(crate::migration::messages::OutcomeAnswer { outcome }))
}

/// `DELETE /v1/migrations/{id}`: the source gave the migration up.
pub async fn abort_incoming(
    State(host): HostState,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let source = crate::peer::authenticate(&host, &method, uri.path(), &headers, b"").await?;
    crate::migration::incoming::abort(&host, source.host_id, &id).await?;
    Ok(Json(serde_json::json!({ "migration_id": id })))
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
    /// Stream the output as it comes, until the VM ends ([`super::console_stream`]).
    #[serde(default)]
    pub follow: bool,
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
    if query.follow {
        return follow_console(host, vm, query.from);
    }
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

/// A followed console, if a follower permit is free: each holds one while it streams, so a
/// flood of followers is shed like any other flood.
fn follow_console(
    host: Arc<Host>,
    vm: Arc<crate::host::Vm>,
    from: u64,
) -> Result<Response, ApiError> {
    let permit = host
        .console_followers
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "hostd streams as many consoles as it allows; retry shortly",
            )
        })?;
    let follower = super::console_stream::Follower::new(host, vm, from, permit);
    Ok((
        [("content-type", "application/x-ndjson")],
        follower.into_body(),
    )
        .into_response())
}
