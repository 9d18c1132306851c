//! agent-bench: the timeline workload on three `guest-agentd` processes on loopback, in four
//! modes: data shipping, moving continuations, continuations after placement, and ship-or-fetch
//! after placement. Prints bytes and hops per request, p50/p99 latency, requests per second, the
//! hops and bytes per round while placement converges, and each target's verdict; draws those
//! rounds over time to `docs/agent-bench.png`.
//!
//! With `--vms` the same timeline runs on three bench-unikernel VMs (`workload=agent`) in
//! network namespaces instead: each mode boots fresh VMs, and modes 3 and 4 begin with a
//! warm-up of reads during which the agents take turns running placement passes. The same plot,
//! from the VM agents' own counters at each placement pass, goes to `agent-bench-vms.png`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use guest_agent::timeline::Params;
use guest_agent::{Policy, Stats};
use guest_agentd::api::{Client, Request, Response};
use laundromat_tests::plot::{self, Line, Panel};
use laundromat_tests::workspace::Workspace;

#[derive(Parser)]
#[command(about = "The guest agent's timeline benchmark (four modes, placement convergence)")]
struct Args {
    /// A reduced run (under a minute) that still prints every mode and verdict.
    #[arg(long)]
    quick: bool,
    /// Users in the data set.
    #[arg(long, default_value_t = 300)]
    users: u32,
    /// Timeline requests measured per mode.
    #[arg(long, default_value_t = 1500)]
    requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// Placement rounds (requests, then one pass per agent in turn); with `--vms`, placement
    /// periods of the warm-up.
    #[arg(long, default_value_t = 8)]
    rounds: u32,
    /// Where the PNG goes: `agent-bench.png`, or with `--vms` `agent-bench-vms.png`.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Run on three bench-unikernel VMs (`workload=agent`, one per network namespace on one
    /// switch; needs root, /dev/kvm, `bash images/build.sh` and `cargo build --release -p
    /// vmm`) instead of loopback daemons. Modes 3 and 4 warm up for `--rounds` placement
    /// periods of `--place-ms` each.
    #[arg(long)]
    vms: bool,
    /// With `--vms`: the placement period, in which each agent runs one pass in its own slot.
    #[arg(long, default_value_t = 600)]
    place_ms: u64,
}

struct Cluster {
    dir: PathBuf,
    addrs: Vec<SocketAddr>,
    children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(params: Params) -> Result<Cluster, String> {
    let daemon = Workspace::locate()
        .and_then(|w| w.guest_agentd())
        .map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("agent-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut addrs = Vec::new();
    for _ in 0..params.agents {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
    }
    let mut cluster = Cluster {
        dir: dir.clone(),
        addrs: addrs.clone(),
        children: Vec::new(),
    };
    for id in 0..params.agents {
        let peers: BTreeMap<String, String> = (0..params.agents)
            .filter(|&p| p != id)
            .map(|p| (p.to_string(), addrs[usize::from(p)].to_string()))
            .collect();
        let config = serde_json::json!({
            "id": id, "listen": addrs[usize::from(id)].to_string(),
            "data_dir": dir.join(format!("agent{id}")), "peers": peers, "timeline": params,
        });
        let path = dir.join(format!("agent{id}.json"));
        std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
        let child = Command::new(&daemon)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", daemon.display()))?;
        cluster.children.push(child);
    }
    for &addr in &addrs {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Client::connect(addr, Duration::from_secs(1)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("the agent at {addr} did not come up"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(cluster)
}

fn call(addr: SocketAddr, request: &Request) -> Result<Response, String> {
    let mut client = Client::connect(addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    client.call(request).map_err(|e| e.to_string())
}

fn totals(cluster: &Cluster) -> Result<(Stats, u64), String> {
    let mut sum = Stats::default();
    let mut moved = 0;
    for &addr in &cluster.addrs {
        match call(addr, &Request::Stats {})? {
            Response::Stats {
                stats, moved: m, ..
            } => {
                sum.add(&stats);
                moved += m;
            }
            other => return Err(format!("unexpected answer to stats: {other:?}")),
        }
    }
    Ok((sum, moved))
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    bytes: f64,
    hops: f64,
    fetches: f64,
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
}

static KEYS: AtomicU64 = AtomicU64::new(1);

/// Runs `requests` timeline reads from `concurrency` closed-loop clients, each entering at a
/// random agent (a load balancer that knows nothing of placement).
fn measure(
    cluster: &Cluster,
    params: Params,
    requests: u64,
    concurrency: u64,
) -> Result<Figures, String> {
    let (before, _) = totals(cluster)?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (addrs, next) = (cluster.addrs.clone(), Arc::clone(&next));
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut clients: Vec<Client> = addrs
                    .iter()
                    .map(|&a| {
                        Client::connect(a, Duration::from_secs(10)).map_err(|e| e.to_string())
                    })
                    .collect::<Result<_, _>>()?;
                let mut rng = guest_agent::sim::Rng::new(w * 7919 + KEYS.load(Ordering::Relaxed));
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let at = rng.below(addrs.len() as u64) as usize;
                    let user = rng.below(u64::from(params.users)) as u32;
                    let key = KEYS.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let request = Request::Timeline {
                        user,
                        limit: 10,
                        key,
                    };
                    let future = match clients[at].call(&request).map_err(|e| e.to_string())? {
                        Response::Submitted { future } => future,
                        other => return Err(format!("submit: {other:?}")),
                    };
                    loop {
                        match clients[at]
                            .call(&Request::Result { future })
                            .map_err(|e| e.to_string())?
                        {
                            Response::Done { .. } => break,
                            Response::Pending => std::thread::sleep(Duration::from_micros(200)),
                            other => return Err(format!("{future}: {other:?}")),
                        }
                    }
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(
            worker
                .join()
                .map_err(|_| "a client thread panicked".to_string())??,
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let trailing acknowledgements settle before reading the counters.
    std::thread::sleep(Duration::from_millis(100));
    let (after, _) = totals(cluster)?;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let n = requests as f64;
    Ok(Figures {
        bytes: (after.request_bytes() - before.request_bytes()) as f64 / n,
        hops: (after.task_hops_at_completion - before.task_hops_at_completion) as f64 / n,
        fetches: (after.fetches - before.fetches) as f64 / n,
        p50_ms: pct(0.50).as_secs_f64() * 1e3,
        p99_ms: pct(0.99).as_secs_f64() * 1e3,
        rps: n / elapsed,
    })
}

fn set_policy(cluster: &Cluster, policy: Policy) -> Result<(), String> {
    for &addr in &cluster.addrs {
        call(addr, &Request::SetPolicy { policy })?;
    }
    Ok(())
}

fn print_row(name: &str, f: &Figures) {
    println!(
        "{name:<34} {:>10.0} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>9.0}",
        f.bytes, f.hops, f.fetches, f.p50_ms, f.p99_ms, f.rps
    );
}

fn verdict(name: &str, value: f64, target: f64) {
    let met = if value >= target { "MET" } else { "MISSED" };
    println!("target: {name}: {value:.2}x (target >= {target}x): {met}");
}

/// The best placement could do on this data set, and the targets' verdicts.
fn verdicts(params: &Params, shipping: &Figures, moving: &Figures, placed: &Figures) {
    let community = params.community_hops();
    println!(
        "bound: with each community on one agent (an oracle), a read would take {community:.2} \
         hops, {:.2}x fewer than random placement",
        moving.hops / community
    );
    verdict(
        "mode 3 moves fewer bytes than mode 1",
        shipping.bytes / placed.bytes.max(1.0),
        10.0,
    );
    verdict(
        "placement cuts hops (mode 2 / mode 3)",
        moving.hops / placed.hops.max(0.01),
        2.0,
    );
    verdict(
        "placement raises throughput (mode 3 / mode 2)",
        placed.rps / moving.rps.max(0.01),
        2.0,
    );
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("agent-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(mut args: Args) -> Result<(), String> {
    if args.quick {
        args.requests = args.requests.min(300);
    }
    // The VMs' placement periods are short (a few hundred reads each, so the co-access sketch
    // is not swamped between passes) and cheap: a quick run keeps all of them.
    if args.vms {
        return run_vms(&args);
    }
    if args.quick {
        args.rounds = args.rounds.min(5);
    }
    let params = Params {
        users: args.users,
        ..Params::default()
    };
    let cluster = start(params)?;
    let per_round = (args.requests / 2).max(50);
    println!(
        "timeline: {} users over {} agents, {} follows on average, {} requests per mode, {} in flight",
        params.users, params.agents, params.follows, args.requests, args.concurrency
    );
    println!(
        "{:<34} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "mode", "bytes/req", "hops/req", "fetch/req", "p50 ms", "p99 ms", "req/s"
    );
    set_policy(&cluster, Policy::Fetch)?;
    let shipping = measure(&cluster, params, args.requests, args.concurrency)?;
    print_row("1 data shipping (random placement)", &shipping);
    set_policy(&cluster, Policy::Move)?;
    let moving = measure(&cluster, params, args.requests, args.concurrency)?;
    print_row("2 continuations (random placement)", &moving);

    println!("placement converging (round: hops/req, bytes/req, objects moved so far):");
    let converging = Instant::now();
    let mut series = Vec::new();
    for round in 0..args.rounds {
        let f = measure(&cluster, params, per_round, args.concurrency)?;
        series.push((converging.elapsed().as_secs_f64(), f));
        for &addr in &cluster.addrs {
            call(addr, &Request::Place {})?;
            std::thread::sleep(Duration::from_millis(50));
        }
        let (_, moved) = totals(&cluster)?;
        println!(
            "  round {round}: {:.2} hops, {:.0} bytes, {moved} moved",
            f.hops, f.bytes
        );
    }
    let placed = measure(&cluster, params, args.requests, args.concurrency)?;
    series.push((converging.elapsed().as_secs_f64(), placed));
    print_row("3 continuations after placement", &placed);
    set_policy(&cluster, Policy::ShipOrFetch)?;
    let mixed = measure(&cluster, params, args.requests, args.concurrency)?;
    print_row("4 ship-or-fetch after placement", &mixed);

    verdicts(&params, &shipping, &moving, &placed);
    let png = args.out.join("agent-bench.png");
    let title = "agent-bench: the timeline on 3 guest-agentd while placement converges";
    draw(&png, title, &series, &shipping, &moving)?;
    println!("wrote {}", png.display());
    Ok(())
}

/// The four modes on three agent VMs, each on freshly booted VMs. Each agent submits its share
/// of the reads itself, keeping its share of `concurrency` outstanding; latencies are measured
/// on the VM clock. Modes 3 and 4 first warm up for `rounds` placement periods: reads that
/// move continuations while the agents take turns running passes (as the placement rounds on
/// daemons), left out of the figures.
fn run_vms(args: &Args) -> Result<(), String> {
    use laundromat_tests::bench_agent_vms::{self, VmRun};
    use laundromat_tests::workspace::Image;
    let workspace = Workspace::locate().map_err(|e| e.to_string())?;
    let vmm = workspace.vmm().map_err(|e| e.to_string())?;
    let image = workspace.image(Image::Bench).map_err(|e| e.to_string())?;
    let params = Params {
        users: args.users,
        ..Params::default()
    };
    let agents = u64::from(params.agents);
    let warmup_ms = u64::from(args.rounds) * args.place_ms;
    let mut run = VmRun {
        users: args.users,
        reads_per_agent: args.requests.div_ceil(agents),
        window: args.concurrency.div_ceil(agents),
        policy: "fetch",
        warmup_ms: 0,
        place_ms: 0,
        limit: Duration::from_secs(300),
    };
    println!(
        "timeline on {agents} bench-unikernel VMs: {} users, {} requests per mode, {} in flight per agent; \
         modes 3 and 4 after a {warmup_ms} ms warm-up ({} placement periods of {} ms)",
        args.users,
        run.reads_per_agent * agents,
        run.window,
        args.rounds,
        args.place_ms
    );
    println!(
        "{:<34} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "mode", "bytes/req", "hops/req", "fetch/req", "p50 ms", "p99 ms", "req/s"
    );
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for (name, policy, warm) in [
        ("1 data shipping (random placement)", "fetch", false),
        ("2 continuations (random placement)", "move", false),
        ("3 continuations after placement", "move", true),
        ("4 ship-or-fetch after placement", "ship-or-fetch", true),
    ] {
        run.policy = policy;
        (run.warmup_ms, run.place_ms) = if warm {
            (warmup_ms, args.place_ms)
        } else {
            (0, 0)
        };
        let mut got = bench_agent_vms::run(&vmm, &image, &run)?;
        got.latencies_us.sort_unstable();
        let pct = |p: f64| {
            let i = ((got.latencies_us.len() as f64 * p) as usize).min(got.latencies_us.len() - 1);
            got.latencies_us[i] as f64 / 1e3
        };
        let n = got.reads.max(1) as f64;
        let f = Figures {
            bytes: got.bytes as f64 / n,
            hops: got.hops as f64 / n,
            fetches: got.fetches as f64 / n,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            rps: n / (got.span_us.max(1) as f64 / 1e6),
        };
        print_row(name, &f);
        if warm {
            println!(
                "  warm-up: {} reads, {} passes, {} objects moved; placement converging \
                 (period: hops and bytes per task in it, objects moved so far):",
                got.warm, got.passes, got.moved
            );
            for p in &got.converging {
                println!(
                    "    period {}: {:.2} hops, {:.0} bytes, {} moved",
                    p.period, p.hops, p.bytes, p.moved
                );
            }
        }
        if policy == "move" && warm {
            // Mode 3's run, as the loopback plot: each warm-up period at its end (the warm-up's
            // schedule, VM clock), then the measured reads that followed it.
            let at = |period: u64| ((period + 1) * args.place_ms) as f64 / 1e3;
            series.extend(got.converging.iter().map(|p| {
                let figures = Figures {
                    hops: p.hops,
                    bytes: p.bytes,
                    ..Figures::default()
                };
                (at(p.period), figures)
            }));
            series.push((warmup_ms as f64 / 1e3 + got.span_us as f64 / 1e6, f));
        }
        rows.push(f);
    }
    if let [shipping, moving, placed, _] = rows[..] {
        verdicts(&params, &shipping, &moving, &placed);
        let png = args.out.join("agent-bench-vms.png");
        let title =
            "agent-bench --vms: the timeline on 3 bench-unikernel VMs while placement converges";
        draw(&png, title, &series, &shipping, &moving)?;
        println!("wrote {}", png.display());
    }
    Ok(())
}

/// Hops and bytes per request in each window while placement converges, against the random
/// placement (mode 2) and data shipping (mode 1) levels.
fn draw(
    png: &std::path::Path,
    title: &str,
    series: &[(f64, Figures)],
    shipping: &Figures,
    moving: &Figures,
) -> Result<(), String> {
    let line = |name: &str, value: &dyn Fn(&Figures) -> f64| Line {
        name: name.into(),
        points: series.iter().map(|(t, f)| (*t, Some(value(f)))).collect(),
    };
    let flat = |name: &str, value: f64| Line {
        name: name.into(),
        points: series.iter().map(|(t, _)| (*t, Some(value))).collect(),
    };
    let panels = [
        Panel {
            y_label: "hops per request".into(),
            lines: vec![
                line("continuations, placement converging", &|f| f.hops),
                flat("continuations, random placement (mode 2)", moving.hops),
            ],
        },
        Panel {
            y_label: "bytes per request".into(),
            lines: vec![
                line("continuations, placement converging", &|f| f.bytes),
                flat("data shipping (mode 1)", shipping.bytes),
            ],
        },
    ];
    plot::draw(png, title, &panels, &[]).map_err(|e| e.to_string())
}
