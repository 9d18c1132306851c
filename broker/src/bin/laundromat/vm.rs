//! `laundromat vm …`: inject a VM into a host on a bought token, and look after it (status,
//! console, stop). The client talks to hostd only through `laundromat_api`'s hostd client.
//!
//! Each injected VM is remembered in `<config dir>/vms/<vm id>.json` (its host and token
//! file), so later commands need only the VM id.

use std::fs;
use std::path::{Path, PathBuf};

use laundromat_api::hostd::{AdmitRequest, BlobDigest, BootMode, DiskImage, VmView};
use laundromat_api::hostd_client::{ClientError, HostdClient};
use serde::{Deserialize, Serialize};
use token::SignedToken;

use crate::{print, write_private, CliError, TokenFile};

#[derive(clap::Subcommand)]
pub enum VmAction {
    /// Start a VM on a host: upload its kernel (and initrd and disk) if the host lacks them,
    /// then admit it on the token. Prints the VM id.
    Inject(InjectArgs),
    /// The host's view of a VM: state, paid index, paid until, reclaim time.
    Status(VmRef),
    /// The VM's console output (kept by the host in a bounded ring).
    Console {
        #[command(flatten)]
        vm: VmRef,
        /// Keep printing new output as the host streams it, until Ctrl-C or the VM ends here.
        #[arg(long)]
        follow: bool,
        /// Start at this byte offset of the console (default: the oldest byte kept).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Live-migrate the VM to another host while it runs (signed with the tenant key).
    Migrate(crate::migrate::MigrateArgs),
    /// Stop the VM: the host stops it, frees its resources and redeems what was paid. Signed
    /// with the tenant key.
    Stop(VmRef),
}

#[derive(clap::Args)]
pub struct InjectArgs {
    /// The hostd to run on, e.g. http://host-a:8480, or `auto`: the cheapest host in the
    /// broker's directory that fits the token (fresh advert, room, price), trying the next
    /// if one turns it away.
    #[arg(long)]
    host: String,
    /// The token: a file written by `token buy`, or the token id of one in the config dir.
    #[arg(long)]
    token: String,
    /// The kernel image (bench ELF, PVH ELF, bzImage or vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// An initrd; with the kernel and command line, part of the token's image digest.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The kernel command line; it is part of the token's image digest.
    #[arg(long, default_value = "")]
    cmdline: String,
    #[command(flatten)]
    disk: crate::disk::DiskArgs,
    /// How the host boots the kernel.
    #[arg(long, value_enum, default_value_t = Boot::Bench)]
    boot: Boot,
    /// Memory in MiB (default: the token's).
    #[arg(long)]
    memory: Option<u32>,
    /// vCPUs (default: the token's).
    #[arg(long)]
    vcpus: Option<u32>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Boot {
    /// The Linux x86-64 boot protocol.
    Linux,
    /// PVH entry (32-bit protected mode).
    Pvh,
    /// Laundromat's ring-3 unikernel.
    Bench,
}

impl From<Boot> for BootMode {
    fn from(boot: Boot) -> Self {
        match boot {
            Boot::Linux => BootMode::Linux,
            Boot::Pvh => BootMode::Pvh,
            Boot::Bench => BootMode::Bench,
        }
    }
}

/// Which VM, and where.
#[derive(clap::Args)]
pub struct VmRef {
    /// The VM id `vm inject` printed.
    pub vm: String,
    /// The hostd running it (default: the one it was injected into).
    #[arg(long)]
    pub host: Option<String>,
}

/// What the client remembers about a VM it injected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownVm {
    pub vm_id: String,
    pub host: String,
    pub token_id: String,
    pub token_file: PathBuf,
}

fn known_path(dir: &Path, vm_id: &str) -> PathBuf {
    dir.join("vms").join(format!("{vm_id}.json"))
}

/// The remembered VM, if `vm_id` is one this client injected.
pub fn known(dir: &Path, vm_id: &str) -> Result<Option<KnownVm>, CliError> {
    if vm_id.is_empty() || !vm_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CliError::VmId(vm_id.to_owned()));
    }
    let path = known_path(dir, vm_id);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CliError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CliError::Read { path, source }),
    }
}

/// Records that the VM now runs at `host` (after a migration).
pub fn remember_host(dir: &Path, vm_id: &str, host: &str) -> Result<(), CliError> {
    let Some(mut remembered) = known(dir, vm_id)? else {
        return Ok(());
    };
    remembered.host = host.to_owned();
    write_private(
        &known_path(dir, vm_id),
        &serde_json::to_vec_pretty(&remembered).unwrap_or_default(),
    )
}

/// The host to ask about `vm`: `--host`, or the one it was injected into.
pub fn host_of(dir: &Path, vm: &VmRef) -> Result<HostdClient, CliError> {
    let known = known(dir, &vm.vm)?;
    match (&vm.host, known) {
        (Some(host), _) => Ok(HostdClient::new(host.clone())),
        (None, Some(known)) => Ok(HostdClient::new(known.host)),
        (None, None) => Err(CliError::UnknownVm(vm.vm.clone())),
    }
}

/// The token file named by `--token`: a path, or a token id under `<dir>/tokens`.
pub fn token_path(dir: &Path, token: &str) -> PathBuf {
    let path = PathBuf::from(token);
    if !path.exists() && token.parse::<token::TokenId>().is_ok() {
        return dir.join("tokens").join(format!("{token}.json"));
    }
    path
}

pub fn read_token_file(path: &Path) -> Result<TokenFile, CliError> {
    let bytes = fs::read(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| CliError::Corrupt {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    fs::read(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What `vm inject` may have to upload: the kernel, the initrd and the disk image's file.
struct Images {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
    disk: Option<PathBuf>,
}

/// Admits the VM at `host`. Images are content-addressed: they are uploaded only if the host
/// does not have them yet (a disk too, streamed from its file).
async fn admit(
    host: &HostdClient,
    request: &AdmitRequest,
    images: &Images,
) -> Result<VmView, ClientError> {
    match host.admit(request).await {
        Err(error) if error.code() == Some("image_not_found") => {
            host.put_image(images.kernel.clone()).await?;
            if let Some(initrd) = &images.initrd {
                host.put_image(initrd.clone()).await?;
            }
            if let (Some(disk), Some(path)) = (&request.disk, &images.disk) {
                host.put_disk(&disk.sha256, path).await?;
            }
            host.admit(request).await
        }
        other => other,
    }
}

/// `--host auto`: the hosts that fit the token, cheapest first, until one admits the VM. A host
/// that is full or unreachable passes to the next; any other refusal (a bad token, say) is the
/// same everywhere and ends the search.
async fn inject_anywhere(
    broker: &str,
    token: &token::BootToken,
    request: &AdmitRequest,
    images: &Images,
) -> Result<(HostdClient, VmView), CliError> {
    let entries = broker::directory::fetch(broker).await?;
    let memory = u64::from(request.memory_mib.unwrap_or(token.memory_mib));
    let vcpus = u64::from(request.vcpus.unwrap_or(token.vcpus));
    let fit = broker::directory::hosts_that_fit(&entries, token, memory, vcpus);
    let mut last = None;
    for entry in &fit {
        let Some(advert) = &entry.advert else {
            continue;
        };
        eprintln!(
            "trying host {} at {} ({} per link)",
            entry.host.host_id, advert.url, advert.price_per_link
        );
        let host = HostdClient::new(advert.url.clone());
        match admit(&host, request, images).await {
            Ok(view) => return Ok((host, view)),
            Err(error)
                if error.status() == Some(503)
                    || (matches!(error, ClientError::Http(_)) && error.status().is_none()) =>
            {
                eprintln!("  turned away: {error}");
                last = Some(error);
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(match last {
        Some(error) => error.into(),
        None => CliError::NoHostFits {
            hosts: entries.len(),
            memory_mib: memory,
            vcpus,
            price: token.price_per_link,
        },
    })
}

async fn inject(json: bool, dir: &Path, broker: &str, args: &InjectArgs) -> Result<(), CliError> {
    let token_file = token_path(dir, &args.token);
    let file = read_token_file(&token_file)?;
    let signed: SignedToken = file
        .token
        .ok_or_else(|| CliError::NotBought(token_file.clone()))?;
    let kernel = read(&args.kernel)?;
    let initrd = args.initrd.as_deref().map(read).transpose()?;
    let disk = args.disk.image()?;
    // The host would refuse a mismatch too, but only after the upload.
    let digest = token::image_digest_with_disk(
        &kernel,
        initrd.as_deref(),
        &args.cmdline,
        disk.as_ref().map(DiskImage::part),
    );
    if digest != signed.token().image_digest {
        return Err(CliError::WrongImage);
    }
    let request = AdmitRequest {
        token: token::hex::encode(&signed.to_bytes()),
        kernel: BlobDigest::of(&kernel),
        initrd: initrd.as_deref().map(BlobDigest::of),
        cmdline: args.cmdline.clone(),
        disk,
        boot: args.boot.into(),
        memory_mib: args.memory,
        vcpus: args.vcpus,
    };
    let images = Images {
        kernel,
        initrd,
        disk: args.disk.disk.clone(),
    };
    let (host, view) = if args.host == "auto" {
        inject_anywhere(broker, signed.token(), &request, &images).await?
    } else {
        let host = HostdClient::new(args.host.clone());
        let view = admit(&host, &request, &images).await?;
        (host, view)
    };
    let remembered = KnownVm {
        vm_id: view.vm_id.clone(),
        host: host.base().to_owned(),
        token_id: view.token_id.clone(),
        token_file: fs::canonicalize(&token_file).unwrap_or(token_file),
    };
    write_private(
        &known_path(dir, &view.vm_id),
        &serde_json::to_vec_pretty(&remembered).unwrap_or_default(),
    )?;
    #[derive(Serialize)]
    struct Injected<'a> {
        host: &'a str,
        #[serde(flatten)]
        vm: &'a VmView,
    }
    print(
        json,
        &Injected {
            host: host.base(),
            vm: &view,
        },
        |i| i.vm.vm_id.clone(),
    );
    Ok(())
}

fn status_text(view: &VmView) -> String {
    format!(
        "vm {}\nstate {}\ntoken {}\nhost {}\n{} MiB, {} vCPUs\npaid {} of {} links, until {} ms (reclaim at {} ms)\nredeemed {}\nconsole {} bytes",
        view.vm_id,
        view.state,
        view.token_id,
        view.host_id,
        view.memory_mib,
        view.vcpus,
        view.paid_index,
        view.chain_length,
        view.paid_until_ms,
        view.reclaim_at_ms,
        view.redeemed_index,
        view.console_bytes
    )
}

pub async fn run(json: bool, dir: &Path, broker: &str, action: &VmAction) -> Result<(), CliError> {
    match action {
        VmAction::Inject(args) => inject(json, dir, broker, args).await,
        VmAction::Status(vm) => {
            let view = host_of(dir, vm)?.vm(&vm.vm).await?;
            print(json, &view, status_text);
            Ok(())
        }
        VmAction::Console { vm, follow, from } => {
            crate::console::run(json, dir, vm, *follow, *from).await
        }
        VmAction::Migrate(args) => crate::migrate::run(json, dir, args).await,
        VmAction::Stop(vm) => {
            let tenant = crate::keys::load(&dir.join("tenant.key"))?;
            let stopped = host_of(dir, vm)?.stop(&vm.vm, &tenant).await?;
            let _ = fs::remove_file(known_path(dir, &vm.vm));
            print(json, &stopped, |s| {
                format!(
                    "vm {} stopped; the host holds links up to {}",
                    s.vm_id, s.paid_index
                )
            });
            Ok(())
        }
    }
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError::Hostd(error)
    }
}
