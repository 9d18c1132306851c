//! A client of the broker's API that signs its requests: what the operator commands, the
//! tenant's `laundromat` and the tests use.

use std::time::Duration;

use laundromat_api::signing;
use laundromat_api::types::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use token::SigningKey;

use crate::clock::Clock;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the broker at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the broker refused ({status}): {}", .body.error)]
    Refused { status: u16, body: ErrorBody },
    #[error("the broker's answer ({status}) is not what was expected: {detail}")]
    BadAnswer { status: u16, detail: String },
    #[error(transparent)]
    Signature(#[from] signing::SignatureError),
}

impl ClientError {
    /// The HTTP status of a refusal, if the broker answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } | Self::BadAnswer { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The raw answer: status and body.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// Decodes a 2xx answer as `T`, or a refusal as [`ClientError::Refused`].
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        if (200..300).contains(&self.status) {
            serde_json::from_slice(&self.body).map_err(|e| ClientError::BadAnswer {
                status: self.status,
                detail: e.to_string(),
            })
        } else {
            match serde_json::from_slice::<ErrorBody>(&self.body) {
                Ok(body) => Err(ClientError::Refused {
                    status: self.status,
                    body,
                }),
                Err(_) => Err(ClientError::BadAnswer {
                    status: self.status,
                    detail: String::from_utf8_lossy(&self.body).into_owned(),
                }),
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    key: SigningKey,
    clock: Clock,
}

impl Client {
    /// A client of the broker at `base` (e.g. `http://127.0.0.1:7300`) signing with `key`.
    pub fn new(base: &str, key: SigningKey) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            key,
            clock: Clock::default(),
        }
    }

    /// Signs with `clock`'s time instead of the system's (tests move the broker's clock).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Sends one request, signed now; `idempotency_key` for requests that move money.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
        sign: bool,
    ) -> Result<RawAnswer, ClientError> {
        let url = format!("{}{path}", self.base);
        let method_value =
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut request = self.http.request(method_value, &url).body(body.to_vec());
        if sign {
            let headers = signing::sign(
                &self.key,
                method,
                path,
                body,
                self.clock.now(),
                idempotency_key,
            )?;
            for (name, value) in headers.0 {
                request = request.header(name, value);
            }
        }
        request = request.header("content-type", "application/json");
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })?
            .to_vec();
        Ok(RawAnswer { status, body })
    }

    /// POSTs a money-moving request under `idempotency_key`. When the broker cannot be
    /// reached, retries a few times, re-signed: the key makes that safe.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: &str,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::BadAnswer {
            status: 0,
            detail: e.to_string(),
        })?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .send_raw("POST", path, &body, Some(idempotency_key), true)
                .await
            {
                Err(ClientError::Unreachable { .. }) if attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                result => return result?.decode(),
            }
        }
    }

    /// A signed GET (the tenant's own account).
    pub async fn get_signed<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send_raw("GET", path, b"", None, true).await?.decode()
    }

    /// An unsigned GET (public reads).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send_raw("GET", path, b"", None, false).await?.decode()
    }
}

/// A fresh random idempotency key.
pub fn new_idempotency_key() -> String {
    token::TokenId::random().to_string()
}
