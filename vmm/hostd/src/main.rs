//! `hostd`: the Laundromat host daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hostd::broker::fake::FakeBroker;
use hostd::broker::http::{HttpBroker, Policy};
use hostd::broker::BrokerClient;
use hostd::config::HostConfig;
use hostd::host::Host;
use hostd::identity::{HostIdentity, Origin};
use hostd::migration_key::MigrationKey;
use hostd::network::Network;
use token::ClusterId;

/// Laundromat's host daemon: admits VMs on broker-signed boot tokens, runs each in its own
/// `vmm` process, meters hash-chain payments and reclaims VMs whose paid time has run out.
///
/// VMs survive a hostd restart: hostd re-adopts the `vmm` processes recorded in its data
/// directory. On first start it makes the host's ed25519 identity there (`host-identity.pem`,
/// `vmm keygen`'s format) and prints its public key; register it with the broker
/// (`--print-identity` shows it again).
#[derive(Parser, Debug)]
#[command(name = "hostd", version)]
struct Cli {
    /// The broker: `http://HOST:PORT` for the real broker (requests signed with this host's
    /// key, which the operator must have registered), or `file:PATH` for a broker kept in a
    /// local JSON file (development and tests).
    #[arg(long, required_unless_present = "print_identity")]
    broker: Option<String>,
    /// Address the HTTP API listens on.
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// Where VM records, images, the host key and pending settlements live.
    #[arg(long)]
    data_dir: PathBuf,
    /// The cluster this host serves (32 hex digits); tokens for other clusters are refused.
    #[arg(long, required_unless_present = "print_identity")]
    cluster: Option<ClusterId>,
    /// Guest memory this host hands out in all, MiB.
    #[arg(long, default_value_t = 4096)]
    mem_mib: u64,
    /// vCPUs this host hands out in all.
    #[arg(long, default_value_t = 8)]
    vcpus: u64,
    /// Seconds a VM keeps running after its paid time before it is reclaimed.
    #[arg(long, default_value_t = 30)]
    grace_s: u64,
    /// The most links one payment may skip (bounds the hashing one request costs).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_skip: u64,
    /// The vmm binary [default: `vmm` next to this executable].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Run VMs without the sandbox's jail (`vmm run` instead of `vmm jail`): for debugging
    /// only. Jailed, each VM has its own namespaces, root, uid without capabilities, and
    /// cgroup; hostd must run as root.
    #[arg(long)]
    no_jail: bool,
    /// Console bytes kept per VM; older output is dropped.
    #[arg(long, default_value_t = 256)]
    console_kib: usize,
    /// Consoles followed at once (`console?follow=true`); more followers get 503.
    #[arg(long, default_value_t = 32)]
    max_console_followers: usize,
    /// Largest kernel or initrd blob accepted, MiB.
    #[arg(long, default_value_t = 256)]
    max_image_mib: u64,
    /// Largest disk image blob accepted, MiB (`PUT /v1/disks/{sha256}`).
    #[arg(long, default_value_t = 8192)]
    max_disk_mib: u64,
    /// Where VMs' own copies of writable disk images live [default: <data dir>/disks]. For
    /// host-to-host migration of VMs with a writable disk, put it on storage both hosts reach:
    /// the destination opens the same file.
    #[arg(long)]
    disk_dir: Option<PathBuf>,
    /// The URL other parties reach this API at, for the host directory [default: from --listen].
    #[arg(long)]
    advertise_url: Option<String>,
    /// The lowest price per link this host advertises.
    #[arg(long, default_value_t = 0)]
    min_price: u64,
    /// How often VMs are checked for unpaid time, ms.
    #[arg(long, default_value_t = 1000)]
    reclaim_interval_ms: u64,
    /// How often paid links are redeemed with the broker, s.
    #[arg(long, default_value_t = 60)]
    redeem_interval_s: u64,
    /// How often free capacity is advertised to the broker, s.
    #[arg(long, default_value_t = 30)]
    advertise_interval_s: u64,
    /// Requests handled at once; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 64)]
    max_concurrent: usize,
    /// On SIGTERM or SIGINT, stop and settle every VM instead of leaving them running for
    /// the next hostd to re-adopt.
    #[arg(long)]
    stop_vms_on_exit: bool,
    /// The address incoming migrations listen on (one `vmm --incoming` port per migration)
    /// [default: the address of --listen].
    #[arg(long)]
    migration_ip: Option<std::net::IpAddr>,
    /// The operator's ed25519 public key (64 hex digits): requests it signs may migrate any
    /// VM and drain the host. Without it, only tenants migrate their own VMs.
    #[arg(long, value_parser = parse_key)]
    operator_key: Option<token::VerifyingKey>,
    /// Give each VM a network card: a tap of its own (`lm` + its VM id) on this existing
    /// bridge, and a MAC fixed by its VM id (kept across migrations). Without it VMs have no
    /// network. hostd deletes a VM's tap when the VM ends, and orphaned taps at start.
    #[arg(long, value_name = "NAME")]
    bridge: Option<String>,
    /// Make (if needed) and print the host identity as JSON, then exit.
    #[arg(long)]
    print_identity: bool,
}

fn parse_key(text: &str) -> Result<token::VerifyingKey, String> {
    let bytes: [u8; 32] = token::hex::decode_array(text.trim())
        .map_err(|_| "a public key is 64 hex digits".to_string())?;
    token::VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".into())
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("vmm")))
        .unwrap_or_else(|| PathBuf::from("vmm"))
}

fn broker(spec: &str, identity: &HostIdentity) -> Result<Arc<dyn BrokerClient>, String> {
    if let Some(path) = spec.strip_prefix("file:") {
        let broker =
            FakeBroker::open(PathBuf::from(path)).map_err(|e| hostd::http::error::chain(&e))?;
        return Ok(Arc::new(broker));
    }
    if spec.starts_with("http://") || spec.starts_with("https://") {
        let broker = HttpBroker::new(
            spec,
            identity.key.clone(),
            identity.host_id,
            Policy::default(),
        )
        .map_err(|e| hostd::http::error::chain(&e))?;
        return Ok(Arc::new(broker));
    }
    Err(format!(
        "broker {spec:?} is neither http://HOST:PORT nor file:PATH"
    ))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOSTD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    std::fs::create_dir_all(&cli.data_dir).map_err(|e| {
        format!(
            "cannot make the data directory {}: {e}",
            cli.data_dir.display()
        )
    })?;
    let (identity, origin) =
        HostIdentity::load_or_create(&cli.data_dir).map_err(|e| hostd::http::error::chain(&e))?;
    if cli.print_identity {
        println!(
            "{}",
            serde_json::json!({
                "host_id": identity.host_id.to_string(),
                "public_key": identity.public_hex(),
                "identity_file": identity.path,
            })
        );
        return Ok(());
    }
    match origin {
        Origin::Created => println!(
            "hostd: made a new host identity in {}\nhostd: register it with the broker: host id {}, public key {}",
            identity.path.display(),
            identity.host_id,
            identity.public_hex()
        ),
        Origin::Converted => tracing::info!(
            file = %identity.path.display(),
            "converted the old hex host key to vmm keygen's PEM format (same key, same host id)"
        ),
        Origin::Loaded => {}
    }
    let migration_key = MigrationKey::load_or_create(&cli.data_dir, &identity)
        .map_err(|e| hostd::http::error::chain(&e))?;
    let (Some(broker_spec), Some(cluster_id)) = (cli.broker, cli.cluster) else {
        return Err("--broker and --cluster are required".into());
    };
    let broker = broker(&broker_spec, &identity)?;
    let vmm = cli.vmm.unwrap_or_else(default_vmm);
    if !vmm.is_file() {
        return Err(format!(
            "the vmm binary {} does not exist; give it with --vmm",
            vmm.display()
        ));
    }
    // A Unix socket path must fit in 108 bytes: <data dir>/vms/<32 hex>/ctl/api.sock.
    let socket_len = cli.data_dir.as_os_str().len() + "/vms/".len() + 32 + "/ctl/api.sock".len();
    if socket_len >= 108 {
        return Err(format!(
            "the data directory path is too long for VM control sockets ({socket_len} of 107 bytes)"
        ));
    }
    if cli.no_jail {
        tracing::warn!(
            "VMS RUN UNJAILED (--no-jail): for debugging only; a guest that escapes into its vmm \
             shares hostd's root privileges and filesystem"
        );
    // SAFETY: geteuid only reads.
    } else if unsafe { libc::geteuid() } != 0 {
        return Err(
            "hostd starts every VM jailed (vmm jail), which needs root; run hostd as \
                    root, or pass --no-jail (debugging only)"
                .into(),
        );
    } else if let Err(e) = vmm::sandbox::jail::check_cgroups() {
        return Err(format!(
            "cannot jail VMs: {e} (or pass --no-jail, debugging only)"
        ));
    }
    let config = HostConfig {
        disk_dir: cli
            .disk_dir
            .unwrap_or_else(|| cli.data_dir.join(hostd::disks::DEFAULT_DIR)),
        data_dir: cli.data_dir,
        cluster_id,
        memory_mib: cli.mem_mib,
        vcpus: cli.vcpus,
        grace: Duration::from_secs(cli.grace_s),
        max_skip: cli.max_skip,
        vmm,
        jail: !cli.no_jail,
        console_bytes: cli.console_kib.saturating_mul(1024).max(1024),
        max_console_followers: cli.max_console_followers,
        max_image_bytes: cli.max_image_mib.saturating_mul(1 << 20),
        max_disk_bytes: cli.max_disk_mib.saturating_mul(1 << 20),
        advertise_url: cli
            .advertise_url
            .unwrap_or_else(|| format!("http://{}", cli.listen)),
        min_price_per_link: cli.min_price,
        reclaim_interval: Duration::from_millis(cli.reclaim_interval_ms.max(10)),
        redeem_interval: Duration::from_secs(cli.redeem_interval_s.max(1)),
        advertise_interval: Duration::from_secs(cli.advertise_interval_s.max(1)),
        start_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(5),
        migration_ip: cli.migration_ip.unwrap_or(cli.listen.ip()),
        operator_key: cli.operator_key,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let network = match &cli.bridge {
        Some(bridge) => Some(
            runtime
                .block_on(Network::open(bridge))
                .map_err(|e| format!("--bridge: {}", hostd::http::error::chain(&e)))?,
        ),
        None => None,
    };
    let host = Host::new(config, identity, migration_key, broker, network)
        .map_err(|e| format!("cannot open the data directory: {e}"))?;
    runtime
        .block_on(hostd::daemon::run(
            host,
            cli.listen,
            cli.max_concurrent.max(1),
            cli.stop_vms_on_exit,
        ))
        .map_err(|e| format!("cannot serve: {e}"))
}
