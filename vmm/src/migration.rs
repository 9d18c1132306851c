//! The VMM's side of live migration: it lets the `migrator` engine drive a running VM, and
//! it turns an incoming migration into a VM.
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use migrator::dest::{self, DestError};
use migrator::identity::{Identity, IdentityError, PublicKey};
use migrator::{MigratableVm, VmError};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::builder::{self, BuildError, BuiltVm};
use crate::controller::VmController;
use crate::devices::virtio::block::DiskConfig;
use crate::devices::virtio::net::tap::{Tap, TapError};
use crate::devices::virtio::net::NetConfig;
use crate::persist::format::{self, FormatError};
use crate::persist::MachineState;
use crate::sandbox::preopened;
use crate::vstate::memory::{self, Backing, GuestMemory, MemoryError};

/// A running VM as the pre-copy engine sees it.
pub struct Source(pub Arc<VmController>);

impl MigratableVm for Source {
    fn memory(&self) -> &GuestMemory {
        self.0.memory()
    }

    fn machine(&self) -> Vec<u8> {
        // MachineState is plain data: encoding it cannot fail.
        serde_json::to_vec(self.0.machine()).unwrap_or_default()
    }

    fn set_dirty_logging(&self, enabled: bool) -> Result<(), VmError> {
        Ok(self.0.vm().register_memory(self.0.memory(), enabled)?)
    }

    fn dirty_log(&self, index: usize) -> Result<Vec<u64>, VmError> {
        let region = self
            .0
            .memory()
            .iter()
            .nth(index)
            .ok_or("no such memory region")?;
        Ok(self.0.vm().dirty_log(index as u32, region.len())?)
    }

    fn manual_dirty_log(&self) -> bool {
        self.0.vm().dirty_log_mode().manual
    }

    fn clear_dirty_log(
        &self,
        index: usize,
        first_page: u64,
        pages: u64,
        bitmap: &[u64],
    ) -> Result<(), VmError> {
        let pages = u32::try_from(pages).map_err(|_| "too many pages to clear at once")?;
        Ok(self
            .0
            .vm()
            .clear_dirty_log(index as u32, first_page, pages, bitmap)?)
    }

    fn pause(&self) -> Result<(), VmError> {
        Ok(self.0.pause()?)
    }

    fn resume(&self) -> Result<(), VmError> {
        // The engine resumes the source only when the migration ended before `Commit`.
        Ok(self.0.resume_after_failed_migration()?)
    }

    fn save_state(&self) -> Result<Vec<u8>, VmError> {
        let state = self.0.save_state()?;
        let encoded = format::encode(&state)?;
        // The state goes to the destination next, which opens the disk images to apply it:
        // on shared storage it needs their locks. The VM is paused, so nothing writes now.
        self.0.devices().release_disk_images();
        Ok(encoded)
    }

    fn set_throttle(&self, percent: u8) {
        self.0.set_throttle(percent);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("--incoming takes tcp://ADDR:PORT, not {0:?}")]
    BadUrl(String),
    #[error("cannot use the host identity or the peer key")]
    Identity(#[from] IdentityError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the incoming migration failed")]
    Dest(#[from] DestError),
    #[error("the source described a machine this vmm cannot build: {0}")]
    BadMachine(String),
    #[error("the source's RAM size ({sent} bytes) does not match its machine ({machine} bytes)")]
    RamMismatch { sent: u64, machine: u64 },
    #[error("cannot allocate guest memory")]
    Memory(#[from] MemoryError),
    #[error("the VM state from the source is invalid")]
    State(#[from] FormatError),
    #[error("cannot build the VM from the source's state")]
    Build(#[from] BuildError),
    #[error("cannot attach to the VM's tap")]
    Tap(#[from] TapError),
}

/// Who the destination is and whom it accepts.
pub struct IncomingAuth<'a> {
    /// This host's identity file.
    pub identity: &'a Path,
    /// The source's public key, hex.
    pub peer: &'a str,
    /// How long to wait for the source to connect and authenticate.
    pub timeout: Duration,
}

/// Binds the migration port of `url` (`tcp://ADDR:PORT`).
pub fn listen(url: &str) -> Result<TcpListener, IncomingError> {
    let addr = url
        .strip_prefix("tcp://")
        .ok_or_else(|| IncomingError::BadUrl(url.into()))?;
    TcpListener::bind(addr).map_err(|source| IncomingError::Listen {
        addr: addr.into(),
        source,
    })
}

/// Waits on `listener` for the source `auth` names, receives one VM and returns it built but
/// not yet running, with the connection on which to acknowledge. Nothing runs until the
/// source commits. Connections that fail authentication are refused without ending the wait.
pub fn receive(
    listener: &TcpListener,
    auth: &IncomingAuth<'_>,
    backing: &Backing,
    net: &[NetConfig],
    disks: &[DiskConfig],
    started: Instant,
    console: Box<dyn Write + Send>,
) -> Result<(BuiltVm, dest::Incoming), IncomingError> {
    let identity = Identity::load(auth.identity)?;
    let peer = PublicKey::from_hex(auth.peer)?;
    attach_taps_early(net)?;
    let deadline = Instant::now() + auth.timeout;
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    tracing::info!(addr, peer = %peer, "waiting for an incoming migration");
    let mut incoming = dest::accept(listener, &identity, peer, deadline, auth.timeout.as_secs())?;
    match receive_vm(&mut incoming, backing, net, disks, started, console) {
        Ok(vm) => Ok((vm, incoming)),
        Err(e) => {
            incoming.abort(&crate::api::server::error_chain(&e));
            Err(e)
        }
    }
}

/// Attaches to the VM's taps now, long before the switchover, and keeps them for the devices
/// the state builds. A tap's carrier comes up when a process attaches, but its bridge port
/// forwards only once the kernel's link watcher has seen that, a little later (milliseconds on
/// a busy host). Attached only when the state arrives, the tap dropped the announce and the
/// guest's first frames after the switchover, and the bridges went on sending the guest's
/// traffic to the old host until the next announce round.
fn attach_taps_early(net: &[NetConfig]) -> Result<(), TapError> {
    for cfg in net {
        let tap = Tap::open(&cfg.tap)?;
        preopened::put_tap(&cfg.tap, tap.into_file());
    }
    Ok(())
}

fn receive_vm(
    incoming: &mut dest::Incoming,
    backing: &Backing,
    net: &[NetConfig],
    disks: &[DiskConfig],
    started: Instant,
    console: Box<dyn Write + Send>,
) -> Result<BuiltVm, IncomingError> {
    let machine: MachineState = serde_json::from_slice(&incoming.machine)
        .map_err(|e| IncomingError::BadMachine(e.to_string()))?;
    let machine_bytes = machine
        .mem_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| IncomingError::BadMachine("memory size overflows".into()))?;
    if incoming.ram_bytes != machine_bytes {
        return Err(IncomingError::RamMismatch {
            sent: incoming.ram_bytes,
            machine: machine_bytes,
        });
    }
    // Validate the shape before allocating anything the source asked for.
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| IncomingError::BadMachine(e.to_string()))?;
    crate::config::VmConfig::for_machine(&machine, backing.clone())
        .validate_for_host(&kvm)
        .map_err(|e| IncomingError::BadMachine(e.to_string()))?;
    if let Backing::File(path) = backing {
        // Pages the source skips as zero must read as zero here.
        let _ = std::fs::remove_file(path);
    }
    let mem = memory::create(machine_bytes, backing)?;
    // Build the whole VM now, while pre-copy runs: the switchover then only applies state.
    let prepared = builder::prepare(&machine, backing, Some(mem))?;
    let state_bytes = incoming.receive_memory(prepared.memory())?;
    let state = format::decode(&state_bytes)?;
    if state.machine != machine {
        return Err(IncomingError::BadMachine(
            "the state describes another machine".into(),
        ));
    }
    Ok(prepared.restore(&state, net, disks, started, console)?)
}
