//! `laundromat vm console`: the VM's console output, read once or followed as hostd streams
//! it (`--follow`), until Ctrl-C or the VM ends on its host.

use std::io::Write;
use std::path::Path;

use laundromat_api::hostd::{ConsoleEnd, ConsoleEvent};

use crate::vm::{host_of, VmRef};
use crate::CliError;

/// Tells the user, on stderr, that output was overwritten before it could be read.
fn missed(bytes: u64) {
    eprintln!("laundromat: {bytes} bytes of console output were overwritten before they were read");
}

fn write_out(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes);
    let _ = stdout.flush();
}

pub async fn run(
    json: bool,
    dir: &Path,
    vm: &VmRef,
    follow: bool,
    from: u64,
) -> Result<(), CliError> {
    let host = host_of(dir, vm)?;
    let tenant = crate::keys::load(&dir.join("tenant.key"))?;
    if !follow {
        let chunk = host.console_chunk(&vm.vm, from, &tenant).await?;
        if chunk.start > from {
            missed(chunk.start - from);
        }
        if json {
            let value = serde_json::json!({
                "vm_id": vm.vm,
                "start": chunk.start,
                "next": chunk.next,
                "output": String::from_utf8_lossy(&chunk.bytes),
            });
            println!("{value}");
        } else {
            write_out(&chunk.bytes);
        }
        return Ok(());
    }
    let mut stream = match host.console_follow(&vm.vm, from, &tenant).await {
        Ok(stream) => stream,
        // Following a VM that has already ended is not a failure: its output ended with it.
        Err(error) if error.code() == Some("vm_not_found") => {
            eprintln!("laundromat: VM {} has ended", vm.vm);
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let event = tokio::select! {
            event = stream.next() => event?,
            _ = &mut interrupted => return Ok(()),
        };
        let Some(event) = event else {
            return Err(CliError::ConsoleStreamBroke);
        };
        if json {
            let mut value = serde_json::to_value(&event).unwrap_or_default();
            value["vm_id"] = vm.vm.clone().into();
            println!("{value}");
        }
        match event {
            ConsoleEvent::Output { output, .. } if !json => write_out(output.as_bytes()),
            ConsoleEvent::Missed { bytes, .. } if !json => missed(bytes),
            ConsoleEvent::End { reason, url, next } => {
                let why = match reason {
                    ConsoleEnd::Stopped => "has ended".to_owned(),
                    ConsoleEnd::Moved => format!(
                        "moved to {}; follow it there with --host and --from {next}",
                        url.as_deref().unwrap_or("another host")
                    ),
                    ConsoleEnd::HostShutdown => {
                        format!("is no longer streamed: its host is shutting down (resume with --from {next})")
                    }
                };
                eprintln!("laundromat: VM {} {why}", vm.vm);
                return Ok(());
            }
            _ => {}
        }
    }
}
