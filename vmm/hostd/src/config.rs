//! The host's settings, as the command line gives them.

use std::path::PathBuf;
use std::time::Duration;

use token::ClusterId;

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub data_dir: PathBuf,
    pub cluster_id: ClusterId,
    /// Guest memory this host hands out in all, MiB.
    pub memory_mib: u64,
    /// vCPUs this host hands out in all.
    pub vcpus: u64,
    /// How long past its paid time a VM keeps running before it is reclaimed.
    pub grace: Duration,
    /// The most links one payment may skip: bounds the hashing one request can demand. The
    /// host's own limit, never one taken from a token or a peer.
    pub max_skip: u64,
    /// The `vmm` binary.
    pub vmm: PathBuf,
    /// Start each VM through `vmm jail` (off only with `--no-jail`, for debugging).
    pub jail: bool,
    /// Console bytes kept per VM.
    pub console_bytes: usize,
    /// Consoles followed at once; more followers are refused with 503.
    pub max_console_followers: usize,
    /// Largest kernel or initrd blob accepted.
    pub max_image_bytes: u64,
    /// Largest disk image blob accepted.
    pub max_disk_bytes: u64,
    /// Where VMs' own copies of writable disks live (shared storage, for migrations).
    pub disk_dir: PathBuf,
    /// The URL this host's API is reached at, for the host directory.
    pub advertise_url: String,
    pub min_price_per_link: u64,
    pub reclaim_interval: Duration,
    pub redeem_interval: Duration,
    pub advertise_interval: Duration,
    /// How long a new `vmm` has to answer on its control socket.
    pub start_timeout: Duration,
    /// How long a `vmm` has to stop when asked before it is killed.
    pub stop_timeout: Duration,
    /// The address incoming migrations listen on (a `vmm --incoming` per migration).
    pub migration_ip: std::net::IpAddr,
    /// The operator's key: it may migrate any VM and drain the host.
    pub operator_key: Option<token::VerifyingKey>,
}
