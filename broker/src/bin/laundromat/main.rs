//! `laundromat`: the tenant's client. Keys, account, and tokens bought from the broker; VMs
//! injected into hosts on those tokens ([`vm`]) and paid for link by link ([`pay`]).

mod console;
mod disk;
mod follow;
mod migrate;
mod migrate_progress;
mod pay;
mod vm;

mod hosts;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use broker::client::{new_idempotency_key, Client};
use broker::clock::unix_now;
use broker::keys;
use clap::{Parser, Subcommand};
use laundromat_api::hostd::DiskImage;
use laundromat_api::paths;
use laundromat_api::types::{BuyToken, Purchase, Statement, TokenState};
use serde::{Deserialize, Serialize};
use token::{image_digest_with_disk, ImageDigest, Link, Payer, SignedToken, TokenId};

#[derive(Parser)]
#[command(
    name = "laundromat",
    version,
    about = "The Laundromat tenant's client: keys, account, boot tokens, and the VMs they run"
)]
struct Cli {
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Where keys and token state live.
    #[arg(long, global = true, env = "LAUNDROMAT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// The broker's URL.
    #[arg(
        long,
        global = true,
        env = "LAUNDROMAT_BROKER",
        default_value = "http://127.0.0.1:7300"
    )]
    broker: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the tenant key (tenant.key, mode 0600) and print its public half for the operator.
    Keygen,
    /// The tenant's account.
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// Boot tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The host directory: every host's advertised price and free capacity, cheapest first.
    Hosts,
    /// VMs on hosts: inject, status, console, stop.
    Vm {
        #[command(subcommand)]
        action: vm::VmAction,
    },
    /// Pay a VM's next link; with --follow, keep it paid one link ahead, following it to
    /// whichever host runs it after a migration.
    Pay(pay::PayArgs),
}

#[derive(Subcommand)]
enum AccountAction {
    /// Balance and the newest transfers.
    Show,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Build a hash chain locally and buy a token for it; n × price goes into escrow.
    Buy(BuyArgs),
    /// The broker's view of a token (holder, redeemed, escrow) and the local payer's.
    Show {
        /// The token id, hex.
        token_id: String,
    },
}

#[derive(clap::Args)]
struct BuyArgs {
    /// The image: its digest (64 hex digits), or a kernel file to digest with --initrd
    /// and --cmdline.
    #[arg(long)]
    image: String,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "")]
    cmdline: String,
    #[command(flatten)]
    disk: disk::DiskArgs,
    #[arg(long)]
    vcpus: u32,
    /// Memory in MiB.
    #[arg(long)]
    mem: u32,
    /// Price per link, in the smallest currency unit.
    #[arg(long)]
    price: u64,
    /// Run time one link buys: e.g. 10s, 500ms, 1m.
    #[arg(long, value_parser = parse_duration_ms)]
    period: u64,
    /// Chain length n.
    #[arg(long)]
    links: u64,
    /// How long the token stays valid: e.g. 24h.
    #[arg(long, value_parser = parse_duration_ms, default_value = "24h")]
    valid_for: u64,
    /// The request's idempotency key; a fresh one by default.
    #[arg(long)]
    idempotency_key: Option<String>,
}

/// Milliseconds from `500ms`, `10s`, `5m`, `2h` or a bare number of seconds.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m, h or d")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// What the client keeps per token: the signed token and the payer's small state (its
/// pebbles are unrevealed links: as secret as the seed, hence mode 0600).
#[derive(Serialize, Deserialize)]
struct TokenFile {
    token: Option<SignedToken>,
    payer: Payer,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("no configuration directory: set --config-dir, LAUNDROMAT_CONFIG_DIR or HOME")]
    NoConfigDir,
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Client(#[from] broker::client::ClientError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0:?} is not a token id (32 hex digits)")]
    TokenId(String),
    #[error("cannot build the hash chain")]
    Chain(#[source] token::chain::payer::PayerError),
    #[error(transparent)]
    Hostd(laundromat_api::hostd_client::ClientError),
    #[error("{0:?} is not a VM id")]
    VmId(String),
    #[error("no --host given, and VM {0} is not one this client injected")]
    UnknownVm(String),
    #[error("{} holds no bought token (its purchase did not complete)", .0.display())]
    NotBought(PathBuf),
    #[error("the kernel, initrd, command line and disk do not match the token's image digest")]
    WrongImage,
    #[error("--image is a digest, which already binds any disk: --disk goes with a kernel file")]
    DiskWithDigest,
    #[error("none of the broker's {hosts} hosts fits: a fresh advert with {memory_mib} MiB and {vcpus} vCPUs free at no more than {price} per link (see `laundromat hosts`)")]
    NoHostFits {
        hosts: usize,
        memory_mib: u64,
        vcpus: u64,
        price: u64,
    },
    #[error("VM {vm} runs token {vm_token}, but the token file is for token {file_token}")]
    OtherToken {
        vm: String,
        vm_token: String,
        file_token: String,
    },
    #[error("another `laundromat pay` is paying from {}", .0.display())]
    ChainBusy(PathBuf),
    #[error("every link of the token's chain has been paid")]
    ChainSpent,
    #[error(
        "host {0} runs the VM now, but the broker's directory holds no URL for it (it has not \
         advertised)"
    )]
    NoHostUrl(String),
    #[error("other payers keep paying this VM's links first")]
    PaymentRace,
    #[error("the host's console stream broke off before the VM ended")]
    ConsoleStreamBroke,
    #[error("the host's answer ended before the migration's result")]
    MigrationUnfinished,
    #[error(
        "the migration ended {0}, not completed; `laundromat vm status` shows where the VM runs"
    )]
    MigrationFailed(String),
}

fn config_dir(cli: &Cli) -> Result<PathBuf, CliError> {
    if let Some(dir) = &cli.config_dir {
        return Ok(dir.clone());
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("laundromat"));
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".config/laundromat"))
        .ok_or(CliError::NoConfigDir)
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

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let error = |source| CliError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(error)?;
    }
    // Each process its own temporary file: two commands remembering the same VM at once
    // (`vm migrate` and `pay --follow` after a move) must not rename each other's away.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(error)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(error)?;
    fs::rename(&tmp, path).map_err(error)?;
    // The rename is durable only once the directory is.
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    fs::File::open(parent.unwrap_or(Path::new(".")))
        .and_then(|dir| dir.sync_all())
        .map_err(error)
}

fn image(args: &BuyArgs) -> Result<ImageDigest, CliError> {
    if let Ok(digest) = args.image.parse::<ImageDigest>() {
        if args.disk.disk.is_some() {
            return Err(CliError::DiskWithDigest);
        }
        return Ok(digest);
    }
    let read = |path: &Path| {
        fs::read(path).map_err(|source| CliError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let kernel = read(Path::new(&args.image))?;
    let initrd = args.initrd.as_deref().map(read).transpose()?;
    let disk = args.disk.image()?;
    Ok(image_digest_with_disk(
        &kernel,
        initrd.as_deref(),
        &args.cmdline,
        disk.as_ref().map(DiskImage::part),
    ))
}

async fn buy(cli: &Cli, dir: &Path, args: &BuyArgs) -> Result<(), CliError> {
    let client = Client::new(&cli.broker, keys::load(&dir.join("tenant.key"))?);
    let digest = image(args)?;
    let token_id = TokenId::random();
    let payer = Payer::new(token_id, &Link::random_seed(), args.links).map_err(CliError::Chain)?;
    let now = unix_now();
    let body = BuyToken {
        token_id,
        chain_root: payer.root(),
        chain_length: args.links,
        price_per_link: args.price,
        link_period_ms: args.period,
        image_digest: digest,
        vcpus: args.vcpus,
        memory_mib: args.mem,
        not_before: now.saturating_sub(60),
        expiry: now.saturating_add(args.valid_for / 1000),
    };
    // The payer is saved before the purchase: a token bought with a lost chain could only
    // be refunded.
    let path = dir.join("tokens").join(format!("{token_id}.json"));
    let mut file = TokenFile { token: None, payer };
    let encode = |file: &TokenFile| serde_json::to_vec_pretty(file).unwrap_or_default();
    write_private(&path, &encode(&file))?;
    let idem = args
        .idempotency_key
        .clone()
        .unwrap_or_else(new_idempotency_key);
    let purchase: Purchase = match client.post(paths::TOKENS, &body, &idem).await {
        Ok(purchase) => purchase,
        Err(error) => {
            if error.status().is_some_and(|status| status < 500) {
                let _ = fs::remove_file(&path);
            }
            return Err(error.into());
        }
    };
    file.token = Some(purchase.token.clone());
    write_private(&path, &encode(&file))?;
    #[derive(Serialize)]
    struct Bought<'a> {
        token_id: TokenId,
        escrow: u64,
        balance: u64,
        token: &'a SignedToken,
        state_file: &'a Path,
    }
    let bought = Bought {
        token_id,
        escrow: purchase.escrow,
        balance: purchase.balance,
        token: &purchase.token,
        state_file: &path,
    };
    print(cli.json, &bought, |b| {
        format!(
            "token {}\nescrow {} (balance now {})\nstate {}",
            b.token_id,
            b.escrow,
            b.balance,
            b.state_file.display()
        )
    });
    Ok(())
}

async fn show_token(cli: &Cli, dir: &Path, id: &str) -> Result<(), CliError> {
    let token_id: TokenId = id.parse().map_err(|_| CliError::TokenId(id.to_owned()))?;
    let client = Client::new(&cli.broker, token::SigningKey::from_bytes(&[0; 32]));
    let state: TokenState = client.get(&paths::token(&token_id)).await?;
    let path = dir.join("tokens").join(format!("{token_id}.json"));
    let local = match fs::read(&path) {
        Ok(bytes) => Some(
            serde_json::from_slice::<TokenFile>(&bytes).map_err(|source| CliError::Corrupt {
                path: path.clone(),
                source,
            })?,
        ),
        Err(_) => None,
    };
    let next_link = local.as_ref().map(|file| file.payer.next_index());
    #[derive(Serialize)]
    struct Shown<'a> {
        #[serde(flatten)]
        broker: &'a TokenState,
        next_link: Option<u64>,
    }
    print(
        cli.json,
        &Shown {
            broker: &state,
            next_link,
        },
        |s| {
            let b = s.broker;
            let holder = b.holder.map_or("none".to_owned(), |h| h.to_string());
            let mut text = format!(
            "token {}\nholder {holder}\nredeemed {} of {} links at {}\nescrow left {}{}\nexpiry {}",
            b.token_id, b.highest_redeemed, b.chain_length, b.price_per_link, b.escrow,
            if b.refunded { " (refunded)" } else { "" },
            b.expiry
        );
            if let Some(next) = s.next_link {
                text.push_str(&format!("\nnext link to pay {next}"));
            }
            text
        },
    );
    Ok(())
}

async fn run(cli: &Cli) -> Result<(), CliError> {
    let dir = config_dir(cli)?;
    match &cli.command {
        Command::Keygen => {
            let key = keys::create(&dir.join("tenant.key"))?;
            let public = token::hex::encode(key.verifying_key().as_bytes());
            print(
                cli.json,
                &serde_json::json!({ "public_key": public }),
                |_| public.clone(),
            );
        }
        Command::Account {
            action: AccountAction::Show,
        } => {
            let client = Client::new(&cli.broker, keys::load(&dir.join("tenant.key"))?);
            let statement: Statement = client.get_signed(paths::STATEMENT).await?;
            print(cli.json, &statement, |s| {
                let mut text = format!("balance {}", s.balance);
                for t in &s.transfers {
                    text.push_str(&format!(
                        "\n{}  {:>12}  {} -> {}  {}",
                        t.at, t.amount, t.from, t.to, t.kind
                    ));
                }
                text
            });
        }
        Command::Token {
            action: TokenAction::Buy(args),
        } => buy(cli, &dir, args).await?,
        Command::Token {
            action: TokenAction::Show { token_id },
        } => show_token(cli, &dir, token_id).await?,
        Command::Hosts => hosts::run(&cli.broker, cli.json).await?,
        Command::Vm { action } => vm::run(cli.json, &dir, &cli.broker, action).await?,
        Command::Pay(args) => pay::run(cli.json, &dir, &cli.broker, args).await?,
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("laundromat: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("laundromat: {error}");
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

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("10"), Ok(10_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert!(parse_duration_ms("3x").is_err());
        assert!(parse_duration_ms("s").is_err());
    }
}
