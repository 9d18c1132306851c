//! `broker`: serve the broker, check its ledger, and the operator's commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use broker::client::{new_idempotency_key, Client};
use broker::clock::Clock;
use broker::db::Db;
use broker::service::{key_id_of, Broker, Config};
use broker::{check, keys, server};
use clap::{Args, Parser, Subcommand};
use laundromat_api::paths;
use laundromat_api::types::{Account, Host, NewTenant, Topup};
use serde::Serialize;
use token::{ClusterId, HostId, VerifyingKey};

#[derive(Parser)]
#[command(
    name = "broker",
    version,
    about = "Laundromat's broker: accounts, tokens, leases, redemption and refunds on a double-entry ledger"
)]
struct Cli {
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker service.
    Serve(ServeArgs),
    /// Verify every ledger invariant from the stored rows; exits 1 naming each violation.
    Check {
        /// sqlite://PATH or postgres://...
        #[arg(long)]
        db: String,
    },
    /// Make an ed25519 key (for the operator) and print its public half.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Register tenants (operator).
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Register hosts (operator).
    Host {
        #[command(subcommand)]
        action: HostAction,
    },
    /// Credit a tenant's balance from the operator's mint (operator).
    Topup {
        #[command(flatten)]
        operator: OperatorArgs,
        /// The tenant's public key, hex.
        tenant_key: String,
        /// In the smallest currency unit.
        amount: u64,
    },
}

#[derive(Subcommand)]
enum TenantAction {
    /// Register a tenant by its public key.
    Add {
        #[command(flatten)]
        operator: OperatorArgs,
        /// The tenant's public key, hex (`laundromat keygen` prints it).
        tenant_key: String,
    },
}

#[derive(Subcommand)]
enum HostAction {
    /// Register a host: its id, its ed25519 key and its cluster.
    Add {
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        host_id: String,
        #[arg(long)]
        host_key: String,
        #[arg(long)]
        cluster: String,
    },
}

#[derive(Args)]
struct OperatorArgs {
    /// The broker's URL.
    #[arg(
        long,
        env = "LAUNDROMAT_BROKER",
        default_value = "http://127.0.0.1:7300"
    )]
    broker: String,
    /// The operator's secret key file (made by `broker keygen`).
    #[arg(long, env = "BROKER_OPERATOR_SECRET")]
    operator_secret: PathBuf,
    /// The request's idempotency key; a fresh random one by default. Reuse it to retry.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// sqlite://PATH or postgres://...; default: an SQLite file in the data directory.
    #[arg(long)]
    db: Option<String>,
    /// Holds the broker's signing key (made on first start, mode 0600) and the default
    /// database.
    #[arg(long, env = "BROKER_DATA_DIR", default_value = "broker-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7300")]
    listen: String,
    /// The operator's public key, hex: the only key allowed to register and top up.
    #[arg(long)]
    operator_key: String,
    /// The cluster this broker sells tokens for (16 bytes, hex).
    #[arg(long)]
    cluster: String,
    /// Seconds after a token's expiry before its unredeemed escrow is refunded.
    #[arg(long, default_value_t = 3600)]
    refund_grace_secs: u64,
    /// How often expired tokens are swept for refunds, in seconds.
    #[arg(long, default_value_t = 60)]
    refund_interval_secs: u64,
    /// The most links a claim may lie above the lease's last verified link.
    #[arg(long, default_value_t = laundromat_api::claims::MAX_CLAIM_DISTANCE)]
    max_claim_distance: u64,
    /// Sell tokens at a price of 0.
    #[arg(long)]
    allow_free_tokens: bool,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{what} {text:?} is not valid hex of the right length")]
    Hex { what: &'static str, text: String },
    #[error("{0} is not a valid ed25519 public key")]
    Key(String),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Db(#[from] broker::db::DbError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error(transparent)]
    Client(#[from] broker::client::ClientError),
    #[error(transparent)]
    Service(#[from] broker::error::ServiceError),
    #[error("cannot create the data directory")]
    DataDir(#[source] std::io::Error),
    #[error("the ledger violates {0} invariant(s)")]
    Violations(usize),
}

fn parse_hex<T: std::str::FromStr>(text: &str, what: &'static str) -> Result<T, CliError> {
    text.parse().map_err(|_| CliError::Hex {
        what,
        text: text.to_owned(),
    })
}

fn parse_key(text: &str) -> Result<VerifyingKey, CliError> {
    let bytes: [u8; 32] =
        token::hex::decode_array(text).map_err(|_| CliError::Key(text.to_owned()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| CliError::Key(text.to_owned()))
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", text(value));
    }
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&args.data_dir).map_err(CliError::DataDir)?;
    let signing_key = keys::load_or_create(&args.data_dir.join("broker.key"))?;
    let url = args
        .db
        .clone()
        .unwrap_or_else(|| Db::default_url(&args.data_dir));
    let db = Db::open(&url, 16).await?;
    let config = Config {
        cluster_id: parse_hex::<ClusterId>(&args.cluster, "cluster id")?,
        key_id: key_id_of(&signing_key.verifying_key()),
        signing_key,
        operator_key: parse_key(&args.operator_key)?,
        max_claim_distance: args.max_claim_distance.max(1),
        refund_grace_secs: args.refund_grace_secs,
        allow_free_tokens: args.allow_free_tokens,
    };
    tracing::info!(backend = db.backend().name(), cluster = %config.cluster_id, key_id = %config.key_id, "ledger open");
    let broker = Arc::new(Broker::new(db, config, Clock::default()));
    let running = server::start(
        broker,
        &args.listen,
        Duration::from_secs(args.refund_interval_secs.max(1)),
    )
    .await?;
    let stop = running.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    running.wait().await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn operator_client(args: &OperatorArgs) -> Result<(Client, String), CliError> {
    let key = keys::load(&args.operator_secret)?;
    let idempotency_key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(new_idempotency_key);
    Ok((Client::new(&args.broker, key), idempotency_key))
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let json = cli.json;
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Check { db } => {
            let db = Db::open(&db, 2).await?;
            let report = check::check(db.pool()).await?;
            print(json, &report, |r| {
                let mut text = format!(
                    "{} accounts, {} transfers, {} tokens, {} issued",
                    r.accounts, r.transfers, r.tokens, r.issued
                );
                for violation in &r.violations {
                    text.push_str(&format!("\nVIOLATION {violation}"));
                }
                if r.violations.is_empty() {
                    text.push_str("\nall invariants hold");
                }
                text
            });
            match report.violations.len() {
                0 => Ok(()),
                n => Err(CliError::Violations(n)),
            }
        }
        Command::Keygen { out } => {
            let key = keys::create(&out)?;
            let public = token::hex::encode(key.verifying_key().as_bytes());
            print(
                json,
                &serde_json::json!({ "public_key": public, "file": out }),
                |_| public.clone(),
            );
            Ok(())
        }
        Command::Tenant {
            action:
                TenantAction::Add {
                    operator,
                    tenant_key,
                },
        } => {
            let (client, idem) = operator_client(&operator)?;
            let body = NewTenant {
                tenant_key: parse_key(&tenant_key)?,
            };
            let account: Account = client.post(paths::TENANTS, &body, &idem).await?;
            print(json, &account, |a| {
                format!("tenant {} registered, balance {}", tenant_key, a.balance)
            });
            Ok(())
        }
        Command::Host {
            action:
                HostAction::Add {
                    operator,
                    host_id,
                    host_key,
                    cluster,
                },
        } => {
            let (client, idem) = operator_client(&operator)?;
            let body = Host {
                host_id: parse_hex::<HostId>(&host_id, "host id")?,
                host_key: parse_key(&host_key)?,
                cluster_id: parse_hex::<ClusterId>(&cluster, "cluster id")?,
            };
            let host: Host = client.post(paths::HOSTS, &body, &idem).await?;
            print(json, &host, |h| {
                format!("host {} registered in cluster {}", h.host_id, h.cluster_id)
            });
            Ok(())
        }
        Command::Topup {
            operator,
            tenant_key,
            amount,
        } => {
            let (client, idem) = operator_client(&operator)?;
            let body = Topup {
                tenant_key: parse_key(&tenant_key)?,
                amount,
            };
            let account: Account = client.post(paths::TOPUPS, &body, &idem).await?;
            print(json, &account, |a| format!("balance {}", a.balance));
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BROKER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("broker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("broker: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
