//! A VM's disk image on this host.
//!
//! - A read-only disk is the stored, content-addressed blob itself: `vmm` opens it read-only
//!   with a shared lock, so any number of VMs read one blob.
//! - A writable disk is the VM's own copy, `<disk dir>/<vm id>.img`, made at admission, so
//!   the stored blob never changes. It is removed when the VM ends here (stopped, reclaimed,
//!   crashed), never when it migrates away.
//! - Migration moves no disk file. A read-only disk must already be stored at the destination
//!   (uploaded there too: it is content-addressed); a writable disk's copy must be reachable
//!   at the destination under the same name in its disk dir, i.e. operators put `--disk-dir`
//!   on storage both hosts share. Otherwise the destination refuses with 409
//!   `disk_unreachable` and the VM keeps running at the source.
mod copy;

use std::path::PathBuf;

use axum::http::StatusCode;
use laundromat_api::hostd::DiskImage;
use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::http::error::ApiError;
use crate::images::ImageError;

/// `--disk-dir`'s default, under the data directory.
pub const DEFAULT_DIR: &str = "disks";

/// A VM's disk as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    pub image: DiskImage,
    /// The file `vmm` opens: the stored blob (read-only) or the VM's own copy.
    pub path: PathBuf,
    /// Whether this host removes `path` when the VM ends: the VM's own copy once the VM runs
    /// here. An arriving VM's copy is still the source's until the switchover.
    #[serde(default)]
    pub owned: bool,
}

impl VmDisk {
    /// The `vmm run --disk` value.
    pub fn vmm_arg(&self) -> String {
        let readonly = if self.image.readonly { "on" } else { "off" };
        format!("path={},readonly={readonly}", self.path.display())
    }
}

/// Where the VM `vm_id` keeps its writable copy on this host.
fn copy_path(host: &Host, vm_id: &str) -> PathBuf {
    host.config.disk_dir.join(format!("{vm_id}.img"))
}

/// The disk for a VM being admitted: the stored blob (checked present before), or a fresh
/// copy of it for a writable disk.
pub async fn for_admission(
    host: &Host,
    vm_id: &str,
    image: &DiskImage,
) -> Result<VmDisk, ApiError> {
    let blob = host
        .images
        .existing(&image.sha256)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "image_not_found", e.to_string()))?;
    if image.readonly {
        return Ok(VmDisk {
            image: image.clone(),
            path: blob,
            owned: false,
        });
    }
    let path = copy_path(host, vm_id);
    let target = path.clone();
    tokio::task::spawn_blocking(move || copy::clone_or_copy(&blob, &target))
        .await
        .map_err(|e| ApiError::internal(format!("the disk copy task failed: {e}")))?
        .map_err(|e| {
            ApiError::internal(format!(
                "cannot make the VM's copy of its disk at {}: {e}",
                path.display()
            ))
        })?;
    Ok(VmDisk {
        image: image.clone(),
        path,
        owned: true,
    })
}

fn unreachable(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "disk_unreachable", message)
}

/// The disk for a VM arriving by migration: what this host reaches already, or a refusal.
pub fn for_arrival(host: &Host, vm_id: &str, image: &DiskImage) -> Result<VmDisk, ApiError> {
    let path = if image.readonly {
        host.images.existing(&image.sha256).map_err(|e| match e {
            ImageError::NotFound(_) => unreachable(format!(
                "the VM's read-only disk image {} is not stored on this host; upload it here \
                 first (PUT /v1/disks/{{sha256}})",
                image.sha256
            )),
            other => ApiError::internal(other.to_string()),
        })?
    } else {
        let path = copy_path(host, vm_id);
        if !path.is_file() {
            return Err(unreachable(format!(
                "the VM's writable disk {} is not in this host's disk directory; hosts that \
                 migrate VMs with writable disks need --disk-dir on storage they share",
                path.display()
            )));
        }
        path
    };
    Ok(VmDisk {
        image: image.clone(),
        path,
        owned: false,
    })
}

/// Removes the VM's own disk copy when this host owns it; called when the VM ends here.
pub fn remove_owned(vm_id: &str, disk: Option<&VmDisk>) {
    let Some(disk) = disk.filter(|d| d.owned && !d.image.readonly) else {
        return;
    };
    match std::fs::remove_file(&disk.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(vm = %vm_id, path = %disk.path.display(), "cannot remove the VM's disk copy: {e}")
        }
    }
}
