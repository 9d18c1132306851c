//! A hostd under test: its own data directory, a file broker that knows the test's broker
//! key, host and tokens, and the `hostd` binary as a child process killed on drop.
#![allow(dead_code)]

pub mod processes;
pub mod real_broker;

pub use processes::*;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hostd::admission::AdmitRequest;
use hostd::broker::fake::FakeState;
use hostd::broker::{BrokerKey, HostRecord};
use hostd::client::HostdClient;
use hostd::identity::HostIdentity;
use laundromat_api::hostd::{BootMode, DiskImage};
use token::{
    BootToken, ClusterId, HostId, KeyId, Link, Payer, SignedToken, SigningKey, TokenId,
    TOKEN_VERSION,
};

pub const CLUSTER: ClusterId = ClusterId([0xc1; 16]);
pub const IDLE: &str = "workload=idle report-ms=100";
pub const PRICE: u64 = 3;

pub fn broker_key() -> SigningKey {
    SigningKey::from_bytes(&[0xb0; 32])
}

pub fn tenant(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[0x10 + n; 32])
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether KVM tests can run; with LAUNDROMAT_REQUIRE_KVM=1 its absence fails the test.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        assert!(
            std::env::var("LAUNDROMAT_REQUIRE_KVM").as_deref() != Ok("1"),
            "/dev/kvm is not usable and LAUNDROMAT_REQUIRE_KVM=1"
        );
        eprintln!("skipping: /dev/kvm is not usable");
    }
    ok
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn bench_elf() -> Vec<u8> {
    let path = workspace_root().join("target/images/bench.elf");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `bash images/build.sh`", path.display()))
}

/// The `vmm` binary next to `hostd` (the same target directory and profile).
pub fn vmm_bin() -> PathBuf {
    sibling_bin("vmm", "vmm")
}

/// Another package's binary `name` next to `hostd`: the same target directory and profile.
pub fn sibling_bin(name: &str, package: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_hostd")).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release -p {package} --bin {name}`",
        path.display()
    );
    path
}

/// A token and the chain that pays it.
pub struct Bought {
    pub signed: SignedToken,
    pub payer: Payer,
    pub tenant: SigningKey,
}

impl Bought {
    pub fn token(&self) -> &BootToken {
        self.signed.token()
    }

    pub fn hex(&self) -> String {
        token::hex::encode(&self.signed.to_bytes())
    }
}

/// Options for a token; `buy` signs it with the test broker's key.
#[derive(Clone)]
pub struct TokenSpec {
    pub tenant: u8,
    pub kernel: Vec<u8>,
    pub cmdline: String,
    pub disk: Option<DiskImage>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub link_period_ms: u64,
    pub chain_length: u64,
    pub not_before: u64,
    pub expiry: u64,
    pub cluster: ClusterId,
    pub signer: SigningKey,
}

impl TokenSpec {
    pub fn new(kernel: &[u8], cmdline: &str) -> Self {
        Self {
            tenant: 1,
            kernel: kernel.to_vec(),
            cmdline: cmdline.into(),
            disk: None,
            memory_mib: 32,
            vcpus: 1,
            link_period_ms: 60_000,
            chain_length: 100,
            not_before: now_s() - 10,
            expiry: now_s() + 3600,
            cluster: CLUSTER,
            signer: broker_key(),
        }
    }

    pub fn buy(&self) -> Bought {
        let token_id = TokenId::random();
        let payer = Payer::new(token_id, &Link::random_seed(), self.chain_length).unwrap();
        let tenant = tenant(self.tenant);
        let token = BootToken {
            version: TOKEN_VERSION,
            broker_key_id: KeyId(1),
            token_id,
            tenant_key: tenant.verifying_key(),
            cluster_id: self.cluster,
            image_digest: token::image_digest_with_disk(
                &self.kernel,
                None,
                &self.cmdline,
                self.disk.as_ref().map(DiskImage::part),
            ),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            price_per_link: PRICE,
            link_period_ms: self.link_period_ms,
            chain_root: payer.root(),
            chain_length: self.chain_length,
            not_before: self.not_before,
            expiry: self.expiry,
        };
        Bought {
            signed: SignedToken::sign(token, &self.signer).unwrap(),
            payer,
            tenant,
        }
    }
}

pub fn operator() -> SigningKey {
    SigningKey::from_bytes(&[0x0a; 32])
}

/// Where a hostd runs: a network namespace (`None`: the test's own) and the address it listens
/// on (its migrations too).
#[derive(Clone, Debug)]
pub struct Place {
    pub netns: Option<String>,
    pub ip: IpAddr,
    /// Flags for this hostd alone, after a cluster's shared ones.
    pub args: Vec<String>,
}

impl Place {
    pub const LOOPBACK: Place = Place {
        netns: None,
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        args: Vec::new(),
    };

    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// In the namespace `netns`, at `ip`: the test reaches it from a namespace that routes
    /// there (a client namespace of the same test network).
    pub fn netns(netns: &str, ip: impl Into<IpAddr>) -> Self {
        Place {
            netns: Some(netns.into()),
            ip: ip.into(),
            args: Vec::new(),
        }
    }
}

pub struct Hostd {
    pub dir: tempfile::TempDir,
    /// The broker file (shared by every hostd of a [`cluster`]).
    pub broker_path: PathBuf,
    pub url: String,
    pub client: HostdClient,
    pub identity: HostIdentity,
    pub args: Vec<String>,
    /// Started in the network namespace NS (the child is hostd itself).
    pub netns: Option<String>,
    child: Option<Child>,
    /// Directories that must outlive this hostd (a cluster's shared broker file).
    keep: Vec<tempfile::TempDir>,
}

impl Hostd {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn broker_file(&self) -> PathBuf {
        self.broker_path.clone()
    }

    pub fn broker(&self) -> FakeState {
        serde_json::from_slice(&std::fs::read(self.broker_file()).unwrap()).unwrap()
    }

    /// Changes the broker's state as an operator would, under the lock the hostds take.
    pub fn update_broker(&self, change: impl FnOnce(&mut FakeState)) {
        let lock = hostd::broker::file_lock::FileLock::exclusive(&self.broker_path).unwrap();
        let mut state = self.broker();
        change(&mut state);
        hostd::durable::write_atomic(&self.broker_path, &serde_json::to_vec(&state).unwrap())
            .unwrap();
        drop(lock);
    }

    /// The live `vmm` processes of this hostd's data directory (not hostd itself).
    pub fn vmm_processes(&self) -> Vec<u32> {
        let hostd = self.pid();
        processes_under(&self.data_dir())
            .into_iter()
            .filter(|&pid| pid != hostd)
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Starts hostd with `extra` flags; the broker sold `tokens`, and `leases` are held.
    pub fn start(extra: &[&str], tokens: &[&Bought], leases: &[(TokenId, HostId)]) -> Self {
        Self::start_at(Place::LOOPBACK, extra, tokens, leases)
    }

    /// [`Hostd::start`] at `place`.
    pub fn start_at(
        place: Place,
        extra: &[&str],
        tokens: &[&Bought],
        leases: &[(TokenId, HostId)],
    ) -> Self {
        let dir = tempdir();
        let broker_path = dir.path().join("broker.json");
        let (identity, _) = HostIdentity::load_or_create(&prepare_data(&dir)).unwrap();
        let other = HostIdentity::from_key(SigningKey::from_bytes(&[0x77; 32]), PathBuf::new());
        let state = FakeState {
            broker_keys: broker_keys(),
            hosts: vec![host_record(&identity, None), host_record(&other, None)],
            tokens: tokens.iter().map(|b| b.signed.clone()).collect(),
            leases: leases.iter().copied().collect(),
            ..FakeState::default()
        };
        std::fs::write(&broker_path, serde_json::to_vec(&state).unwrap()).unwrap();
        let broker = format!("file:{}", broker_path.display());
        let listen = SocketAddr::new(place.ip, free_tcp_port());
        let mut args = extra.to_vec();
        args.extend(place.args.iter().map(String::as_str));
        Self::launch(
            dir,
            &broker,
            broker_path,
            identity,
            listen,
            place.netns.clone(),
            &args,
        )
    }

    /// Starts hostd against the real broker at `broker_url` (`http://…`); the operator must
    /// register `identity` there before hostd can take leases.
    pub fn start_http(broker_url: &str, extra: &[&str]) -> Self {
        let dir = tempdir();
        let (identity, _) = HostIdentity::load_or_create(&prepare_data(&dir)).unwrap();
        Self::launch(
            dir,
            broker_url,
            PathBuf::new(),
            identity,
            SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            None,
            extra,
        )
    }

    fn launch(
        dir: tempfile::TempDir,
        broker: &str,
        broker_path: PathBuf,
        identity: HostIdentity,
        listen: SocketAddr,
        netns: Option<String>,
        extra: &[&str],
    ) -> Self {
        let data = dir.path().join("data");
        let url = format!("http://{listen}");
        let defaults = [
            ("--broker", broker.to_string()),
            ("--listen", listen.to_string()),
            ("--data-dir", data.display().to_string()),
            ("--cluster", CLUSTER.to_string()),
            ("--mem-mib", "256".into()),
            ("--vcpus", "4".into()),
            ("--vmm", vmm_bin().display().to_string()),
            ("--reclaim-interval-ms", "200".into()),
        ];
        // A flag in `extra` replaces its default: clap refuses a flag given twice.
        let mut args: Vec<String> = defaults
            .into_iter()
            .filter(|(flag, _)| !extra.contains(flag))
            .flat_map(|(flag, value)| [flag.to_string(), value])
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut hostd = Self {
            dir,
            broker_path,
            client: HostdClient::new(url.clone()),
            url,
            identity,
            args,
            netns,
            child: None,
            keep: Vec::new(),
        };
        hostd.spawn();
        hostd
    }

    /// (Re)starts the hostd process with the same arguments and waits for /healthz.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hostd.log"))
            .unwrap();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_hostd"));
                laundromat_tests::netns::enter_on_exec(&mut command, ns);
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_hostd")),
        };
        let child = command
            .args(&self.args)
            .env("HOSTD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut stream) =
                std::net::TcpStream::connect(self.url.trim_start_matches("http://"))
            {
                use std::io::{Read, Write};
                let _ = stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.contains("200 OK") {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("hostd exited ({status}) at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "hostd did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hostd.log")).unwrap_or_default()
    }

    /// Waits up to `timeout` for the hostd process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Uploads `kernel` and asks for a bench VM with `cmdline` on `bought`.
    pub async fn admit(
        &self,
        bought: &Bought,
        kernel: &[u8],
        cmdline: &str,
    ) -> Result<hostd::host::VmView, hostd::client::ClientError> {
        let digest = self.client.put_image(kernel.to_vec()).await.unwrap();
        self.client.admit(&request(bought, &digest, cmdline)).await
    }

    /// Entries left under the VM directory.
    pub fn vm_dirs(&self) -> usize {
        std::fs::read_dir(self.data_dir().join("vms"))
            .unwrap()
            .count()
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        self.kill9();
        // Stop the VMs this hostd started: they outlive it by design.
        if let Ok(entries) = std::fs::read_dir(self.data_dir().join("vms")) {
            for entry in entries.flatten() {
                if let Ok(record) = hostd::record::VmRecord::load(&entry.path()) {
                    if let Some(process) = record.process {
                        if hostd::vmm_process::start_ticks(process.pid) == Some(process.start_ticks)
                        {
                            // SAFETY: kill takes plain integers; the start time was just checked.
                            unsafe { libc::kill(process.pid as i32, libc::SIGKILL) };
                        }
                    }
                }
                // What hostd would do on reaping the jail's supervisor.
                vmm::sandbox::jail::cleanup(&hostd::launch::jail_id(&entry.path()));
            }
        }
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hostd")
        .tempdir_in("/tmp")
        .unwrap()
}

fn prepare_data(dir: &tempfile::TempDir) -> PathBuf {
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    data
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn broker_keys() -> Vec<BrokerKey> {
    vec![BrokerKey {
        key_id: KeyId(1),
        key: broker_key().verifying_key(),
    }]
}

fn host_record(id: &HostIdentity, url: Option<String>) -> HostRecord {
    HostRecord {
        host_id: id.host_id,
        key: id.public_key(),
        cluster_id: CLUSTER,
        url,
    }
}

/// `n` hostds of one cluster sharing one file broker, each registered with its URL, with the
/// operator key of [`operator`]; the broker sold `tokens`.
pub fn cluster(n: usize, extra: &[&str], tokens: &[&Bought]) -> Vec<Hostd> {
    cluster_at(&vec![Place::LOOPBACK; n], extra, tokens)
}

/// [`cluster`] with a hostd at each of `places`.
pub fn cluster_at(places: &[Place], extra: &[&str], tokens: &[&Bought]) -> Vec<Hostd> {
    let shared = tempdir();
    let broker_path = shared.path().join("broker.json");
    let operator_hex = token::hex::encode(operator().verifying_key().as_bytes());
    let mut extra: Vec<&str> = extra.to_vec();
    extra.extend([
        "--operator-key",
        &operator_hex,
        "--advertise-interval-s",
        "1",
    ]);
    let hosts: Vec<_> = places
        .iter()
        .map(|place| {
            let dir = tempdir();
            let (identity, _) = HostIdentity::load_or_create(&prepare_data(&dir)).unwrap();
            let listen = SocketAddr::new(place.ip, free_tcp_port());
            let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
            args.extend(place.args.iter().cloned());
            (dir, identity, listen, place.netns.clone(), args)
        })
        .collect();
    let state = FakeState {
        broker_keys: broker_keys(),
        hosts: hosts
            .iter()
            .map(|(_, id, listen, _, _)| host_record(id, Some(format!("http://{listen}"))))
            .collect(),
        tokens: tokens.iter().map(|b| b.signed.clone()).collect(),
        ..FakeState::default()
    };
    std::fs::write(&broker_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let mut out: Vec<Hostd> = hosts
        .into_iter()
        .map(|(dir, identity, listen, netns, args)| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Hostd::launch(
                dir,
                &format!("file:{}", broker_path.display()),
                broker_path.clone(),
                identity,
                listen,
                netns,
                &args,
            )
        })
        .collect();
    // The broker file's directory lives as long as the first hostd.
    out[0].keep.push(shared);
    out
}

pub fn request(bought: &Bought, kernel: impl AsRef<str>, cmdline: &str) -> AdmitRequest {
    AdmitRequest {
        token: bought.hex(),
        kernel: kernel.as_ref().to_string().try_into().unwrap(),
        initrd: None,
        cmdline: cmdline.into(),
        disk: None,
        boot: BootMode::Bench,
        memory_mib: None,
        vcpus: None,
    }
}

/// Blocks on a future from a synchronous closure (`eventually` takes one).
pub fn futures_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}
