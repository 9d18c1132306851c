//! The HTTP face of the broker: axum routes, signature checks, JSON in and out.

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use laundromat_api::types::{Empty, Handover, Redeem, RedeemBatch, Release};
use laundromat_api::{paths, signing};
use serde::de::DeserializeOwned;
use serde::Serialize;
use token::{HostId, TokenId};

use crate::directory;
use crate::error::ServiceError;
use crate::idempotency::Stored;
use crate::ops::Operation;
use crate::redemption;
use crate::service::{error_answer, Broker, SignedRequest};

/// The largest request body the broker reads.
pub const MAX_BODY: usize = 64 * 1024;

/// The largest body of a batch of redemptions: room for
/// [`MAX_BATCH_CLAIMS`](laundromat_api::types::MAX_BATCH_CLAIMS) signed claims (about 330
/// bytes each in JSON) and then some.
pub const MAX_BATCH_BODY: usize = 256 * 1024;

type Shared = State<Arc<Broker>>;

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route(paths::BROKER, get(info))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(paths::TENANTS, post(register_tenant))
        .route(paths::HOSTS, post(register_host).get(list_hosts))
        .route("/v1/hosts/{id}", get(show_host))
        .route("/v1/hosts/{id}/advert", post(advertise))
        .route(paths::TOPUPS, post(topup))
        .route(paths::ACCOUNT, get(account))
        .route(paths::STATEMENT, get(statement))
        .route(paths::TOKENS, post(buy))
        .route("/v1/tokens/{id}", get(show_token))
        .route("/v1/tokens/{id}/refund", post(refund))
        .route("/v1/leases/{id}/acquire", post(acquire))
        .route("/v1/leases/{id}/handover", post(handover))
        .route("/v1/leases/{id}/handover/confirm", post(confirm))
        .route("/v1/leases/{id}/handover/cancel", post(cancel))
        .route("/v1/leases/{id}/release", post(release))
        .route(paths::REDEMPTIONS, post(redeem))
        .route(paths::BATCH_REDEMPTIONS, post(redeem_batch))
        .fallback(|| async { error(&ServiceError::NotFound("this path".into())) })
        .with_state(broker)
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "application/json")], body).into_response()
}

fn stored(answer: Stored) -> Response {
    json_response(answer.status, answer.body)
}

fn error(error: &ServiceError) -> Response {
    stored(error_answer(error))
}

fn ok<T: Serialize>(result: Result<T, ServiceError>) -> Response {
    match result.and_then(|value| {
        serde_json::to_string(&value).map_err(|e| ServiceError::BadRequest(e.to_string()))
    }) {
        Ok(body) => json_response(200, body),
        Err(e) => error(&e),
    }
}

/// Reads the request and checks its signature.
async fn authenticate(broker: &Broker, request: Request) -> Result<SignedRequest, ServiceError> {
    authenticate_up_to(broker, request, MAX_BODY).await
}

/// [`authenticate`] with a body of at most `limit` bytes.
async fn authenticate_up_to(
    broker: &Broker,
    request: Request,
    limit: usize,
) -> Result<SignedRequest, ServiceError> {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, limit)
        .await
        .map_err(|_| ServiceError::BadRequest(format!("the body is larger than {limit} bytes")))?;
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let method = parts.method.as_str().to_owned();
    let headers: &HeaderMap = &parts.headers;
    let signature = signing::verify(
        |name| headers.get(name).and_then(|value| value.to_str().ok()),
        &method,
        &path,
        &body,
        broker.clock.now(),
    )?;
    Ok(SignedRequest {
        method,
        path,
        body: body.to_vec(),
        signature,
    })
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(body).map_err(|e| ServiceError::BadRequest(e.to_string()))
}

fn parse_id<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ServiceError> {
    text.parse()
        .map_err(|_| ServiceError::BadRequest(format!("{text:?} is not a {what}")))
}

/// The common path of every money-moving request: authenticate, build the operation from
/// the body, run it idempotently.
async fn money(
    broker: Arc<Broker>,
    request: Request,
    build: impl FnOnce(&[u8]) -> Result<Operation, ServiceError>,
) -> Response {
    money_up_to(broker, request, MAX_BODY, build).await
}

/// [`money`] with a body of at most `limit` bytes.
async fn money_up_to(
    broker: Arc<Broker>,
    request: Request,
    limit: usize,
    build: impl FnOnce(&[u8]) -> Result<Operation, ServiceError>,
) -> Response {
    let signed = match authenticate_up_to(&broker, request, limit).await {
        Ok(signed) => signed,
        Err(e) => return error(&e),
    };
    match build(&signed.body) {
        Ok(op) => stored(broker.execute(&signed, op).await),
        Err(e) => error(&e),
    }
}

async fn info(State(broker): Shared) -> Response {
    ok(Ok(broker.info()))
}

async fn metrics(State(broker): Shared) -> Response {
    match broker.gauges().await {
        Ok(gauges) => (
            [("content-type", "text/plain; version=0.0.4")],
            broker.metrics.render(&gauges),
        )
            .into_response(),
        Err(e) => error(&e),
    }
}

async fn register_tenant(State(broker): Shared, request: Request) -> Response {
    money(broker, request, |body| {
        Ok(Operation::RegisterTenant(parse_json(body)?))
    })
    .await
}

async fn register_host(State(broker): Shared, request: Request) -> Response {
    money(broker, request, |body| {
        Ok(Operation::RegisterHost(parse_json(body)?))
    })
    .await
}

async fn topup(State(broker): Shared, request: Request) -> Response {
    money(broker, request, |body| {
        Ok(Operation::Topup(parse_json(body)?))
    })
    .await
}

async fn buy(State(broker): Shared, request: Request) -> Response {
    money(broker, request, |body| {
        Ok(Operation::Buy(parse_json(body)?))
    })
    .await
}

async fn redeem(State(broker): Shared, request: Request) -> Response {
    money(broker, request, |body| {
        Ok(Operation::Redeem(parse_json::<Redeem>(body)?))
    })
    .await
}

/// Many claims in one request: the batch's size is checked before it queues, so a batch
/// too large is refused with 400 and costs the writer nothing.
async fn redeem_batch(State(broker): Shared, request: Request) -> Response {
    money_up_to(broker, request, MAX_BATCH_BODY, |body| {
        let batch = parse_json::<RedeemBatch>(body)?;
        redemption::check_batch_size(&batch)?;
        Ok(Operation::RedeemBatch(batch))
    })
    .await
}

/// The token routes: the id in the path, an operation built from it and the body.
async fn token_op(
    broker: Arc<Broker>,
    id: String,
    request: Request,
    build: impl FnOnce(TokenId, &[u8]) -> Result<Operation, ServiceError>,
) -> Response {
    money(broker, request, |body| {
        build(parse_id(&id, "token id")?, body)
    })
    .await
}

async fn refund(State(broker): Shared, Path(id): Path<String>, request: Request) -> Response {
    token_op(broker, id, request, |id, body| {
        parse_json::<Empty>(body)?;
        Ok(Operation::Refund(id))
    })
    .await
}

async fn acquire(State(broker): Shared, Path(id): Path<String>, request: Request) -> Response {
    token_op(broker, id, request, |id, body| {
        parse_json::<Empty>(body)?;
        Ok(Operation::Acquire(id))
    })
    .await
}

async fn handover(State(broker): Shared, Path(id): Path<String>, request: Request) -> Response {
    token_op(broker, id, request, |id, body| {
        Ok(Operation::Handover(id, parse_json::<Handover>(body)?))
    })
    .await
}

async fn confirm(State(broker): Shared, Path(id): Path<String>, request: Request) -> Response {
    token_op(broker, id, request, |id, body| {
        parse_json::<Empty>(body)?;
        Ok(Operation::Confirm(id))
    })
    .await
}

async fn cancel(State(broker): Shared, Path(id): Path<String>, request: Request) -> Response {
    token_op(broker, id, request, |id, body| {
        parse_json::<Empty>(body)?;
        Ok(Operation::Cancel(id))
    })
    .await
}

async fn release(State(broker): Shared, Path(id): Path<String>, request: Request) -> Response {
    token_op(broker, id, request, |id, body| {
        Ok(Operation::Release(id, parse_json::<Release>(body)?))
    })
    .await
}

async fn account(State(broker): Shared, request: Request) -> Response {
    match authenticate(&broker, request).await {
        Ok(signed) => ok(broker.account(&signed.signature.key).await),
        Err(e) => error(&e),
    }
}

async fn statement(State(broker): Shared, request: Request) -> Response {
    match authenticate(&broker, request).await {
        Ok(signed) => ok(broker.statement(&signed.signature.key).await),
        Err(e) => error(&e),
    }
}

async fn show_token(State(broker): Shared, Path(id): Path<String>) -> Response {
    match parse_id::<TokenId>(&id, "token id") {
        Ok(id) => ok(broker.token_state(&id).await),
        Err(e) => error(&e),
    }
}

async fn list_hosts(State(broker): Shared) -> Response {
    let now = broker.clock.now();
    ok(async {
        let mut conn = broker.db.pool().acquire().await?;
        directory::entries(&mut conn, now).await
    }
    .await)
}

async fn show_host(State(broker): Shared, Path(id): Path<String>) -> Response {
    let now = broker.clock.now();
    ok(async {
        let id = parse_id::<HostId>(&id, "host id")?;
        let mut conn = broker.db.pool().acquire().await?;
        directory::entry_of(&mut conn, &id, now).await
    }
    .await)
}

/// A host's advert: signed by that host, not money, so no idempotency key; the advert's
/// own timestamp keeps a replay from rolling the directory back.
async fn advertise(State(broker): Shared, Path(id): Path<String>, request: Request) -> Response {
    ok(async {
        let id = parse_id::<HostId>(&id, "host id")?;
        let signed = authenticate(&broker, request).await?;
        directory::advertise(&broker, &signed, &id).await
    }
    .await)
}
