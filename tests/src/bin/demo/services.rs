//! The long-running services of the demo: the broker and the two hostds, each in its namespace,
//! stopped with SIGTERM (so hostd stops its VMs) when the demo ends, however it ends.
use super::*;

/// How long a service may take to answer `/healthz` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a service may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A service process inside a namespace host, with the URL it answers on.
pub(super) struct Service {
    pub(super) host: Host,
    pub(super) url: String,
    pub(super) data: PathBuf,
    child: Option<BoundedChild>,
}

impl Service {
    fn spawn(
        tools: &Tools,
        host: &Host,
        name: &str,
        args: &[&str],
        url: String,
        data: PathBuf,
        out: Out,
    ) -> Result<Self> {
        out.line(format_args!("[{}] $ {name} {} &", host.name(), shown(args)));
        let mut command = tools.command(host, name, args);
        let child = BoundedChild::spawn(name, &mut command)?;
        let mut service = Service {
            host: host.clone(),
            url,
            data,
            child: Some(child),
        };
        service.wait_healthy(name)?;
        Ok(service)
    }

    /// Waits until `GET /healthz` answers, failing early if the process exits.
    fn wait_healthy(&mut self, name: &str) -> Result<()> {
        let health = format!("{}/healthz", self.url);
        let host = self.host.clone();
        let child = self.child.as_mut().context("the service is not running")?;
        wait_for(
            &format!("{name} answering on {health}"),
            START_TIMEOUT,
            || {
                if !child.is_running()? {
                    // Let the pipe readers take in the last lines.
                    thread::sleep(Duration::from_millis(200));
                    bail!("{name} exited at start: {}", child.stderr().trim());
                }
                let status = host
                    .command("curl")
                    .args(["-sf", "-o", "/dev/null", "--max-time", "2", &health])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                Ok(status.success().then_some(()))
            },
        )
    }

    /// The operator's broker on SQLite, with short refund periods so the demo sees a refund.
    pub(super) fn broker(tools: &Tools, laptop: &Host, out: Out) -> Result<Self> {
        let key = tools.dir.join("operator.key");
        let key_arg = key.to_string_lossy();
        let operator = tools.json(laptop, "broker", &["keygen", "--out", &key_arg], out)?;
        let operator = string(&operator, "public_key")?;
        let data = tools.dir.join("broker");
        let listen = format!("{}:{BROKER_PORT}", laptop.addr());
        let data_arg = data.to_string_lossy().into_owned();
        let args = [
            "serve",
            "--operator-key",
            &operator,
            "--cluster",
            CLUSTER,
            "--listen",
            &listen,
            "--data-dir",
            &data_arg,
            "--refund-grace-secs",
            "1",
            "--refund-interval-secs",
            "1",
        ];
        let url = format!("http://{listen}");
        Self::spawn(tools, laptop, "broker", &args, url, data, out)
    }

    pub(super) fn operator_key(tools: &Tools) -> String {
        tools
            .dir
            .join("operator.key")
            .to_string_lossy()
            .into_owned()
    }

    /// `broker check` on the broker's database: its report, violations included.
    pub(super) fn check(&self, tools: &Tools, out: Out) -> Result<Value> {
        let db = format!("sqlite://{}", self.data.join("broker.db").display());
        tools.json_any_status(&self.host, "broker", &["check", "--db", &db], out)
    }

    /// Asks the service to stop and waits for it; kills it if it does not.
    pub(super) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.is_running(), Ok(true)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        // Kills and reaps it if it is still there.
        drop(child);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A host running hostd, registered with the broker.
pub(super) struct Hostd {
    pub(super) id: String,
    pub(super) service: Service,
}

impl Hostd {
    pub(super) fn start(
        tools: &Tools,
        host: &Host,
        broker: &Service,
        grace_s: u64,
        out: Out,
    ) -> Result<Self> {
        let data = tools.dir.join(host.name());
        let data_arg = data.to_string_lossy().into_owned();
        // hostd prints its identity as JSON without being asked.
        let identity = tools.text(
            host,
            "hostd",
            &["--data-dir", &data_arg, "--print-identity"],
            out,
        )?;
        let identity: Value = serde_json::from_str(identity.trim())
            .with_context(|| format!("hostd printed an identity that is not JSON: {identity}"))?;
        let id = string(&identity, "host_id")?;
        let key = string(&identity, "public_key")?;
        tools.text(
            &broker.host,
            "broker",
            &[
                "host",
                "add",
                "--broker",
                &broker.url,
                "--operator-secret",
                &Service::operator_key(tools),
                "--host-id",
                &id,
                "--host-key",
                &key,
                "--cluster",
                CLUSTER,
            ],
            out,
        )?;
        let listen = format!("{}:{HOSTD_PORT}", host.addr());
        let grace = grace_s.to_string();
        let args = [
            "--broker",
            &broker.url,
            "--listen",
            &listen,
            "--data-dir",
            &data_arg,
            "--cluster",
            CLUSTER,
            "--mem-mib",
            "2048",
            "--vcpus",
            "4",
            "--grace-s",
            &grace,
            "--reclaim-interval-ms",
            "200",
            "--redeem-interval-s",
            "2",
            "--advertise-interval-s",
            "2",
            "--stop-vms-on-exit",
        ];
        let url = format!("http://{listen}");
        let service = Service::spawn(tools, host, "hostd", &args, url, data, out)?;
        Ok(Hostd { id, service })
    }

    pub(super) fn url(&self) -> &str {
        &self.service.url
    }

    /// The value of one Prometheus series on this host's `/metrics`, e.g.
    /// `hostd_payments_total{outcome="accepted"}`; 0 if the host has not reported it yet.
    pub(super) fn metric(&self, series: &str) -> Result<f64> {
        let url = format!("{}/metrics", self.url());
        let output = self
            .service
            .host
            .command("curl")
            .args(["-sf", "--max-time", "5", &url])
            .output()?;
        ensure!(output.status.success(), "cannot read {url}");
        let text = String::from_utf8_lossy(&output.stdout);
        let value = text
            .lines()
            .filter_map(|line| line.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .map(|(_, value)| value.parse::<f64>())
            .transpose()
            .with_context(|| format!("{url} shows {series} with a value that is not a number"))?;
        Ok(value.unwrap_or(0.0))
    }
}

/// Kills, by pid, whatever process still names the demo's private directory on its command line
/// (a `vmm` that outlived a hostd killed after its stop timeout): only the demo's own children
/// and theirs can. Returns how many there were.
pub(super) fn kill_leftovers(dir: &Path) -> usize {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for pid in entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
    {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            killed += 1;
        }
    }
    killed
}
