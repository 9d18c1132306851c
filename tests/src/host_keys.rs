//! Host identities for the demo and the benchmarks: a source and a destination key pair made
//! with `vmm keygen`, as an operator would, and the flags that name them to each side.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct HostKeys {
    pub source: PathBuf,
    pub source_public: String,
    pub dest: PathBuf,
    pub dest_public: String,
}

/// Runs `vmm keygen path` and returns the public key it prints.
pub fn keygen(vmm: &Path, path: &Path) -> Result<String> {
    let out = Command::new(vmm)
        .arg("keygen")
        .arg(path)
        .output()
        .context("cannot run vmm keygen")?;
    if !out.status.success() {
        bail!(
            "vmm keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl HostKeys {
    /// New identities `source.pem` and `dest.pem` in `dir` (which must not hold them yet).
    pub fn create(vmm: &Path, dir: &Path) -> Result<Self> {
        let (source, dest) = (dir.join("source.pem"), dir.join("dest.pem"));
        Ok(Self {
            source_public: keygen(vmm, &source)?,
            dest_public: keygen(vmm, &dest)?,
            source,
            dest,
        })
    }

    /// `vmm run --incoming URL` flags: the destination's identity, the source it accepts.
    pub fn incoming_args(&self) -> Vec<String> {
        vec![
            "--identity".into(),
            self.dest.display().to_string(),
            "--peer".into(),
            self.source_public.clone(),
        ]
    }

    /// `vmm ctl SOCK migrate URL` flags: the source's identity, the destination it expects.
    pub fn migrate_args(&self) -> Vec<String> {
        vec![
            "--identity".into(),
            self.source.display().to_string(),
            "--peer".into(),
            self.dest_public.clone(),
        ]
    }
}
