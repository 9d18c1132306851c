//! httperf-bench: httperf from a client namespace against the bench guest's HTTP server while
//! the guest live-migrates from host-a to host-b, with nginx (natively, in host-a's namespace)
//! and the same guest without migration as peers in the same run. Per-100 ms series of replies,
//! latency and resets come from packet timestamps (tcpdump on the client); httperf gives the
//! totals. Prints the figures and each target's verdict, and writes a CSV and a PNG plot.
//! See tests/README.md.

mod capture;
mod report;

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use capture::Capture;
use clap::Parser;
use laundromat_tests::{
    bench_migration::{parse_ctl_output, OurStats},
    host_keys::HostKeys,
    netns::{self, Host, TestNetwork},
    packet_series::{self, Event},
    process::BoundedChild,
    switchover::{self, Timeline},
    workspace::{Image, Workspace},
};

const TAP: &str = "vmtap0";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const BIN_S: f64 = 0.1;
const LIMIT: Duration = Duration::from_secs(60);
/// Targets (issue 10): outage within downtime + 1 RTT + 10 ms, no failed connection,
/// pre-copy throughput at least 0.8 of steady state.
const TARGET_OUTAGE_SLACK_MS: f64 = 10.0;
const TARGET_PRECOPY_RATIO: f64 = 0.8;

#[derive(Parser)]
#[command(about = "httperf against the bench guest while it live-migrates, nginx as the peer")]
struct Args {
    /// Request rates to run at (requests per second), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100u32, 300])]
    rates: Vec<u32>,
    /// Seconds of load in each run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// When the migration starts, in seconds from the start of the load.
    #[arg(long, default_value_t = 3.0)]
    migrate_at: f64,
    /// Requests per connection (HTTP keep-alive).
    #[arg(long, default_value_t = 5)]
    calls: u32,
    /// Bytes in each response body.
    #[arg(long, default_value_t = 64)]
    size: u64,
    /// Guest RAM in MiB: more makes a longer pre-copy.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// httperf's timeout per request, seconds.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
    /// Where the CSV and the PNG go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
}

/// httperf's totals.
#[derive(Debug, Default)]
struct Totals {
    connections: u64,
    replies: u64,
    errors: u64,
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn parse_httperf(out: &str) -> Result<Totals> {
    let t = Totals {
        connections: number_after(out, "Total: connections").context("no totals")?,
        replies: number_after(out, " replies").context("no replies")?,
        errors: number_after(out, "Errors: total").context("no error count")?,
    };
    Ok(t)
}

/// One load run: its events, when it started (epoch s) and httperf's totals.
struct Run {
    events: Vec<Event>,
    origin: f64,
    totals: Totals,
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Captures the client's traffic with `server` while httperf runs `seconds` at `rate`.
/// `during` runs on its own thread from the start of the load.
fn load<T: Send + 'static>(
    client: &Host,
    server: SocketAddrV4,
    args: &Args,
    rate: u32,
    scratch: &Path,
    during: impl FnOnce(f64) -> T + Send + 'static,
) -> Result<(Run, T)> {
    let _ = Command::new("ip")
        .args(["-n", client.namespace(), "neigh", "flush", "all"])
        .status();
    let capture = Capture::start(
        client,
        "eth0",
        &["-s", "256"],
        &format!("tcp port {} and host {}", server.port(), server.ip()),
        &scratch.join("capture.txt"),
    )?;
    let conn_rate = f64::from(rate) / f64::from(args.calls);
    let conns = (conn_rate * args.seconds as f64).ceil() as u64;
    let origin = epoch_now();
    let helper = thread::spawn(move || during(origin));
    let out = client
        .command("timeout")
        .arg(format!("{}", args.seconds + 60))
        .args(["httperf", "--hog", "--server", &server.ip().to_string()])
        .args(["--port", &server.port().to_string(), "--uri", "/"])
        .args([
            "--rate",
            &format!("{conn_rate}"),
            "--num-conns",
            &conns.to_string(),
        ])
        .args(["--num-calls", &args.calls.to_string()])
        .args(["--timeout", &args.timeout.to_string()])
        .output()
        .context("cannot run httperf (apt-get install httperf)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let during = helper
        .join()
        .map_err(|_| anyhow::anyhow!("the helper thread panicked"))?;
    thread::sleep(Duration::from_millis(300));
    let captured = capture.finish()?;
    let totals = parse_httperf(&text).with_context(|| {
        format!(
            "httperf printed no totals:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let events = packet_series::parse(&captured, server);
    Ok((
        Run {
            events,
            origin,
            totals,
        },
        during,
    ))
}

/// The guest's MAC for index `n`, as tcpdump prints it.
fn guest_mac(n: u8) -> String {
    format!("52:54:00:77:01:{n:02x}")
}

/// Boots the http guest on `host`'s tap with MAC index `n`.
fn boot_guest(
    ws: &Workspace,
    host: &Host,
    args: &Args,
    n: u8,
    sock: Option<&Path>,
) -> Result<BoundedChild> {
    let cmdline = format!(
        "workload=http ip={GUEST_IP}/24 gw=10.77.0.1 size={} report-ms=1000",
        args.size
    );
    let mut cmd = host.command(ws.vmm()?);
    cmd.args([
        "run",
        "--boot",
        "bench",
        "--mem",
        &args.mem.to_string(),
        "--kernel",
    ])
    .arg(ws.image(Image::Bench)?)
    .args(["--cmdline", &cmdline])
    .args(["--net", &format!("tap={TAP},mac={}", guest_mac(n))]);
    if let Some(sock) = sock {
        cmd.arg("--api-sock").arg(sock);
    }
    let mut vm = BoundedChild::spawn("guest", &mut cmd)?;
    vm.wait_for("http listening", LIMIT)?;
    Ok(vm)
}

/// What the migration thread saw: wall times (epoch s) and the VMM's statistics.
struct Migration {
    start: f64,
    end: f64,
    stats: OurStats,
}

impl Migration {
    /// When the source paused: the end less the downtime.
    fn switchover(&self) -> f64 {
        self.end - self.stats.downtime_ms / 1e3
    }
}

fn migrate(
    vmm: PathBuf,
    sock: PathBuf,
    url: String,
    keys: Vec<String>,
    at: f64,
    origin: f64,
) -> Result<Migration> {
    let wait = (origin + at - epoch_now()).max(0.0);
    thread::sleep(Duration::from_secs_f64(wait));
    let start = epoch_now();
    let out = Command::new(vmm)
        .arg("ctl")
        .arg(&sock)
        .args(["migrate", &url])
        .args(&keys)
        .output()?;
    let end = epoch_now();
    let (_, stats) = parse_ctl_output(&String::from_utf8_lossy(&out.stdout))?;
    Ok(Migration { start, end, stats })
}

struct RateResult {
    rate: u32,
    nginx: Run,
    steady: Run,
    moving: Run,
    migration: Migration,
    timeline: Timeline,
}

fn run_rate(
    ws: &Workspace,
    net: &TestNetwork,
    args: &Args,
    rate: u32,
    n: u8,
    scratch: &Path,
) -> Result<RateResult> {
    let (a, b, client) = (
        net.host("host-a").context("host-a")?,
        net.host("host-b").context("host-b")?,
        net.host("client").context("client")?,
    );
    let guest = SocketAddrV4::new(GUEST_IP, 80);
    let nginx_addr = SocketAddrV4::new(a.addr(), 80);
    println!("rate {rate} req/s: nginx");
    let (nginx, ()) = load(client, nginx_addr, args, rate, scratch, |_| ())?;
    println!("rate {rate} req/s: guest, steady");
    let vm = boot_guest(ws, a, args, n, None)?;
    let (steady, ()) = load(client, guest, args, rate, scratch, |_| ())?;
    drop(vm);
    println!("rate {rate} req/s: guest, migrating host-a -> host-b");
    let sock = scratch.join("src.sock");
    let url = format!("tcp://{}:4444", b.addr());
    // Fresh identities per run: `vmm keygen` never overwrites a key file.
    let key_dir = tempfile::tempdir_in(scratch)?;
    let keys = HostKeys::create(&ws.vmm()?, key_dir.path())?;
    let mut dst = b.command(ws.vmm()?);
    dst.args(["run", "--incoming", &url])
        .args(keys.incoming_args())
        .args(["--net", &format!("tap={TAP}")]);
    let dst = BoundedChild::spawn("destination", &mut dst)?;
    thread::sleep(Duration::from_millis(300));
    let src = boot_guest(ws, a, args, n + 1, Some(&sock))?;
    let (vmm, at) = (ws.vmm()?, args.migrate_at);
    // Both taps, to place the switchover's steps (see `switchover`).
    let mac = guest_mac(n + 1);
    let filter = format!("ether host {mac}");
    let tap_flags = ["-e", "-s", "96"];
    let tap_a = Capture::start(a, TAP, &tap_flags, &filter, &scratch.join("tap-a.txt"))?;
    let tap_b = Capture::start(b, TAP, &tap_flags, &filter, &scratch.join("tap-b.txt"))?;
    let (moving, migration) = load(client, guest, args, rate, scratch, move |origin| {
        migrate(vmm, sock, url, keys.migrate_args(), at, origin)
    })?;
    let timeline = Timeline::new(
        &switchover::frames(&tap_a.finish()?, &mac),
        &switchover::frames(&tap_b.finish()?, &mac),
    );
    drop(src);
    drop(dst);
    let migration = migration?;
    if migration.stats.status != "completed" {
        bail!(
            "the migration did not complete: {:?}",
            migration.stats.status
        );
    }
    Ok(RateResult {
        rate,
        nginx,
        steady,
        moving,
        migration,
        timeline,
    })
}

fn write_nginx_conf(dir: &Path, listen: SocketAddrV4, size: u64) -> Result<PathBuf> {
    let root = dir.join("www");
    fs::create_dir_all(&root)?;
    fs::write(root.join("index.html"), vec![b'x'; size as usize])?;
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {pid};\nerror_log stderr;\nevents {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 100000; client_body_temp_path {tmp};\n\
             server {{ listen {listen}; root {root}; }} }}\n",
            pid = dir.join("nginx.pid").display(),
            tmp = dir.display(),
            root = root.display(),
        ),
    )?;
    Ok(conf)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("httperf-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    let ws = Workspace::locate()?;
    let net = TestNetwork::create(&["host-a", "host-b", "client"])?;
    let a = net.host("host-a").context("host-a")?;
    a.attach_tap(TAP)?;
    net.host("host-b").context("host-b")?.attach_tap(TAP)?;
    let scratch = std::env::temp_dir().join(format!("lm-httperf-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let result = (|| -> Result<bool> {
        let conf = write_nginx_conf(&scratch, SocketAddrV4::new(a.addr(), 80), args.size)?;
        let mut nginx = a.command("nginx");
        nginx.arg("-c").arg(&conf).args(["-e", "stderr"]);
        let nginx = BoundedChild::spawn("nginx", &mut nginx)
            .context("cannot start nginx (apt-get install nginx-light)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !netns::is_listening(nginx.pid(), SocketAddrV4::new(a.addr(), 80)).unwrap_or(false) {
            if Instant::now() > deadline {
                bail!("nginx did not start listening");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let mut results = Vec::new();
        for (i, &rate) in args.rates.iter().enumerate() {
            results.push(run_rate(&ws, &net, args, rate, (i * 2) as u8, &scratch)?);
        }
        let mut all = true;
        for r in &results {
            all &= report::report(r, args);
        }
        report::write_outputs(&results, args)?;
        drop(nginx);
        Ok(all)
    })();
    let _ = fs::remove_dir_all(&scratch);
    net.delete()?;
    result
}
