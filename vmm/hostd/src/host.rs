//! The host: its VMs, its capacity, and what it tells about them. Admission, payments and
//! the end of a VM's life are in their own modules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use token::chain::verifier::Verifier;
use token::{BootToken, BrokerKeys, HostId, KeyId, PaidTime, SignedToken};

use crate::broker::BrokerClient;
use crate::config::HostConfig;
use crate::console::ConsoleRing;
use crate::identity::HostIdentity;
use crate::images::ImageStore;
use crate::metrics::{Gauges, Metrics};
use crate::migration_key::MigrationKey;
use crate::record::VmRecord;
use crate::vmm_process::VmmProcess;

/// Log lines of a `vmm` kept per VM.
pub const LOG_BYTES: usize = 16 * 1024;
/// The broker's keys are fetched again for an unknown key id at most this often, so that a
/// flood of tokens naming made-up key ids cannot turn into a flood of broker requests.
const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Admitted, `vmm` starting.
    Starting,
    Running,
    /// Migrating away: still runs and takes payments here until the switchover.
    Migrating,
    /// Arriving by migration: its `vmm --incoming` waits for the source's commit.
    Incoming,
    /// Moved to another host: nothing left to settle here.
    Moved,
    /// Being stopped and settled; refuses payments.
    Stopping,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Starting,
        Phase::Running,
        Phase::Migrating,
        Phase::Incoming,
        Phase::Moved,
        Phase::Stopping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Migrating => "migrating",
            Phase::Incoming => "incoming",
            Phase::Moved => "moved",
            Phase::Stopping => "stopping",
        }
    }
}

/// The mutable part of a VM, behind one async lock: payments, redemption and stopping
/// take it in turn, so a payment is never accepted for a VM being torn down.
#[derive(Debug)]
pub struct VmState {
    pub record: VmRecord,
    pub verifier: Verifier,
    pub process: Option<Arc<VmmProcess>>,
}

#[derive(Debug)]
pub struct Vm {
    pub id: String,
    pub dir: PathBuf,
    pub token: BootToken,
    pub memory_mib: u64,
    pub vcpus: u64,
    pub meter: PaidTime,
    /// Its tap and MAC, when this host gives VMs a network (`--bridge`).
    pub net: Option<crate::network::VmNet>,
    pub console: Arc<ConsoleRing>,
    pub log: Arc<ConsoleRing>,
    pub phase: Mutex<Phase>,
    pub state: tokio::sync::Mutex<VmState>,
}

impl Vm {
    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_phase(&self, phase: Phase) -> Phase {
        std::mem::replace(
            &mut *self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            phase,
        )
    }

    /// Moves from `from` to `to` if the VM is in `from`; returns whether it was.
    pub fn change_phase(&self, from: Phase, to: Phase) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let matched = *phase == from;
        if matched {
            *phase = to;
        }
        matched
    }
}

pub use laundromat_api::hostd::VmView;

pub struct Host {
    pub config: HostConfig,
    pub identity: HostIdentity,
    /// What this host's `vmm`s present in migration TLS (never the identity itself).
    pub migration_key: MigrationKey,
    pub broker: Arc<dyn BrokerClient>,
    /// The bridge VM taps go on (`--bridge`); without it VMs have no NIC.
    pub network: Option<crate::network::Network>,
    pub images: ImageStore,
    pub metrics: Metrics,
    pub vms: Mutex<BTreeMap<String, Arc<Vm>>>,
    /// Migrations this host receives, by migration id.
    pub incoming: Mutex<BTreeMap<String, crate::migration::incoming::IncomingEntry>>,
    /// VMs that moved away: their id → (the host, its URL), to send late payers on.
    pub moved: Mutex<BTreeMap<String, (HostId, String)>>,
    /// Requests to other hosts.
    pub http: reqwest::Client,
    /// Woken when a VM starts or ends, so the host directory learns of it at once.
    pub capacity_changed: tokio::sync::Notify,
    /// Permits for followed consoles (their answers outlive the request limit's slot).
    pub console_followers: Arc<tokio::sync::Semaphore>,
    /// Set when hostd begins to shut down, so that endless answers (followed consoles) end.
    pub shutting_down: tokio::sync::watch::Sender<bool>,
    broker_keys: Mutex<(BrokerKeys, Option<Instant>)>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Host {
    pub fn new(
        config: HostConfig,
        identity: HostIdentity,
        migration_key: MigrationKey,
        broker: Arc<dyn BrokerClient>,
        network: Option<crate::network::Network>,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(config.data_dir.join("vms"))?;
        std::fs::create_dir_all(config.data_dir.join(crate::lifecycle::PENDING_DIR))?;
        let images = ImageStore::open(
            config.data_dir.join("images"),
            config.max_image_bytes,
            config.max_disk_bytes,
        )?;
        std::fs::create_dir_all(&config.disk_dir)?;
        let followers = config.max_console_followers;
        Ok(Arc::new(Self {
            config,
            identity,
            migration_key,
            broker,
            network,
            images,
            metrics: Metrics::default(),
            vms: Mutex::new(BTreeMap::new()),
            incoming: Mutex::new(BTreeMap::new()),
            moved: Mutex::new(BTreeMap::new()),
            http: reqwest::Client::new(),
            capacity_changed: tokio::sync::Notify::new(),
            console_followers: Arc::new(tokio::sync::Semaphore::new(followers)),
            shutting_down: tokio::sync::watch::Sender::new(false),
            broker_keys: Mutex::new((BrokerKeys::new(), None)),
        }))
    }

    pub fn host_id(&self) -> HostId {
        self.identity.host_id
    }

    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.config.data_dir.join("vms").join(vm_id)
    }

    pub fn vms(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Vm>>> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn vm(&self, id: &str) -> Option<Arc<Vm>> {
        self.vms().get(id).cloned()
    }

    pub fn incoming(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, crate::migration::incoming::IncomingEntry>>
    {
        self.incoming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a VM that left this host went.
    pub fn moved_to(&self, vm_id: &str) -> Option<(HostId, String)> {
        self.moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vm_id)
            .cloned()
    }

    /// (memory MiB, vCPUs) not handed out, counting VMs starting and stopping.
    pub fn free_capacity(&self) -> (u64, u64) {
        let vms = self.vms();
        let used_mem: u64 = vms.values().map(|vm| vm.memory_mib).sum();
        let used_vcpus: u64 = vms.values().map(|vm| vm.vcpus).sum();
        (
            self.config.memory_mib.saturating_sub(used_mem),
            self.config.vcpus.saturating_sub(used_vcpus),
        )
    }

    /// The broker keys that may verify a token signed with `key_id`: the cached set, fetched
    /// again from the broker if it lacks `key_id` (rate-limited).
    pub async fn broker_keys_for(
        &self,
        key_id: KeyId,
    ) -> Result<BrokerKeys, crate::broker::BrokerError> {
        let stale = {
            let cache = self.broker_keys.lock().unwrap_or_else(|e| e.into_inner());
            if cache.0.get(key_id).is_some() {
                return Ok(cache.0.clone());
            }
            cache
                .1
                .is_none_or(|at| at.elapsed() >= KEY_REFRESH_INTERVAL)
        };
        if stale {
            let keys = self.broker.broker_keys().await?;
            let mut cache = self.broker_keys.lock().unwrap_or_else(|e| e.into_inner());
            *cache = (
                keys.into_iter().map(|k| (k.key_id, k.key)).collect(),
                Some(Instant::now()),
            );
        }
        Ok(self
            .broker_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone())
    }

    pub async fn view(&self, vm: &Vm) -> VmView {
        let state = vm.state.lock().await;
        let index = state.verifier.index();
        VmView {
            vm_id: vm.id.clone(),
            token_id: vm.token.token_id.to_string(),
            host_id: self.host_id().to_string(),
            state: vm.phase().name().into(),
            memory_mib: vm.memory_mib,
            vcpus: vm.vcpus,
            admitted_at_ms: vm.meter.admitted_at_ms,
            paid_index: index,
            chain_length: vm.token.chain_length,
            paid_until_ms: vm.meter.paid_until(index),
            reclaim_at_ms: vm.meter.reclaim_at(index),
            redeemed_index: state.record.redeemed_index,
            console_bytes: vm.console.total(),
            first_output_at_ms: vm.console.first_at_ms(),
            pid: state.process.as_ref().map(|p| p.id.pid),
            mac: vm.net.as_ref().map(|net| net.mac.to_string()),
        }
    }

    pub fn render_metrics(&self) -> String {
        let mut gauges = Gauges::default();
        for phase in Phase::ALL {
            gauges.vms_by_state.insert(phase.name(), 0);
        }
        for vm in self.vms().values() {
            *gauges.vms_by_state.entry(vm.phase().name()).or_default() += 1;
        }
        (gauges.free_memory_mib, gauges.free_vcpus) = self.free_capacity();
        self.metrics.render(&gauges)
    }
}

/// Builds the in-memory VM for a record (new or recovered).
pub fn vm_from_record(host: &Host, record: VmRecord, verifier: Verifier, phase: Phase) -> Arc<Vm> {
    let token = SignedToken::token(&record.token).clone();
    let meter = PaidTime::for_token(
        &token,
        record.admitted_at_ms,
        host.config.grace.as_millis() as u64,
    );
    Arc::new(Vm {
        id: record.vm_id.clone(),
        dir: host.vm_dir(&record.vm_id),
        memory_mib: u64::from(record.memory_mib),
        vcpus: u64::from(record.vcpus),
        token,
        meter,
        net: record.net.clone(),
        console: Arc::new(ConsoleRing::new(host.config.console_bytes)),
        log: Arc::new(ConsoleRing::new(LOG_BYTES)),
        phase: Mutex::new(phase),
        state: tokio::sync::Mutex::new(VmState {
            record,
            verifier,
            process: None,
        }),
    })
}
