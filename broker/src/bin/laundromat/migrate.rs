//! `laundromat vm migrate`: live-migrates a VM to another host while it runs, showing each
//! pre-copy round as the source hostd reports it ([`crate::migrate_progress`]), and remembers
//! where the VM went.

use std::path::Path;

use serde_json::Value;
use token::HostId;

use crate::migrate_progress::{failure_reason, summary, MigrationProgress};
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
    let progress = MigrationProgress::for_stderr(json);
    let mut show = |line: &Value| progress.show(line);
    let lines = match client
        .migrate(&args.vm.vm, args.to, &tenant, &mut show)
        .await
    {
        Ok(lines) => lines,
        Err(error) => {
            progress.finish(Err(&error.to_string()));
            return Err(error.into());
        }
    };
    let Some(result) = lines
        .iter()
        .rev()
        .find(|line| line["event"] == "result")
        .cloned()
    else {
        progress.finish(Err("the host's answer ended before the result"));
        return Err(CliError::MigrationUnfinished);
    };
    let status = result["status"].as_str().unwrap_or("unknown").to_owned();
    if status != "completed" {
        let why = failure_reason(&lines, &result);
        progress.finish(Err(&why));
        print(json, &result, |r| summary(&args.vm.vm, r));
        return Err(CliError::MigrationFailed(why));
    }
    progress.finish(Ok(()));
    if let (Some(url), Some(_)) = (result["url"].as_str(), known(dir, &args.vm.vm)?) {
        remember_host(dir, &args.vm.vm, url)?;
    }
    print(json, &result, |r| summary(&args.vm.vm, r));
    Ok(())
}
