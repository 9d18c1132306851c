//! The real broker, over its HTTP API (`--broker http://…`).
//!
//! - Every request that changes something is signed with the host's ed25519 key by
//!   `laundromat_api::signing` (timestamp, random nonce, body hash, idempotency key): the
//!   scheme the broker verifies.
//! - Requests that move money or change a lease carry an `Idempotency-Key`, made once per
//!   operation and reused by every retry of it, so that a retry after a timeout gets the
//!   broker's stored answer instead of running twice. (Keys are not derived from the request:
//!   the broker stores refusals too, so a claim refused as too far would stay refused. A
//!   claim sent again under a new key is harmless: the broker credits only links above what
//!   it already redeemed.)
//! - Each attempt is bounded by a connect and a request timeout. Only transient failures
//!   (unreachable, timeout, 408/429/5xx) are retried, with exponential backoff and jitter;
//!   refusals are answers and come back at once as [`BrokerError`]s.
//! - A claim too far above what the broker last verified for this host is redeemed in steps
//!   (`laundromat_api::claims::stepped_claims`).
//! - Many claims at once (the periodic settlement of every running VM) go as batches of up
//!   to `MAX_BATCH_CLAIMS` in one signed request each (`POST /v1/redemptions/batch`); a
//!   claim the batch refused as too far is redeemed on its own, in steps.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use laundromat_api::types::{Advert, BrokerInfo, Empty, ErrorBody, HostEntry, Release, TokenState};
use laundromat_api::{paths, signing, types};
use serde::de::DeserializeOwned;
use serde::Serialize;
use token::{ClusterId, HostId, SignedClaim, SigningKey, TokenId};

use super::refusal::{is_transient, to_error, Subject};
use super::{
    BoxFuture, BrokerClient, BrokerError, BrokerKey, CapacityAdvert, Handover, HostRecord, Lease,
    Redeemed,
};

#[path = "http_redeem.rs"]
mod redeem;

/// Timeouts and retries of every broker request.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub connect_timeout: Duration,
    /// For one attempt, from sending to the whole answer.
    pub request_timeout: Duration,
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Backoff before the second attempt; it doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            attempts: 4,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpBrokerError {
    #[error("the broker URL {0:?} must start with http:// (this build has no TLS client; put the broker behind a local TLS proxy)")]
    Url(String),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The broker's answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// hostd's client of the real broker, signing as one host.
pub struct HttpBroker {
    base: String,
    http: reqwest::Client,
    key: SigningKey,
    host_id: HostId,
    policy: Policy,
    /// From `GET /v1/broker`, fetched when first needed.
    max_claim_distance: Mutex<Option<u64>>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_key() -> String {
    TokenId::random().to_string()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, BrokerError> {
    serde_json::to_vec(value).map_err(|e| BrokerError::Refused {
        status: 0,
        code: "unencodable".into(),
        message: e.to_string(),
    })
}

impl HttpBroker {
    /// A client of the broker at `base` (e.g. `http://127.0.0.1:7300`) signing as host
    /// `host_id` with `key`, the key the operator registered for it.
    pub fn new(
        base: &str,
        key: SigningKey,
        host_id: HostId,
        policy: Policy,
    ) -> Result<Self, HttpBrokerError> {
        if !base.starts_with("http://") {
            return Err(HttpBrokerError::Url(base.to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.request_timeout)
            .build()
            .map_err(HttpBrokerError::Client)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            key,
            host_id,
            policy,
            max_claim_distance: Mutex::new(None),
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self
            .policy
            .first_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let delay = doubled.min(self.policy.max_backoff);
        // Up to half again at random, so that hosts retrying together spread out.
        let jitter_ms = rand::random::<u64>() % (delay.as_millis() as u64 / 2 + 1);
        delay + Duration::from_millis(jitter_ms)
    }

    /// Sends one request, retrying transient failures. Each attempt is signed afresh (new
    /// timestamp and nonce) under the same idempotency key.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        signed: bool,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, BrokerError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("content-type", "application/json")
                .body(body.clone());
            if signed {
                let headers = signing::sign(
                    &self.key,
                    method.as_str(),
                    path,
                    &body,
                    now_s(),
                    idempotency_key,
                )
                .map_err(|e| BrokerError::Refused {
                    status: 0,
                    code: "unsignable".into(),
                    message: e.to_string(),
                })?;
                for (name, value) in headers.0 {
                    request = request.header(name, value);
                }
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        Ok(bytes) if !is_transient(status) => {
                            return Ok(Answer {
                                status,
                                body: bytes.to_vec(),
                            })
                        }
                        Ok(bytes) => format!(
                            "{method} {path} answered {status}: {}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                        ),
                        Err(e) => format!("{method} {path}: the answer broke off: {e}"),
                    }
                }
                Err(e) => format!("{method} {url}: {}", crate::http::error::chain(&e)),
            };
            if attempt >= self.policy.attempts {
                return Err(BrokerError::Unavailable(format!(
                    "{failure} (after {attempt} attempts)"
                )));
            }
            let delay = self.backoff(attempt);
            tracing::debug!(
                attempt,
                ?delay,
                "broker request failed, retrying: {failure}"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Decodes a 2xx answer, or maps a refusal.
    fn decode<T: DeserializeOwned>(
        &self,
        answer: Answer,
        subject: Subject,
    ) -> Result<T, BrokerError> {
        if (200..300).contains(&answer.status) {
            return serde_json::from_slice(&answer.body).map_err(|e| {
                BrokerError::Unavailable(format!(
                    "the broker's answer ({}) is not what hostd expects: {e}",
                    answer.status
                ))
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&answer.body) {
            Ok(body) => to_error(answer.status, body, subject, self.host_id),
            Err(_) => BrokerError::Refused {
                status: answer.status,
                code: "unknown".into(),
                message: String::from_utf8_lossy(&answer.body[..answer.body.len().min(500)])
                    .into_owned(),
            },
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, BrokerError> {
        let answer = self
            .send(reqwest::Method::GET, path, Vec::new(), false, None)
            .await?;
        self.decode(answer, Subject::None)
    }

    /// POSTs a signed request under `idempotency_key`.
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: Option<&str>,
        subject: Subject,
    ) -> Result<T, BrokerError> {
        let answer = self
            .send(
                reqwest::Method::POST,
                path,
                encode(body)?,
                true,
                idempotency_key,
            )
            .await?;
        self.decode(answer, subject)
    }

    /// Refuses to act for another host: the broker would act for the signer, this host.
    fn me(&self, host_id: HostId) -> Result<(), BrokerError> {
        if host_id == self.host_id {
            return Ok(());
        }
        Err(BrokerError::Refused {
            status: 0,
            code: "wrong_signer".into(),
            message: format!(
                "this broker client signs as host {}, not host {host_id}",
                self.host_id
            ),
        })
    }

    async fn info(&self) -> Result<BrokerInfo, BrokerError> {
        let info: BrokerInfo = self.get(paths::BROKER).await?;
        *self
            .max_claim_distance
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(info.max_claim_distance);
        Ok(info)
    }

    async fn max_claim_distance(&self) -> Result<u64, BrokerError> {
        let cached = *self
            .max_claim_distance
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match cached {
            Some(max) => Ok(max),
            None => Ok(self.info().await?.max_claim_distance),
        }
    }

    async fn lease_answer<B: Serialize>(
        &self,
        token_id: TokenId,
        action: &str,
        body: &B,
    ) -> Result<Answer, BrokerError> {
        let key = new_key();
        let path = paths::lease(&token_id, action);
        self.send(
            reqwest::Method::POST,
            &path,
            encode(body)?,
            true,
            Some(&key),
        )
        .await
    }

    async fn lease_op<B: Serialize>(
        &self,
        token_id: TokenId,
        action: &str,
        body: &B,
    ) -> Result<TokenState, BrokerError> {
        let answer = self.lease_answer(token_id, action, body).await?;
        self.decode(answer, Subject::Lease(token_id))
    }

    async fn hand_over(&self, handover: Handover) -> Result<Lease, BrokerError> {
        self.me(handover.from)?;
        let token_id = handover.token_id;
        let body = types::Handover {
            to_host: handover.to,
            final_claim: handover.final_claim.clone(),
        };
        let mut answer = self.lease_answer(token_id, "handover", &body).await?;
        if too_far(&answer) {
            // Redeem up to the final claim first (the broker pays those links now rather than
            // at confirmation: the same links, once); then the final claim is near.
            self.redeem_claim(handover.final_claim).await?;
            answer = self.lease_answer(token_id, "handover", &body).await?;
        }
        lease_of(&self.decode(answer, Subject::Lease(token_id))?)
    }
}

/// Whether the broker refused a claim as too far above the last link it verified.
fn too_far(answer: &Answer) -> bool {
    answer.status == 422
        && serde_json::from_slice::<ErrorBody>(&answer.body)
            .is_ok_and(|body| body.code == "claim_too_far")
}

fn lease_of(state: &TokenState) -> Result<Lease, BrokerError> {
    match state.holder {
        Some(holder) => Ok(Lease {
            token_id: state.token_id,
            holder,
        }),
        None => Err(BrokerError::Refused {
            status: 200,
            code: "no_holder".into(),
            message: format!(
                "token {} has no lease holder after the operation",
                state.token_id
            ),
        }),
    }
}

impl HttpBroker {
    /// A body-less lease operation (`acquire`, `handover/confirm`, `handover/cancel`) for this
    /// host, and the lease it leaves.
    async fn lease_action(
        &self,
        token_id: TokenId,
        host_id: HostId,
        action: &str,
    ) -> Result<Lease, BrokerError> {
        self.me(host_id)?;
        lease_of(&self.lease_op(token_id, action, &Empty {}).await?)
    }
}

fn host_record(entry: HostEntry) -> HostRecord {
    HostRecord {
        host_id: entry.host.host_id,
        key: entry.host.host_key,
        cluster_id: entry.host.cluster_id,
        url: entry.advert.map(|advert| advert.url),
    }
}

impl BrokerClient for HttpBroker {
    fn broker_keys(&self) -> BoxFuture<'_, Result<Vec<BrokerKey>, BrokerError>> {
        Box::pin(async move {
            let info = self.info().await?;
            Ok(vec![BrokerKey {
                key_id: info.key_id,
                key: info.public_key,
            }])
        })
    }

    fn host(&self, host_id: HostId) -> BoxFuture<'_, Result<Option<HostRecord>, BrokerError>> {
        Box::pin(async move {
            let answer = self
                .send(
                    reqwest::Method::GET,
                    &paths::host(&host_id),
                    Vec::new(),
                    false,
                    None,
                )
                .await?;
            if answer.status == 404 {
                return Ok(None);
            }
            let entry: HostEntry = self.decode(answer, Subject::None)?;
            Ok(Some(host_record(entry)))
        })
    }

    fn acquire_lease(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        Box::pin(self.lease_action(token_id, host_id, "acquire"))
    }

    fn hand_over_lease(&self, handover: Handover) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        Box::pin(self.hand_over(handover))
    }

    fn confirm_handover(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        Box::pin(self.lease_action(token_id, host_id, "handover/confirm"))
    }

    fn cancel_handover(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        Box::pin(self.lease_action(token_id, host_id, "handover/cancel"))
    }

    fn release_lease(
        &self,
        token_id: TokenId,
        host_id: HostId,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.me(host_id)?;
            let _: TokenState = self
                .lease_op(token_id, "release", &Release { final_claim: None })
                .await?;
            Ok(())
        })
    }

    fn redeem(&self, claim: SignedClaim) -> BoxFuture<'_, Result<Redeemed, BrokerError>> {
        Box::pin(self.redeem_claim(claim))
    }

    fn redeem_many(
        &self,
        claims: Vec<SignedClaim>,
    ) -> BoxFuture<'_, Result<Vec<Result<Redeemed, BrokerError>>, BrokerError>> {
        Box::pin(async move { Ok(self.redeem_batches(claims).await) })
    }

    fn advertise(&self, advert: CapacityAdvert) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.me(advert.host_id)?;
            let timestamp_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let body = Advert {
                free_memory_mib: advert.free_memory_mib,
                free_vcpus: advert.free_vcpus,
                price_per_link: advert.min_price_per_link,
                url: advert.url,
                timestamp_ms,
            };
            let _: HostEntry = self
                .post(&paths::advert(&advert.host_id), &body, None, Subject::None)
                .await?;
            Ok(())
        })
    }

    fn directory(
        &self,
        cluster_id: ClusterId,
    ) -> BoxFuture<'_, Result<Vec<CapacityAdvert>, BrokerError>> {
        Box::pin(async move {
            let entries: Vec<HostEntry> = self.get(paths::HOSTS).await?;
            Ok(entries
                .into_iter()
                .filter(|e| e.host.cluster_id == cluster_id && !e.stale)
                .filter_map(|e| {
                    let advert = e.advert?;
                    Some(CapacityAdvert {
                        host_id: e.host.host_id,
                        cluster_id,
                        url: advert.url,
                        free_memory_mib: advert.free_memory_mib,
                        free_vcpus: advert.free_vcpus,
                        min_price_per_link: advert.price_per_link,
                    })
                })
                .collect())
        })
    }
}
