//! A throwaway PostgreSQL cluster, for the tests and the benchmark: `initdb` in a temporary
//! directory, as `nobody` when running as root (initdb refuses root), serving only on a Unix
//! socket in that directory. `postgres` runs under a shell that waits on a pipe from this
//! process; when the pipe closes (the process ended, normally or not) the shell stops the
//! server and removes the directory.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Connection;

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("PostgreSQL's server binaries (initdb, postgres) are not under /usr/lib/postgresql/*/bin; install Debian's `postgresql` (bash .ci/install-packages) or set PG_BIN_DIR")]
    NoBinaries,
    #[error("cannot prepare the cluster directory")]
    Dir(#[source] std::io::Error),
    #[error("initdb failed: {0}")]
    Initdb(String),
    #[error("cannot start postgres")]
    Start(#[source] std::io::Error),
    #[error("postgres did not accept connections within 60 s: {0}")]
    NotReady(String),
    #[error("cannot create a database")]
    CreateDatabase(#[source] sqlx::Error),
}

/// Where Debian puts the server binaries, or `PG_BIN_DIR`.
fn bin_dir() -> Result<PathBuf, ScratchError> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
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
        .ok_or(ScratchError::NoBinaries)
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn unprivileged(command: &mut Command) -> &mut Command {
    if running_as_root() {
        command.uid(65534).gid(65534);
    }
    command
}

/// A running throwaway cluster.
pub struct Cluster {
    dir: PathBuf,
    _server: Mutex<Child>,
    databases: AtomicU32,
}

impl Cluster {
    /// initdb and start a cluster; blocks until it accepts connections. Call it outside an
    /// async runtime's worker, or from `spawn_blocking`.
    pub fn start() -> Result<Self, ScratchError> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!("broker-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(ScratchError::Dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(ScratchError::Dir)?;
        if running_as_root() {
            // Owned by the server's user, who removes it at the end.
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).map_err(ScratchError::Dir)?;
        }
        let data = dir.join("data");
        let output = unprivileged(Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]))
        .stdout(Stdio::null())
        .output()
        .map_err(|e| ScratchError::Initdb(e.to_string()))?;
        if !output.status.success() {
            return Err(ScratchError::Initdb(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        // Durable commits as in production (fsync on); sockets only.
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
            .map_err(ScratchError::Start)?;
        let cluster = Self {
            dir,
            _server: Mutex::new(server),
            databases: AtomicU32::new(0),
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}",
            self.dir.display()
        )
    }

    fn wait_ready(&self) -> Result<(), ScratchError> {
        let url = self.url("postgres");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = url.clone();
            // A thread of its own: the caller may be inside a runtime.
            let ready = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| {
                        rt.block_on(async { sqlx::PgConnection::connect(&attempt).await.is_ok() })
                    })
                    .unwrap_or(false)
            })
            .join()
            .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                return Err(ScratchError::NotReady(log));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new, empty database in the cluster.
    pub async fn fresh_database(&self) -> Result<String, ScratchError> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("scratch_{n}");
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .map_err(ScratchError::CreateDatabase)?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(ScratchError::CreateDatabase)?;
        Ok(self.url(&name))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
