//! An HTTP client for hostd's API, for the `laundromat` CLI and for tests.

use serde::de::DeserializeOwned;
use token::{Payment, SigningKey};

use laundromat_api::hostd::Stopped;

use crate::admission::AdmitRequest;
use crate::host::{now_ms, VmView};
use crate::http::error::ErrorBody;
use crate::payments::PaymentReceipt;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach hostd")]
    Http(#[from] reqwest::Error),
    #[error("hostd refused ({status}, {}): {}", .body.error, .body.message)]
    Refused { status: u16, body: ErrorBody },
    #[error("hostd answered {status} with an unexpected body: {text}")]
    Unexpected { status: u16, text: String },
}

impl ClientError {
    /// The refusal code (`expired`, `replayed`, ...), if hostd refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { body, .. } => Some(&body.error),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            ClientError::Http(e) => e.status().map(|s| s.as_u16()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HostdClient {
    base: String,
    http: reqwest::Client,
}

async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    let text = response.text().await?;
    if status.is_success() {
        return serde_json::from_str(&text).map_err(|_| ClientError::Unexpected {
            status: status.as_u16(),
            text,
        });
    }
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => Err(ClientError::Refused {
            status: status.as_u16(),
            body,
        }),
        Err(_) => Err(ClientError::Unexpected {
            status: status.as_u16(),
            text,
        }),
    }
}

impl HostdClient {
    /// A client for the hostd at `base`, e.g. `http://127.0.0.1:8480`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Uploads an image blob under its SHA-256; returns the digest.
    pub async fn put_image(&self, bytes: Vec<u8>) -> Result<String, ClientError> {
        use sha2::Digest;
        let digest = token::hex::encode(&sha2::Sha256::digest(&bytes));
        let response = self
            .http
            .put(self.url(&format!("/v1/images/{digest}")))
            .body(bytes)
            .send()
            .await?;
        let _: serde_json::Value = answer(response).await?;
        Ok(digest)
    }

    pub async fn admit(&self, request: &AdmitRequest) -> Result<VmView, ClientError> {
        answer(
            self.http
                .post(self.url("/v1/vms"))
                .json(request)
                .send()
                .await?,
        )
        .await
    }

    pub async fn list(&self) -> Result<Vec<VmView>, ClientError> {
        answer(self.http.get(self.url("/v1/vms")).send().await?).await
    }

    pub async fn vm(&self, id: &str) -> Result<VmView, ClientError> {
        answer(
            self.http
                .get(self.url(&format!("/v1/vms/{id}")))
                .send()
                .await?,
        )
        .await
    }

    pub async fn pay(&self, id: &str, payment: &Payment) -> Result<PaymentReceipt, ClientError> {
        let url = self.url(&format!("/v1/vms/{id}/payments"));
        answer(self.http.post(url).json(payment).send().await?).await
    }

    /// Stops a VM; signed with the tenant's key.
    pub async fn stop(&self, id: &str, tenant: &SigningKey) -> Result<Stopped, ClientError> {
        let path = format!("/v1/vms/{id}");
        let mut request = self.http.delete(self.url(&path));
        for (name, value) in crate::auth::sign(tenant, "DELETE", &path, b"", now_ms() / 1000) {
            request = request.header(name, value);
        }
        answer(request.send().await?).await
    }

    /// Reads the console from offset `from`; returns the bytes and the offset to read next.
    pub async fn console(
        &self,
        id: &str,
        from: u64,
        tenant: &SigningKey,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let path = format!("/v1/vms/{id}/console");
        let mut request = self.http.get(self.url(&format!("{path}?from={from}")));
        for (name, value) in crate::auth::sign(tenant, "GET", &path, b"", now_ms() / 1000) {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            return answer::<serde_json::Value>(response)
                .await
                .map(|_| (Vec::new(), from));
        }
        let next = response
            .headers()
            .get("x-console-next")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(from);
        Ok((response.bytes().await?.to_vec(), next))
    }

    pub async fn metrics(&self) -> Result<String, ClientError> {
        Ok(self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }
}
