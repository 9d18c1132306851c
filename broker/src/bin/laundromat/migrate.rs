//! `laundromat vm migrate`: live-migrates a VM to another host while it runs, showing each
//! pre-copy round as the source hostd reports it, and remembers where the VM went.

use std::path::Path;

use serde_json::Value;
use token::HostId;

use crate::vm::{host_of, known, remember_host, VmRef};
use crate::{print, CliError};

#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub vm: VmRef,
    /// The destination host's id (`laundromat hosts` lists them).
    #[arg(long)]
    pub to: HostId,
}

pub async fn run(json: bool, dir: &Path, args: &MigrateArgs) -> Result<(), CliError> {
    let tenant = crate::keys::load(&dir.join("tenant.key"))?;
    let client = host_of(dir, &args.vm)?;
    // Progress goes to stderr, so that --json leaves stdout to the result alone.
    let mut show = |line: &Value| eprintln!("{}", describe(line));
    let lines = client
        .migrate(&args.vm.vm, args.to, &tenant, &mut show)
        .await?;
    let result = lines
        .iter()
        .rev()
        .find(|line| line["event"] == "result")
        .cloned()
        .ok_or(CliError::MigrationUnfinished)?;
    let status = result["status"].as_str().unwrap_or("unknown").to_owned();
    if status == "completed" {
        if let (Some(url), Some(_)) = (result["url"].as_str(), known(dir, &args.vm.vm)?) {
            remember_host(dir, &args.vm.vm, url)?;
        }
    }
    print(json, &result, |r| {
        let stats = &r["stats"];
        format!(
            "vm {} {status}: now on {}; downtime {} ms, total {} ms",
            args.vm.vm,
            r["url"].as_str().unwrap_or("its source"),
            stats["downtime-ms"],
            stats["total-time-ms"],
        )
    });
    match status.as_str() {
        "completed" => Ok(()),
        _ => Err(CliError::MigrationFailed(status)),
    }
}

/// One progress line as a tenant reads it.
fn describe(line: &Value) -> String {
    match line["event"].as_str() {
        Some("progress") => format!(
            "  round {}: {} MiB left at {} Mbit/s, expected downtime {} ms",
            line["round"],
            line["remaining"].as_u64().unwrap_or(0) >> 20,
            line["mbps"],
            line["expected-downtime-ms"],
        ),
        Some("switchover") => format!("  switchover at link {}", line["index"]),
        Some(event) => format!("  {event}"),
        None => format!("  {line}"),
    }
}
