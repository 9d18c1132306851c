//! A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary directory, as an
//! unprivileged user when the tests run as root, serving only on a Unix socket in that
//! directory. It lives as long as the test process: `postgres` runs under a shell that
//! waits on a pipe from this process and, when the pipe closes (the tests ended, passed or
//! panicked), stops the server and removes the directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// Where Debian and most distributions put the server binaries.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|dir| dir.join("initdb").exists())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, postgres) were not found under \
                 /usr/lib/postgresql/*/bin; install Debian's `postgresql` (bash .ci/install-packages) \
                 or set PG_BIN_DIR. The postgres tests fail rather than skip."
            )
        })
}

pub struct Cluster {
    dir: PathBuf,
    _server: Mutex<Child>,
    databases: AtomicU32,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

/// Runs `command` as `nobody` when the tests run as root: initdb refuses root.
fn unprivileged(command: &mut Command) -> &mut Command {
    if running_as_root() {
        command.uid(65534).gid(65534);
    }
    command
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

impl Cluster {
    fn start() -> Self {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!("broker-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        if running_as_root() {
            // Owned by the server's user, who removes it when the tests end.
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
        }
        let data = dir.join("data");
        let status = unprivileged(
            Command::new(bin.join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run initdb");
        assert!(
            status.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        // The server: durable commits as in production (fsync on), sockets only.
        let script = format!(
            "{postgres} -D {data} -k {dir} -c listen_addresses='' -c max_connections=200 \
             -c shared_buffers=64MB >{dir}/log 2>&1 & pid=$!; read _; kill -QUIT $pid; wait $pid; rm -rf {dir}",
            postgres = bin.join("postgres").display(),
            data = data.display(),
            dir = dir.display(),
        );
        let server = unprivileged(Command::new("sh").args(["-c", &script]))
            .stdin(Stdio::piped())
            .spawn()
            .expect("start postgres");
        let cluster = Self {
            dir,
            _server: Mutex::new(server),
            databases: AtomicU32::new(0),
        };
        cluster.wait_ready();
        cluster
    }

    fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}",
            self.dir.display()
        )
    }

    /// Waits until the server accepts connections. It runs on a thread of its own: the
    /// caller may be inside an async runtime, which cannot block on another.
    fn wait_ready(&self) {
        let url = self.url("postgres");
        let ready = move || {
            let url = url.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async { sqlx::PgConnection::connect(&url).await.is_ok() })
            })
            .join()
            .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ready() {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "postgres did not start within 60 s: {log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new, empty database in the cluster.
    pub async fn fresh_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("broker_test_{n}");
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to postgres");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        self.url(&name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
