//! `broker-bench`: token purchases and redemptions per second, with p50/p99 latency, on
//! SQLite and on PostgreSQL, each next to the raw rate of durable single-row transactions on
//! the same database with the same concurrency: the physical limit. Redemptions are measured
//! one claim per request, and in batches (`--batch`, one request settling many VMs of a
//! host). Target: redeemed claims per second at least half the raw rate. Prints the tables
//! and a verdict for each kind of redemption on each backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::client::{new_idempotency_key, Client};
use broker::clock::Clock;
use broker::db::Db;
use broker::scratch_pg::Cluster;
use broker::server;
use broker::service::{key_id_of, Broker, Config};
use clap::Parser;
use laundromat_api::paths;
use laundromat_api::types::{
    Account, BatchRedeemed, BuyToken, ClaimOutcome, Empty, Host, NewTenant, Purchase, Redeem,
    RedeemBatch, Redeemed, TokenState, Topup,
};
use token::{Claim, ClusterId, HostId, ImageDigest, Link, LinkHasher, SigningKey, TokenId};

#[derive(Parser)]
#[command(
    name = "broker-bench",
    about = "Broker throughput and latency on SQLite and PostgreSQL, next to the raw durable transaction rate"
)]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Purchases per client.
    #[arg(long, default_value_t = 50)]
    purchases: usize,
    /// Redemptions per client.
    #[arg(long, default_value_t = 150)]
    redemptions: usize,
    /// Raw transactions per client.
    #[arg(long, default_value_t = 150)]
    raw: usize,
    /// Claims per batched redemption request (a host settling that many VMs at once);
    /// 0 leaves batches out.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Batched redemption requests per client.
    #[arg(long, default_value_t = 40)]
    batch_requests: usize,
    /// Only this backend: sqlite or postgres.
    #[arg(long)]
    only: Option<String>,
}

const CLUSTER: ClusterId = ClusterId([0xbe; 16]);

struct Figures {
    /// Requests per second.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// What one backend measured.
struct Measured {
    raw: Figures,
    purchases: Figures,
    redemptions: Figures,
    /// Batched redemptions and their batch size.
    batched: Option<(usize, Figures)>,
}

fn figures(mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Figures {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Durable single-row transactions through the broker's own write path, each client on a
/// connection of its own as each of the broker's writers is (see `Db::begin_on`).
async fn raw_rate(
    db: Arc<Db>,
    clients: usize,
    per_client: usize,
) -> Result<Figures, Box<dyn std::error::Error>> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_raw (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
        .execute(db.pool())
        .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut conn = db.pool().acquire().await?;
            for i in 0..per_client {
                let at = Instant::now();
                let mut write = db.begin_on(&mut conn).await?;
                sqlx::query("INSERT INTO bench_raw (id, v) VALUES ($1, $2)")
                    .bind((c * 1_000_000 + i) as i64)
                    .bind(i as i64)
                    .execute(&mut *write.tx)
                    .await?;
                write.tx.commit().await?;
                latencies.push(at.elapsed());
            }
            Ok::<_, sqlx::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(figures(all, started.elapsed()))
}

fn buy_request(token_id: TokenId, root: Link, length: u64, now: u64) -> BuyToken {
    BuyToken {
        token_id,
        chain_root: root,
        chain_length: length,
        price_per_link: 1,
        link_period_ms: 1000,
        image_digest: ImageDigest([1; 32]),
        vcpus: 1,
        memory_mib: 64,
        not_before: now - 10,
        expiry: now + 3600,
    }
}

/// Buys a token of `length` links for `tenant`, and has `host` take its lease; returns the
/// token id and its links, root first.
async fn leased_chain(
    tenant: &Client,
    host: &Client,
    length: u64,
) -> Result<(TokenId, Vec<Link>), broker::client::ClientError> {
    let id = TokenId::random();
    let seed = Link::random_seed();
    let hasher = LinkHasher::new(&id);
    let mut links = vec![seed; length as usize + 1];
    for i in (0..length).rev() {
        links[i as usize] = hasher.link(i, &links[i as usize + 1]);
    }
    let _: Purchase = tenant
        .post(
            paths::TOKENS,
            &buy_request(id, links[0], length, broker::clock::unix_now()),
            &new_idempotency_key(),
        )
        .await?;
    let _: TokenState = host
        .post(
            &paths::lease(&id, "acquire"),
            &Empty {},
            &new_idempotency_key(),
        )
        .await?;
    Ok((id, links))
}

/// Each client is a host settling `args.batch` VMs at once: its requests each carry one
/// claim, one link further, for every one of its tokens. Latencies are per request.
async fn batched_redemptions(
    tenants: &[Client],
    host: &Client,
    host_id: HostId,
    args: &Args,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let length = args.batch_requests as u64;
    let mut fleets = Vec::new();
    for tenant in tenants {
        let mut fleet = Vec::new();
        for _ in 0..args.batch {
            fleet.push(leased_chain(tenant, host, length).await?);
        }
        fleets.push(fleet);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for fleet in fleets {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for index in 1..=length {
                let claims = fleet
                    .iter()
                    .map(|(id, links)| {
                        Claim {
                            token_id: *id,
                            host_id,
                            index,
                            link: links[index as usize],
                        }
                        .sign(host.key())
                    })
                    .collect();
                let at = Instant::now();
                let answer: BatchRedeemed = host
                    .post(
                        paths::BATCH_REDEMPTIONS,
                        &RedeemBatch { claims },
                        &new_idempotency_key(),
                    )
                    .await?;
                latencies.push(at.elapsed());
                let credited = answer
                    .results
                    .iter()
                    .filter(|r| matches!(r.outcome, ClaimOutcome::Credited { credit: 1, .. }))
                    .count();
                if credited != fleet.len() {
                    return Err(broker::client::ClientError::BadAnswer {
                        status: 200,
                        detail: format!("{credited} of {} claims credited", fleet.len()),
                    });
                }
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(figures(all, started.elapsed()))
}

async fn run_backend(
    name: &str,
    url: String,
    args: &Args,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let db = Db::open(&url, 32).await?;
    let signing_key = SigningKey::from_bytes(&[0xb0; 32]);
    let operator = SigningKey::from_bytes(&[0x0b; 32]);
    let config = Config {
        cluster_id: CLUSTER,
        key_id: key_id_of(&signing_key.verifying_key()),
        signing_key,
        operator_key: operator.verifying_key(),
        max_claim_distance: laundromat_api::claims::MAX_CLAIM_DISTANCE,
        refund_grace_secs: 3600,
        allow_free_tokens: false,
    };
    let broker = Arc::new(Broker::new(db, config, Clock::default()));
    let running = server::start(broker.clone(), "127.0.0.1:0", Duration::from_secs(3600)).await?;
    let base = format!("http://{}", running.addr);
    let admin = Client::new(&base, operator);
    let host_key = SigningKey::from_bytes(&[0x77; 32]);
    let host_id = HostId([0x77; 16]);
    let _: Host = admin
        .post(
            paths::HOSTS,
            &Host {
                host_id,
                host_key: host_key.verifying_key(),
                cluster_id: CLUSTER,
            },
            &new_idempotency_key(),
        )
        .await?;
    let mut tenants = Vec::new();
    for c in 0..args.clients {
        let tenant = Client::new(&base, SigningKey::from_bytes(&[0x10 + c as u8; 32]));
        let tenant_key = tenant.key().verifying_key();
        let _: Account = admin
            .post(
                paths::TENANTS,
                &NewTenant { tenant_key },
                &new_idempotency_key(),
            )
            .await?;
        let _: Account = admin
            .post(
                paths::TOPUPS,
                &Topup {
                    tenant_key,
                    amount: 1 << 40,
                },
                &new_idempotency_key(),
            )
            .await?;
        tenants.push(tenant);
    }
    eprintln!("{name}: purchases");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for tenant in &tenants {
        let (tenant, count) = (tenant.clone(), args.purchases);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for _ in 0..count {
                let id = TokenId::random();
                let request = buy_request(id, Link([3; 32]), 1000, broker::clock::unix_now());
                let at = Instant::now();
                let _: Purchase = tenant
                    .post(paths::TOKENS, &request, &new_idempotency_key())
                    .await?;
                latencies.push(at.elapsed());
            }
            Ok::<_, broker::client::ClientError>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let purchases = figures(all, started.elapsed());

    eprintln!("{name}: redemptions");
    let host = Client::new(&base, host_key.clone());
    let length = args.redemptions as u64;
    let mut chains = Vec::new();
    for tenant in &tenants {
        chains.push(leased_chain(tenant, &host, length).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, links) in chains {
        let (host, host_key) = (host.clone(), host_key.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for (index, link) in links.iter().enumerate().skip(1) {
                let claim = Claim {
                    token_id: id,
                    host_id,
                    index: index as u64,
                    link: *link,
                }
                .sign(&host_key);
                let at = Instant::now();
                let redeemed: Redeemed = host
                    .post(
                        paths::REDEMPTIONS,
                        &Redeem { claim },
                        &new_idempotency_key(),
                    )
                    .await?;
                latencies.push(at.elapsed());
                if redeemed.credit != 1 {
                    return Err(broker::client::ClientError::BadAnswer {
                        status: 200,
                        detail: format!("credit {}", redeemed.credit),
                    });
                }
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let redemptions = figures(all, started.elapsed());

    let batched = if args.batch > 0 {
        eprintln!("{name}: batched redemptions of {}", args.batch);
        let figures = batched_redemptions(&tenants, &host, host_id, args).await?;
        Some((args.batch, figures))
    } else {
        None
    };

    eprintln!("{name}: raw transactions");
    let raw = raw_rate(Arc::new(Db::open(&url, 32).await?), args.clients, args.raw).await?;
    let report = broker::check::check(broker.db.pool()).await?;
    if !report.violations.is_empty() {
        return Err(format!(
            "the ledger is inconsistent after the run: {:?}",
            report.violations
        )
        .into());
    }
    running.shutdown().await?;
    Ok(Measured {
        raw,
        purchases,
        redemptions,
        batched,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // Off unless asked for: BENCH_LOG=broker=trace shows each batch's size and timings.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = std::env::temp_dir().join(format!("broker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    if args.only.as_deref().is_none_or(|b| b == "sqlite") {
        rows.push((
            "sqlite",
            run_backend("sqlite", Db::default_url(&dir), &args).await?,
        ));
    }
    let _cluster;
    if args.only.as_deref().is_none_or(|b| b == "postgres") {
        let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
        let url = cluster.fresh_database().await?;
        _cluster = cluster;
        rows.push(("postgres", run_backend("postgres", url, &args).await?));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{} concurrent clients; every commit durable (SQLite WAL synchronous=FULL, PostgreSQL fsync on)", args.clients);
    println!(
        "{:<9} {:>9} {:>12} {:>7} {:>7}",
        "backend", "raw tx/s", "purchases/s", "p50 ms", "p99 ms"
    );
    for (name, m) in &rows {
        println!(
            "{name:<9} {:>9.0} {:>12.0} {:>7.2} {:>7.2}",
            m.raw.rate, m.purchases.rate, m.purchases.p50_ms, m.purchases.p99_ms
        );
    }
    println!();
    println!(
        "{:<9} {:<22} {:>9} {:>11} {:>7} {:>7} {:>11}",
        "backend", "redemptions", "claims/s", "requests/s", "p50 ms", "p99 ms", "claims/raw"
    );
    let mut verdicts = Vec::new();
    for (name, m) in &rows {
        let mut kinds = vec![("single claim".to_owned(), 1, &m.redemptions)];
        if let Some((size, batched)) = &m.batched {
            kinds.push((format!("batch of {size} claims"), *size, batched));
        }
        for (label, size, f) in kinds {
            let claims = f.rate * size as f64;
            let ratio = claims / m.raw.rate;
            println!(
                "{name:<9} {label:<22} {claims:>9.0} {:>11.0} {:>7.2} {:>7.2} {ratio:>11.2}",
                f.rate, f.p50_ms, f.p99_ms
            );
            let verdict = if ratio >= 0.5 { "MET" } else { "MISSED" };
            verdicts.push(format!(
                "target {name}, {label}: redemptions (claims/s) >= 0.5 x raw durable transaction rate: {ratio:.2} x -> {verdict}"
            ));
        }
    }
    for verdict in verdicts {
        println!("{verdict}");
    }
    Ok(())
}
