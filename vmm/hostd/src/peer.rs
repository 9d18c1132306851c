//! Requests between hosts: the source hostd asks the destination to prepare, sends the final
//! payment state, and asks how a switchover ended. Each request is signed with the sending
//! host's identity key (the request-signing scheme of [`crate::auth`]) and names the host in
//! [`HOST_HEADER`]; the receiver checks the signature against the key the broker registered
//! for that host, in its own cluster. A host the broker does not know cannot push a VM in.

use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use token::HostId;

use crate::broker::HostRecord;
use crate::host::{now_ms, Host};
use crate::http::error::{ApiError, ErrorBody};

/// Names the host that signed a host-to-host request.
pub const HOST_HEADER: &str = "x-laundromat-host";
/// How long one host-to-host request may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot reach host {host} at {url}")]
    Http {
        host: HostId,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("host {host} refused ({status}, {}): {}", .body.error, .body.message)]
    Refused {
        host: HostId,
        status: u16,
        body: ErrorBody,
    },
    #[error("host {host} answered {status} with an unexpected body: {text}")]
    Unexpected {
        host: HostId,
        status: u16,
        text: String,
    },
}

/// Sends a signed request to `peer` and parses its JSON answer.
pub async fn call<T: DeserializeOwned>(
    host: &Host,
    peer: &HostRecord,
    method: Method,
    path: &str,
    body: &impl Serialize,
) -> Result<T, PeerError> {
    let base = peer
        .url
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let url = format!("{base}{path}");
    let http_err = |source| PeerError::Http {
        host: peer.host_id,
        url: url.clone(),
        source,
    };
    let bytes = match method {
        Method::GET | Method::DELETE => Vec::new(),
        _ => serde_json::to_vec(body).unwrap_or_default(),
    };
    let mut request = host
        .http
        .request(method.clone(), &url)
        .timeout(PEER_TIMEOUT)
        .header(HOST_HEADER, host.host_id().to_string())
        .header("content-type", "application/json");
    for (name, value) in crate::auth::sign(
        &host.identity.key,
        method.as_str(),
        path,
        &bytes,
        now_ms() / 1000,
    ) {
        request = request.header(name, value);
    }
    let response = request.body(bytes).send().await.map_err(http_err)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(http_err)?;
    if (200..300).contains(&status) {
        return serde_json::from_str(&text).map_err(|_| PeerError::Unexpected {
            host: peer.host_id,
            status,
            text,
        });
    }
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => Err(PeerError::Refused {
            host: peer.host_id,
            status,
            body,
        }),
        Err(_) => Err(PeerError::Unexpected {
            host: peer.host_id,
            status,
            text,
        }),
    }
}

/// The registered host of this cluster that signed a request, or the refusal.
pub async fn authenticate(
    host: &Host,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HostRecord, ApiError> {
    let refuse = |status, code, message: String| ApiError::new(status, code, message);
    let host_id: HostId = headers
        .get(HOST_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "unsigned_request",
                format!("a host-to-host request names its host in {HOST_HEADER}"),
            )
        })?;
    let record = host
        .broker
        .host(host_id)
        .await
        .map_err(|e| refuse(StatusCode::BAD_GATEWAY, "broker_unavailable", e.to_string()))?
        .filter(|r| r.cluster_id == host.config.cluster_id)
        .ok_or_else(|| {
            refuse(
                StatusCode::FORBIDDEN,
                "host_not_registered",
                format!(
                    "host {host_id} is not registered with the broker in cluster {}",
                    host.config.cluster_id
                ),
            )
        })?;
    crate::auth::verify(
        &record.key,
        method.as_str(),
        path,
        body,
        headers,
        now_ms() / 1000,
    )
    .map_err(|e| {
        let message = format!("host {host_id}: {e}");
        let mut refusal = crate::http::handlers::auth_refusal(e, "not_the_host");
        refusal.message = message;
        refusal
    })?;
    Ok(record)
}
