//! `--disk FILE [--disk-readonly]`: the disk image of an image reference, for `token buy`
//! (the token's image digest binds it) and `vm inject` (which uploads it).

use std::io::Read;
use std::path::PathBuf;

use laundromat_api::hostd::{BlobDigest, DiskImage};
use sha2::{Digest, Sha256};

use crate::CliError;

#[derive(clap::Args, Clone, Default)]
pub struct DiskArgs {
    /// A raw disk image the VM sees as /dev/vda; part of the token's image digest.
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// The VM gets the disk read-only (else a writable copy of its own on the host, which
    /// never changes the uploaded image); part of the image digest too.
    #[arg(long, requires = "disk")]
    pub disk_readonly: bool,
}

impl DiskArgs {
    /// The disk reference, its SHA-256 read from the file piece by piece (disk images are
    /// large); `None` without `--disk`.
    pub fn image(&self) -> Result<Option<DiskImage>, CliError> {
        let Some(path) = &self.disk else {
            return Ok(None);
        };
        let read_error = |source| CliError::Read {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(read_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sha256 = BlobDigest::try_from(token::hex::encode(&hasher.finalize())).map_err(|e| {
            CliError::Read {
                path: path.clone(),
                source: std::io::Error::other(e),
            }
        })?;
        Ok(Some(DiskImage {
            sha256,
            readonly: self.disk_readonly,
        }))
    }
}
