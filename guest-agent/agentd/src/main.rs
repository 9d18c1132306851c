//! `guest-agentd`: run a guest agent, or talk to one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use guest_agent::{AgentId, FutureId, Policy};
use guest_agentd::api::{Client, Request};
use guest_agentd::config::Config;

#[derive(Parser)]
#[command(
    version,
    about = "The Laundromat guest agent: continuations that move to their data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent described by a config file (JSON: id, listen, data_dir, peers, timeline).
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Submit a timeline read; prints the future id to ask `result` for.
    Timeline {
        /// The agent's client address: a guest-agentd, or a bench VM running workload=agent.
        #[arg(long, value_name = "IP:PORT")]
        to: SocketAddr,
        /// Whose timeline (a user id of the data set).
        user: u32,
        /// How many posts: the newest of everyone USER follows.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Idempotency key: resubmitting with the same key returns the same future.
        #[arg(long)]
        key: u64,
    },
    /// Publish post POST (a unique id) by USER.
    Publish {
        /// The agent's client address: a guest-agentd, or a bench VM running workload=agent.
        #[arg(long, value_name = "IP:PORT")]
        to: SocketAddr,
        /// The author (a user id of the data set).
        user: u32,
        /// The post's id, unique across the data set.
        post: u64,
        /// Idempotency key: resubmitting with the same key publishes once.
        #[arg(long)]
        key: u64,
    },
    /// Read the post ids of USER's feed (oldest first); prints the future id to ask `result` for.
    Feed {
        /// The agent's client address: a guest-agentd, or a bench VM running workload=agent.
        #[arg(long, value_name = "IP:PORT")]
        to: SocketAddr,
        /// Whose feed (a user id of the data set).
        user: u32,
        /// Idempotency key: resubmitting with the same key returns the same future.
        #[arg(long)]
        key: u64,
    },
    /// Read a task's result at its origin agent (FUTURE as ORIGIN.SEQ).
    Result {
        /// The agent's client address: a guest-agentd, or a bench VM running workload=agent.
        #[arg(long, value_name = "IP:PORT")]
        to: SocketAddr,
        /// The future id a submit printed, as ORIGIN.SEQ.
        future: String,
    },
    /// Print the agent's counters.
    Stats {
        /// The agent's client address: a guest-agentd, or a bench VM running workload=agent.
        #[arg(long, value_name = "IP:PORT")]
        to: SocketAddr,
    },
    /// Set how reads of remote objects are served: move, fetch or ship-or-fetch.
    Policy {
        /// The agent's client address: a guest-agentd, or a bench VM running workload=agent.
        #[arg(long, value_name = "IP:PORT")]
        to: SocketAddr,
        /// move, fetch or ship-or-fetch.
        policy: String,
    },
    /// Run one placement pass on the agent.
    Place {
        /// The agent's client address: a guest-agentd, or a bench VM running workload=agent.
        #[arg(long, value_name = "IP:PORT")]
        to: SocketAddr,
    },
}

fn parse_future(text: &str) -> Option<FutureId> {
    let (origin, seq) = text.split_once('.')?;
    Some(FutureId {
        origin: AgentId(origin.parse().ok()?),
        seq: seq.parse().ok()?,
    })
}

fn parse_policy(text: &str) -> Option<Policy> {
    match text {
        "move" => Some(Policy::Move),
        "fetch" => Some(Policy::Fetch),
        "ship-or-fetch" => Some(Policy::ShipOrFetch),
        _ => None,
    }
}

fn call(to: SocketAddr, request: Request) -> Result<(), String> {
    let mut client = Client::connect(to, Duration::from_secs(10)).map_err(|e| error_chain(&e))?;
    let response = client.call(&request).map_err(|e| error_chain(&e))?;
    let text = serde_json::to_string(&response).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("AGENT_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let outcome = match Cli::parse().command {
        Command::Run { config } => Config::load(&config)
            .map_err(|e| error_chain(&e))
            .and_then(|config| guest_agentd::node::run(config).map_err(|e| error_chain(&e))),
        Command::Timeline {
            to,
            user,
            limit,
            key,
        } => call(to, Request::Timeline { user, limit, key }),
        Command::Publish {
            to,
            user,
            post,
            key,
        } => call(to, Request::Publish { user, post, key }),
        Command::Feed { to, user, key } => call(to, Request::Feed { user, key }),
        Command::Result { to, future } => match parse_future(&future) {
            Some(future) => call(to, Request::Result { future }),
            None => Err(format!("`{future}` is not a future id (ORIGIN.SEQ)")),
        },
        Command::Stats { to } => call(to, Request::Stats {}),
        Command::Policy { to, policy } => match parse_policy(&policy) {
            Some(policy) => call(to, Request::SetPolicy { policy }),
            None => Err(format!(
                "`{policy}` is not a policy (move, fetch, ship-or-fetch)"
            )),
        },
        Command::Place { to } => call(to, Request::Place {}),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("guest-agentd: {error}");
            ExitCode::FAILURE
        }
    }
}
