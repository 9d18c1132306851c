//! `laundromat pay`: reveal the next links of a token's hash chain to the host running its VM.
//!
//! The payer's state lives in the token file `token buy` wrote. It is advanced only after the
//! host accepted a link, written durably (write, fsync, rename, fsync the directory), and the
//! host's own count is the tie-breaker: before paying, the client asks the host which link it
//! holds and, if the host already holds the link the file would reveal next (a `pay` that
//! crashed between the host's answer and the write), moves the file up to it. So a crashed
//! `pay` never reveals a link twice to buy the same time, and never skips one. One `pay` at a
//! time may use a token file (an exclusive lock beside it).
//!
//! `--follow` follows the VM when it migrates: the host it left refuses with "moved, retry at
//! host B", and the payer carries on at host B from the same token file ([`follow`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use laundromat_api::hostd::{PaymentReceipt, VmView};
use laundromat_api::hostd_client::HostdClient;
use serde::Serialize;

use crate::follow;
use crate::vm::{host_of, known, read_token_file, remember_host, VmRef};
use crate::{print, write_private, CliError, TokenFile};

#[derive(clap::Args)]
pub struct PayArgs {
    /// The VM to pay for.
    #[arg(long)]
    vm: String,
    /// The hostd running it (default: the one it was injected into).
    #[arg(long)]
    host: Option<String>,
    /// The token file (default: the one the VM was injected with, or the token's file in the
    /// config dir).
    #[arg(long)]
    token: Option<String>,
    /// Keep paying one link ahead of each period until Ctrl-C or the chain ends.
    #[arg(long)]
    follow: bool,
}

/// Set once Ctrl-C was pressed; the handler replaces the default, so a payment in flight
/// is finished and recorded before the program stops.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            set.store(true, Ordering::SeqCst);
        }
    });
    flag
}

/// Sleeps for `duration` in small steps; returns whether Ctrl-C was pressed.
pub async fn sleep_or_interrupt(flag: &AtomicBool, duration: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut left = duration;
    while !left.is_zero() {
        if flag.load(Ordering::SeqCst) {
            return true;
        }
        let now = left.min(step);
        tokio::time::sleep(now).await;
        left -= now;
    }
    flag.load(Ordering::SeqCst)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An exclusive lock on a token file, held while paying with it.
struct ChainLock {
    _file: File,
}

impl ChainLock {
    fn take(token_file: &Path) -> Result<Self, CliError> {
        let path = token_file.with_extension("lock");
        let file = File::create(&path).map_err(|source| CliError::Write {
            path: path.clone(),
            source,
        })?;
        // SAFETY: flock takes a descriptor this function owns and plain flags.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            return Err(CliError::ChainBusy(token_file.to_owned()));
        }
        Ok(Self { _file: file })
    }
}

/// A token file being paid from.
struct Chain {
    path: PathBuf,
    file: TokenFile,
    _lock: ChainLock,
}

impl Chain {
    fn open(path: PathBuf) -> Result<Self, CliError> {
        let lock = ChainLock::take(&path)?;
        let file = read_token_file(&path)?;
        Ok(Self {
            path,
            file,
            _lock: lock,
        })
    }

    fn save(&self) -> Result<(), CliError> {
        write_private(
            &self.path,
            &serde_json::to_vec_pretty(&self.file).unwrap_or_default(),
        )
    }

    /// Moves the payer up to reveal `index + 1` next, because the host already holds link
    /// `index`; saved before anything else is paid.
    fn catch_up(&mut self, index: u64) -> Result<(), CliError> {
        if index < self.file.payer.next_index() {
            return Ok(());
        }
        while self.file.payer.next_index() <= index {
            self.file.payer.next_link().map_err(CliError::Chain)?;
        }
        self.save()
    }
}

/// What one accepted payment printed.
#[derive(Serialize)]
struct Paid<'a> {
    #[serde(flatten)]
    receipt: &'a PaymentReceipt,
    /// The hostd that accepted the link.
    host: &'a str,
    remaining_links: u64,
}

/// Pays the next link for `view`'s VM; returns the host's receipt.
async fn pay_next(
    host: &HostdClient,
    chain: &mut Chain,
    view: &VmView,
) -> Result<PaymentReceipt, CliError> {
    let mut held = view.paid_index;
    // A second round only if another payer was ahead of the host's answer to us.
    for _ in 0..2 {
        chain.catch_up(held)?;
        let next = chain.file.payer.next_index();
        if next > held + 1 {
            // Only if the file paid this token on a host that lost what it was paid, or the
            // file was copied: the host hashes the gap, and the tenant pays for it.
            eprintln!(
                "laundromat: the host holds link {held} but this token file already revealed \
                 up to {}; the next payment covers {} links",
                next - 1,
                next - held
            );
        }
        let mut advanced = chain.file.payer.clone();
        let payment = advanced.pay(1).map_err(CliError::Chain)?;
        match host.pay(&view.vm_id, &payment).await {
            Ok(receipt) => {
                chain.file.payer = advanced;
                chain.save()?;
                return Ok(receipt);
            }
            Err(error) if error.code() == Some("replayed") => {
                held = host.vm(&view.vm_id).await?.paid_index;
                if held < payment.index {
                    return Err(error.into());
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(CliError::PaymentRace)
}

/// Where the payments go: the host running the VM, and what it last said about it.
struct Target {
    host: HostdClient,
    view: VmView,
}

impl Target {
    /// The host's view of the VM, refreshed if the host answers (a host the VM is still
    /// moving to may not know it yet).
    async fn refresh(&mut self, vm: &str) {
        if let Ok(view) = self.host.vm(vm).await {
            self.view = view;
        }
    }
}

pub async fn run(json: bool, dir: &Path, broker: &str, args: &PayArgs) -> Result<(), CliError> {
    let vm = VmRef {
        vm: args.vm.clone(),
        host: args.host.clone(),
    };
    let host = host_of(dir, &vm)?;
    let view = host.vm(&args.vm).await?;
    let path = match (&args.token, known(dir, &args.vm)?) {
        (Some(token), _) => crate::vm::token_path(dir, token),
        (None, Some(known)) => known.token_file,
        (None, None) => crate::vm::token_path(dir, &view.token_id),
    };
    let mut chain = Chain::open(path)?;
    let token_id = chain.file.payer.token_id().to_string();
    let other_token = |view: &VmView| CliError::OtherToken {
        vm: args.vm.clone(),
        vm_token: view.token_id.clone(),
        file_token: token_id.clone(),
    };
    if token_id != view.token_id {
        return Err(other_token(&view));
    }
    let period = match &chain.file.token {
        Some(signed) => signed.token().link_period_ms,
        None => return Err(CliError::NotBought(chain.path.clone())),
    };
    let interrupted = if args.follow {
        Some(interrupt_flag())
    } else {
        None
    };
    let mut target = Target { host, view };
    // While following: since when no host has taken a payment, and the next pause.
    let mut failing: Option<Instant> = None;
    let mut pause = follow::FIRST_PAUSE;
    loop {
        if chain.file.payer.remaining() == 0 {
            if args.follow {
                eprintln!("laundromat: the chain is spent: every link has been paid");
                return Ok(());
            }
            return Err(CliError::ChainSpent);
        }
        let receipt = match pay_next(&target.host, &mut chain, &target.view).await {
            Ok(receipt) => receipt,
            Err(error) => {
                let Some(flag) = &interrupted else {
                    return Err(error);
                };
                let since = *failing.get_or_insert_with(Instant::now);
                if since.elapsed() > follow::PATIENCE {
                    eprintln!(
                        "laundromat: no host took a payment for {:?}; giving up",
                        follow::PATIENCE
                    );
                    return Err(error);
                }
                let message = error.to_string();
                match follow::after(broker, error, &token_id, &target.view.host_id).await? {
                    follow::Next::Wait => {
                        eprintln!("laundromat: {message}; retrying");
                        if sleep_or_interrupt(flag, pause).await {
                            return Ok(());
                        }
                        pause = (pause * 2).min(follow::MAX_PAUSE);
                    }
                    follow::Next::MoveTo { host_id, url } => {
                        eprintln!(
                            "laundromat: VM {} moved to host {host_id}; paying it at {url}",
                            args.vm
                        );
                        target.host = HostdClient::new(url.clone());
                        remember_host(dir, &args.vm, &url)?;
                        pause = follow::FIRST_PAUSE;
                    }
                }
                target.refresh(&args.vm).await;
                if target.view.token_id != token_id {
                    return Err(other_token(&target.view));
                }
                continue;
            }
        };
        failing = None;
        pause = follow::FIRST_PAUSE;
        let paid = Paid {
            receipt: &receipt,
            host: target.host.base(),
            remaining_links: chain.file.payer.remaining(),
        };
        if args.follow && json {
            println!("{}", serde_json::to_string(&paid).unwrap_or_default());
        } else {
            print(json, &paid, |p| {
                format!(
                    "paid link {} for vm {} at {}: paid until {} ms, {} links left",
                    p.receipt.index,
                    p.receipt.vm_id,
                    p.host,
                    p.receipt.paid_until_ms,
                    p.remaining_links
                )
            });
        }
        let Some(flag) = &interrupted else {
            return Ok(());
        };
        let view = &mut target.view;
        let extended = receipt.paid_until_ms > view.paid_until_ms;
        view.paid_index = receipt.index;
        view.paid_until_ms = receipt.paid_until_ms;
        if !extended {
            eprintln!(
                "laundromat: paying bought no more time (the token expires); stopping at link {}",
                receipt.index
            );
            return Ok(());
        }
        // Keep one period paid ahead: the next link is due when less than a period is left.
        let due = receipt.paid_until_ms.saturating_sub(period);
        let wait = Duration::from_millis(due.saturating_sub(now_ms()));
        if sleep_or_interrupt(flag, wait).await {
            return Ok(());
        }
    }
}
