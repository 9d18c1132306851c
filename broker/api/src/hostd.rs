//! hostd's tenant-facing HTTP API as its clients see it: the request and response bodies and
//! the paths. hostd serves them; the `laundromat` client and the tests send them.
//!
//! | method | path | signed by | body → answer |
//! |---|---|---|---|
//! | PUT | `/v1/images/{sha256}` | — | the blob → [`ImageStored`] |
//! | PUT | `/v1/disks/{sha256}` | — | a disk image blob (its own size limit) → [`ImageStored`] |
//! | POST | `/v1/vms` | — (the token is the credential) | [`AdmitRequest`] → [`VmView`] |
//! | GET | `/v1/vms`, `/v1/vms/{id}` | — | → `[VmView]`, `VmView` |
//! | POST | `/v1/vms/{id}/payments` | — (a link is its own proof) | [`token::Payment`] → [`PaymentReceipt`] |
//! | GET | `/v1/vms/{id}/console?from=N` | the VM's tenant | → bytes, next offset in [`CONSOLE_NEXT_HEADER`] |
//! | GET | `/v1/vms/{id}/console?follow=true&from=N` | the VM's tenant | → [`ConsoleEvent`]s, one JSON object a line, until the VM ends |
//! | DELETE | `/v1/vms/{id}` | the VM's tenant | → [`Stopped`] |
//! | GET | `/v1/host` | — | → [`HostInfo`] |
//!
//! Tenant-signed requests use [`crate::signing`], as the broker's do. Every refusal is an
//! [`ErrorBody`].

use serde::{Deserialize, Serialize};

pub const VMS: &str = "/v1/vms";
pub const HOST: &str = "/v1/host";
/// The header of a console answer that holds the offset to read from next.
pub const CONSOLE_NEXT_HEADER: &str = "x-console-next";
/// The header of a console answer that holds the offset of its first byte (older bytes
/// than the ring holds are skipped).
pub const CONSOLE_START_HEADER: &str = "x-console-start";

pub fn vm(id: &str) -> String {
    format!("{VMS}/{id}")
}

pub fn payments(id: &str) -> String {
    format!("{VMS}/{id}/payments")
}

pub fn console(id: &str) -> String {
    format!("{VMS}/{id}/console")
}

pub fn image(digest: &BlobDigest) -> String {
    format!("/v1/images/{digest}")
}

/// Where a disk image blob is uploaded: the same content-addressed store as kernels, under
/// the host's (larger) disk size limit.
pub fn disk(digest: &BlobDigest) -> String {
    format!("/v1/disks/{digest}")
}

/// How the guest is started (the `vmm run --boot` modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// The Linux x86-64 boot protocol (bzImage or ELF vmlinux).
    Linux,
    /// The PVH ELF note, 32-bit protected-mode entry.
    Pvh,
    /// Laundromat's ring-3 unikernel entry.
    Bench,
}

impl BootMode {
    /// The name `vmm run --boot` takes.
    pub fn name(self) -> &'static str {
        match self {
            BootMode::Linux => "linux",
            BootMode::Pvh => "pvh",
            BootMode::Bench => "bench",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a SHA-256 digest (64 hex digits)")]
pub struct BadDigest(pub String);

/// A blob's SHA-256, checked to be 64 lower-case hex digits, so it is safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobDigest(String);

impl BlobDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(token::hex::encode(&sha2::Sha256::digest(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl BlobDigest {
    /// The 32 bytes the hex digits spell.
    pub fn bytes(&self) -> [u8; 32] {
        // Checked to be 64 hex digits when made, so this always decodes to 32 bytes.
        token::hex::decode_array(&self.0).unwrap_or([0; 32])
    }
}

impl AsRef<str> for BlobDigest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BlobDigest {
    type Error = BadDigest;

    fn try_from(text: String) -> Result<Self, BadDigest> {
        let lower = text.to_ascii_lowercase();
        if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(lower))
        } else {
            Err(BadDigest(text))
        }
    }
}

impl From<BlobDigest> for String {
    fn from(digest: BlobDigest) -> String {
        digest.0
    }
}

impl std::fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer to `PUT /v1/images/{sha256}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStored {
    pub sha256: BlobDigest,
}

/// The disk image of an image reference: a virtio-blk device the guest sees as `/dev/vda`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskImage {
    /// SHA-256 of the disk blob, uploaded with `PUT /v1/disks/{sha256}`.
    pub sha256: BlobDigest,
    /// Read-only disks are opened from the stored blob itself; a writable one gets a copy of
    /// its own for the VM, so the stored blob never changes.
    #[serde(default)]
    pub readonly: bool,
}

impl DiskImage {
    /// What the token's image digest binds of this disk (see `token::image_digest_with_disk`).
    pub fn part(&self) -> token::DiskPart {
        token::DiskPart {
            sha256: self.sha256.bytes(),
            readonly: self.readonly,
        }
    }
}

/// The body of `POST /v1/vms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmitRequest {
    /// The broker-signed boot token (hex of its wire format).
    pub token: String,
    /// SHA-256 of the kernel blob, uploaded with `PUT /v1/images/{sha256}`.
    pub kernel: BlobDigest,
    #[serde(default)]
    pub initrd: Option<BlobDigest>,
    #[serde(default)]
    pub cmdline: String,
    /// A disk image; bound by the token's image digest like the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskImage>,
    pub boot: BootMode,
    /// Defaults to the token's memory.
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Defaults to the token's vCPUs.
    #[serde(default)]
    pub vcpus: Option<u32>,
}

/// One line of a followed console (`GET /v1/vms/{id}/console?follow=true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ConsoleEvent {
    /// Console bytes from offset `start` up to `next`. Cut at a UTF-8 character boundary where
    /// the guest wrote text; bytes that are not UTF-8 arrive as U+FFFD.
    Output {
        start: u64,
        next: u64,
        output: String,
    },
    /// The reader fell behind (or asked for an offset the ring no longer holds): the bytes
    /// from `from` to `to` were overwritten before they could be sent.
    Missed { from: u64, to: u64, bytes: u64 },
    /// The stream is over: everything up to `next` was sent.
    End {
        next: u64,
        reason: ConsoleEnd,
        /// Where the VM went, when it moved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
}

/// Why a followed console ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleEnd {
    /// The VM was stopped (by its tenant, for want of payment, or it exited).
    Stopped,
    /// The VM migrated to another host.
    Moved,
    /// hostd is shutting down; the VM may run on, and a new follower may resume at `next`.
    HostShutdown,
}

/// What `GET /v1/vms/{id}` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmView {
    pub vm_id: String,
    pub token_id: String,
    pub host_id: String,
    /// `starting`, `running` or `stopping`.
    pub state: String,
    pub memory_mib: u64,
    pub vcpus: u64,
    pub admitted_at_ms: u64,
    /// Index of the last accepted link.
    pub paid_index: u64,
    pub chain_length: u64,
    pub paid_until_ms: u64,
    pub reclaim_at_ms: u64,
    pub redeemed_index: u64,
    pub console_bytes: u64,
    /// When this host first saw the guest's console output (Unix ms): admission to this is
    /// the injection latency. Restarts after a migration or a hostd restart.
    #[serde(default)]
    pub first_output_at_ms: Option<u64>,
    pub pid: Option<u32>,
    /// The guest NIC's MAC (`hostd --bridge`); the guest reads it from its virtio-net device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The answer to an accepted payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentReceipt {
    pub vm_id: String,
    /// The index of the link now held.
    pub index: u64,
    /// Links this payment newly paid for.
    pub links_paid: u64,
    pub paid_until_ms: u64,
    pub reclaim_at_ms: u64,
}

/// The answer to `DELETE /v1/vms/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub vm_id: String,
    /// Always `stopped`.
    pub state: String,
    /// The last link the host accepted, which it has redeemed.
    pub paid_index: u64,
}

/// What `GET /v1/host` tells about the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInfo {
    pub host_id: String,
    pub public_key: String,
    pub cluster_id: String,
    pub memory_mib: u64,
    pub vcpus: u64,
    pub free_memory_mib: u64,
    pub free_vcpus: u64,
    pub max_skip: u64,
    pub grace_ms: u64,
}

/// The refusal code for a request about a VM that migrated to another host.
pub const VM_MOVED: &str = "vm_moved";

/// Where a VM went, as a [`VM_MOVED`] refusal tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The destination's host id.
    pub host_id: String,
    /// The destination's hostd URL, if the source knew it.
    pub url: Option<String>,
}

const MOVED_TO: &str = " moved to host ";
const RETRY_AT: &str = "; retry at ";

/// The message of a [`VM_MOVED`] refusal: a sentence for people that [`Moved::parse`] reads
/// back, so the tenant's client can follow the VM.
pub fn moved_message(vm_id: &str, host_id: &str, url: &str) -> String {
    match url.is_empty() {
        true => format!("VM {vm_id}{MOVED_TO}{host_id}; the broker knows its address"),
        false => format!("VM {vm_id}{MOVED_TO}{host_id}{RETRY_AT}{url}"),
    }
}

impl Moved {
    /// Reads a [`moved_message`] back; `None` for any other text.
    pub fn parse(message: &str) -> Option<Self> {
        let (_, rest) = message.split_once(MOVED_TO)?;
        let host_id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
        if host_id.is_empty() {
            return None;
        }
        let url = rest
            .split_once(RETRY_AT)
            .map(|(_, url)| url.trim().to_owned())
            .filter(|url| url.starts_with("http://") || url.starts_with("https://"));
        Some(Self { host_id, url })
    }
}

/// The JSON body of every refusal hostd gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code, e.g. `token_expired`, `lease_held`, `replayed`.
    pub error: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_and_lower_cased() {
        let upper = "AB".repeat(32);
        let digest = BlobDigest::try_from(upper).unwrap();
        assert_eq!(digest.as_str(), "ab".repeat(32));
        assert_eq!(BlobDigest::of(b""), BlobDigest::of(b""));
        for bad in ["../etc/passwd", "", &"a".repeat(63), &"g".repeat(64)] {
            assert_eq!(
                BlobDigest::try_from(bad.to_string()),
                Err(BadDigest(bad.to_string()))
            );
        }
        assert!(serde_json::from_str::<BlobDigest>("\"../x\"").is_err());
        let digest = BlobDigest::of(b"disk");
        assert_eq!(token::hex::encode(&digest.bytes()), digest.as_str());
    }

    #[test]
    fn a_moved_refusal_reads_back_where_the_vm_went() {
        let host = "ab".repeat(16);
        let with_url = moved_message("v1", &host, "http://10.0.0.2:8480");
        assert_eq!(
            Moved::parse(&with_url),
            Some(Moved {
                host_id: host.clone(),
                url: Some("http://10.0.0.2:8480".into())
            })
        );
        let without = moved_message("v1", &host, "");
        assert_eq!(
            Moved::parse(&without),
            Some(Moved {
                host_id: host,
                url: None
            })
        );
        for other in [
            "there is no VM v1 on this host",
            "VM v1 moved to host ; retry at x",
        ] {
            assert_eq!(Moved::parse(other), None, "{other}");
        }
    }

    #[test]
    fn boot_modes_are_lower_case_on_the_wire() {
        for mode in [BootMode::Linux, BootMode::Pvh, BootMode::Bench] {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.name()));
            assert_eq!(serde_json::from_str::<BootMode>(&json).unwrap(), mode);
        }
    }
}
