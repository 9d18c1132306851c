//! An HTTP client for hostd's tenant API ([`crate::hostd`]), for the `laundromat` CLI and for
//! tests. Requests that need the tenant's key are signed with [`crate::signing`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use token::{Payment, SigningKey};

use crate::hostd::{
    self, AdmitRequest, BlobDigest, ConsoleEvent, ErrorBody, HostInfo, ImageStored, Moved,
    PaymentReceipt, Stopped, VmView, CONSOLE_NEXT_HEADER, CONSOLE_START_HEADER, VM_MOVED,
};
use crate::signing::{self, SignatureError};

mod file_body {
    //! A file as a streamed request body.
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;
    use tokio::io::{AsyncRead, ReadBuf};

    /// Bytes read per frame.
    const CHUNK: usize = 1 << 20;

    pub struct FileBody {
        file: tokio::fs::File,
        buf: Vec<u8>,
    }

    impl FileBody {
        pub fn new(file: tokio::fs::File) -> Self {
            Self {
                file,
                buf: vec![0; CHUNK],
            }
        }
    }

    impl http_body::Body for FileBody {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            let this = self.get_mut();
            let mut buf = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.file).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(None),
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(buf.filled())))))
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach hostd")]
    Http(#[from] reqwest::Error),
    #[error("hostd refused ({status}, {}): {}", .body.error, .body.message)]
    Refused { status: u16, body: ErrorBody },
    #[error("hostd answered {status} with an unexpected body: {text}")]
    Unexpected { status: u16, text: String },
    #[error("cannot sign the request")]
    Sign(#[from] SignatureError),
    #[error("cannot read {path}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// The refusal code (`token_expired`, `replayed`, ...), if hostd refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { body, .. } => Some(&body.error),
            _ => None,
        }
    }

    /// Where the VM went, if hostd refused because it migrated away.
    pub fn moved(&self) -> Option<Moved> {
        match self {
            ClientError::Refused { body, .. } if body.error == VM_MOVED => {
                Moved::parse(&body.message)
            }
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            ClientError::Http(e) => e.status().map(|s| s.as_u16()),
            ClientError::Sign(_) | ClientError::File { .. } => None,
        }
    }
}

/// A followed console: [`ConsoleFollow::next`] gives its events one by one.
pub struct ConsoleFollow {
    response: reqwest::Response,
    pending: Vec<u8>,
}

/// Longest line a followed console may send (a frame of output, escaped as JSON).
const MAX_EVENT_LINE: usize = 1 << 20;

impl ConsoleFollow {
    /// The next event; `None` when hostd closed the stream.
    pub async fn next(&mut self) -> Result<Option<ConsoleEvent>, ClientError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                // An empty line is hostd's heartbeat on a quiet console.
                if line.trim_ascii().is_empty() {
                    continue;
                }
                return serde_json::from_slice(&line).map(Some).map_err(|e| {
                    ClientError::Unexpected {
                        status: 200,
                        text: format!("a console event that does not parse ({e})"),
                    }
                });
            }
            if self.pending.len() > MAX_EVENT_LINE {
                return Err(ClientError::Unexpected {
                    status: 200,
                    text: "a console event longer than any hostd sends".into(),
                });
            }
            match self.response.chunk().await? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// A piece of a VM's console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    /// The offset of the first byte: above the offset asked for if the ring had moved past it.
    pub start: u64,
    /// The offset to read from next.
    pub next: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct HostdClient {
    base: String,
    http: reqwest::Client,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    Err(refused(status.as_u16(), text))
}

/// A refusal: hostd's error body, or what it sent instead.
fn refused(status: u16, text: String) -> ClientError {
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ClientError::Refused { status, body },
        Err(_) => ClientError::Unexpected { status, text },
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

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request signed by `tenant`; `path` includes any query string.
    fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        tenant: &SigningKey,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let headers = signing::sign(tenant, method.as_str(), path, b"", unix_now(), None)?;
        let mut request = self.http.request(method, self.url(path));
        for (name, value) in headers.0 {
            request = request.header(name, value);
        }
        Ok(request)
    }

    /// Uploads the disk image at `path`, whose SHA-256 is `digest`, streamed from the file
    /// (disk images are large). hostd checks the digest as it stores the blob.
    pub async fn put_disk(
        &self,
        digest: &BlobDigest,
        path: &std::path::Path,
    ) -> Result<BlobDigest, ClientError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| ClientError::File {
                path: path.to_owned(),
                source,
            })?;
        let body = reqwest::Body::wrap(file_body::FileBody::new(file));
        let response = self
            .http
            .put(self.url(&hostd::disk(digest)))
            .body(body)
            .send()
            .await?;
        let stored: ImageStored = answer(response).await?;
        Ok(stored.sha256)
    }

    /// Uploads an image blob under its SHA-256; returns the digest.
    pub async fn put_image(&self, bytes: Vec<u8>) -> Result<BlobDigest, ClientError> {
        let digest = BlobDigest::of(&bytes);
        let response = self
            .http
            .put(self.url(&hostd::image(&digest)))
            .body(bytes)
            .send()
            .await?;
        let stored: ImageStored = answer(response).await?;
        Ok(stored.sha256)
    }

    pub async fn admit(&self, request: &AdmitRequest) -> Result<VmView, ClientError> {
        answer(
            self.http
                .post(self.url(hostd::VMS))
                .json(request)
                .send()
                .await?,
        )
        .await
    }

    pub async fn list(&self) -> Result<Vec<VmView>, ClientError> {
        answer(self.http.get(self.url(hostd::VMS)).send().await?).await
    }

    pub async fn vm(&self, id: &str) -> Result<VmView, ClientError> {
        answer(self.http.get(self.url(&hostd::vm(id))).send().await?).await
    }

    pub async fn host(&self) -> Result<HostInfo, ClientError> {
        answer(self.http.get(self.url(hostd::HOST)).send().await?).await
    }

    pub async fn pay(&self, id: &str, payment: &Payment) -> Result<PaymentReceipt, ClientError> {
        let url = self.url(&hostd::payments(id));
        answer(self.http.post(url).json(payment).send().await?).await
    }

    /// Stops a VM; signed with the tenant's key.
    pub async fn stop(&self, id: &str, tenant: &SigningKey) -> Result<Stopped, ClientError> {
        let request = self.signed(reqwest::Method::DELETE, &hostd::vm(id), tenant)?;
        answer(request.send().await?).await
    }

    /// A GET signed with the tenant's key whose answer is a success, or the refusal.
    async fn signed_get(
        &self,
        path: &str,
        tenant: &SigningKey,
    ) -> Result<reqwest::Response, ClientError> {
        let response = self
            .signed(reqwest::Method::GET, path, tenant)?
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(refused(status.as_u16(), response.text().await?));
        }
        Ok(response)
    }

    /// Reads the console from offset `from`; signed with the tenant's key.
    pub async fn console_chunk(
        &self,
        id: &str,
        from: u64,
        tenant: &SigningKey,
    ) -> Result<ConsoleChunk, ClientError> {
        let path = format!("{}?from={from}", hostd::console(id));
        let response = self.signed_get(&path, tenant).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        let start = header(CONSOLE_START_HEADER).unwrap_or(from);
        let next = header(CONSOLE_NEXT_HEADER);
        let bytes = response.bytes().await?.to_vec();
        Ok(ConsoleChunk {
            start,
            next: next.unwrap_or(start + bytes.len() as u64),
            bytes,
        })
    }

    /// Reads the console from offset `from`; returns the bytes and the offset to read next.
    pub async fn console(
        &self,
        id: &str,
        from: u64,
        tenant: &SigningKey,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let chunk = self.console_chunk(id, from, tenant).await?;
        Ok((chunk.bytes, chunk.next))
    }

    /// Follows the console from offset `from` (signed with the tenant's key): the events as
    /// hostd sends them, until the VM ends here.
    pub async fn console_follow(
        &self,
        id: &str,
        from: u64,
        tenant: &SigningKey,
    ) -> Result<ConsoleFollow, ClientError> {
        let path = format!("{}?follow=true&from={from}", hostd::console(id));
        let response = self.signed_get(&path, tenant).await?;
        Ok(ConsoleFollow {
            response,
            pending: Vec::new(),
        })
    }

    /// Sends a signed POST whose answer streams JSON lines (migration, drain) and calls
    /// `on_line` with each as it arrives; returns them all.
    async fn stream_lines(
        &self,
        path: &str,
        body: Vec<u8>,
        key: &SigningKey,
        on_line: &mut (dyn FnMut(&serde_json::Value) + Send),
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let headers = signing::sign(key, "POST", path, &body, unix_now(), None)?;
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json");
        for (name, value) in headers.0 {
            request = request.header(name, value);
        }
        let mut response = request.body(body).send().await?;
        if !response.status().is_success() {
            return answer::<Vec<serde_json::Value>>(response).await;
        }
        let (mut lines, mut pending) = (Vec::new(), Vec::new());
        while let Some(chunk) = response.chunk().await? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) {
                    on_line(&value);
                    lines.push(value);
                }
            }
        }
        Ok(lines)
    }

    /// Migrates a VM to host `to`, signed with `key` (the VM's tenant, or the operator); the
    /// progress lines as they arrive, the last one `{"event": "result", "status": ...}`.
    pub async fn migrate(
        &self,
        id: &str,
        to: token::HostId,
        key: &SigningKey,
        on_line: &mut (dyn FnMut(&serde_json::Value) + Send),
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let body = serde_json::json!({ "to": to }).to_string().into_bytes();
        self.stream_lines(&format!("/v1/vms/{id}/migrate"), body, key, on_line)
            .await
    }

    /// Drains the host, signed with the operator's key; the progress lines, the last one
    /// `{"event": "drained", ...}`.
    pub async fn drain(
        &self,
        operator: &SigningKey,
        on_line: &mut (dyn FnMut(&serde_json::Value) + Send),
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        self.stream_lines("/v1/drain", b"{}".to_vec(), operator, on_line)
            .await
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
