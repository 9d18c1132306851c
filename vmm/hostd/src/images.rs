//! Content-addressed image blobs (kernels, initrds and disk images): stored once under their SHA-256, then
//! referred to by digest. A blob is written to a temporary file while it is hashed, and only
//! renamed into place when its digest is the one claimed, so a half-written or mislabelled
//! blob is never visible.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "the {kind} is larger than the {limit} bytes this host accepts for one (hostd {flag})"
    )]
    TooLarge {
        kind: &'static str,
        limit: u64,
        flag: &'static str,
    },
    #[error("the upload's SHA-256 is {actual}, not {claimed}")]
    DigestMismatch { claimed: String, actual: String },
    #[error("image {0} has not been uploaded to this host")]
    NotFound(String),
    #[error("the upload was cut off")]
    Upload(#[source] axum::Error),
    #[error("cannot store or read image blobs")]
    Io(#[from] std::io::Error),
}

/// The blob store under `<data dir>/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Disk images are far larger than kernels, and are never read whole into memory.
    max_disk_bytes: u64,
    /// Token image digests already computed. A stored blob never changes, so the digest over
    /// the same kernel, initrd and command line never changes either; admission then does not
    /// re-read and re-hash megabytes of kernel for every VM of one image.
    digests: Arc<Mutex<HashMap<DigestKey, token::ImageDigest>>>,
}

/// Kernel, initrd, the command line's SHA-256 (hashed, so a key stays small however long
/// the command line) and the disk: every part the token's digest binds.
type DigestKey = (BlobDigest, Option<BlobDigest>, [u8; 32], Option<DiskImage>);

/// What an upload is: it decides the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A kernel or an initrd, read whole to compute image digests.
    Boot,
    /// A disk image.
    Disk,
}

/// Digests remembered at most; the memory is forgotten all at once when full.
const DIGESTS_KEPT: usize = 1024;

pub use laundromat_api::hostd::{BlobDigest, DiskImage};

impl ImageStore {
    pub fn open(dir: PathBuf, max_bytes: u64, max_disk_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // Uploads cut off by a crash leave temporaries; they are never referred to.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            max_bytes,
            max_disk_bytes,
            digests: Arc::default(),
        })
    }

    /// The token's image digest over stored blobs, a command line and a disk (see
    /// `token::image_digest_with_disk`), computed off the async threads the first time. The
    /// disk is bound by its digest, so it must be stored but is not read.
    pub async fn token_digest(
        &self,
        kernel: &BlobDigest,
        initrd: Option<&BlobDigest>,
        cmdline: &str,
        disk: Option<&DiskImage>,
    ) -> Result<token::ImageDigest, ImageError> {
        let key: DigestKey = (
            kernel.clone(),
            initrd.cloned(),
            Sha256::digest(cmdline.as_bytes()).into(),
            disk.cloned(),
        );
        let remembered = self.lock_digests().get(&key).copied();
        if let Some(digest) = remembered {
            return Ok(digest);
        }
        let kernel = self.existing_boot(kernel)?;
        let initrd = initrd.map(|d| self.existing_boot(d)).transpose()?;
        if let Some(disk) = disk {
            self.existing(&disk.sha256)?;
        }
        let (cmdline, disk) = (cmdline.to_string(), disk.map(DiskImage::part));
        let digest = tokio::task::spawn_blocking(move || {
            token_digest(&kernel, initrd.as_deref(), &cmdline, disk)
        })
        .await
        .map_err(|e| std::io::Error::other(format!("the image digest task failed: {e}")))??;
        let mut digests = self.lock_digests();
        if digests.len() >= DIGESTS_KEPT {
            digests.clear();
        }
        digests.insert(key, digest);
        Ok(digest)
    }

    fn lock_digests(&self) -> std::sync::MutexGuard<'_, HashMap<DigestKey, token::ImageDigest>> {
        self.digests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most an upload of `kind` may hold.
    pub fn limit(&self, kind: BlobKind) -> u64 {
        match kind {
            BlobKind::Boot => self.max_bytes,
            BlobKind::Disk => self.max_disk_bytes,
        }
    }

    fn too_large(&self, kind: BlobKind) -> ImageError {
        let (kind_name, flag) = match kind {
            BlobKind::Boot => ("kernel or initrd", "--max-image-mib"),
            BlobKind::Disk => ("disk image", "--max-disk-mib"),
        };
        ImageError::TooLarge {
            kind: kind_name,
            limit: self.limit(kind),
            flag,
        }
    }

    /// A stored kernel or initrd, within the boot limit: it is read whole into memory, and a
    /// blob uploaded as a (larger) disk must not be read as one.
    fn existing_boot(&self, digest: &BlobDigest) -> Result<PathBuf, ImageError> {
        let path = self.existing(digest)?;
        if std::fs::metadata(&path)?.len() > self.max_bytes {
            return Err(self.too_large(BlobKind::Boot));
        }
        Ok(path)
    }

    pub fn path(&self, digest: &BlobDigest) -> PathBuf {
        self.dir.join(digest.as_str())
    }

    /// The stored blob's path, or `NotFound`.
    pub fn existing(&self, digest: &BlobDigest) -> Result<PathBuf, ImageError> {
        let path = self.path(digest);
        if path.is_file() {
            Ok(path)
        } else {
            Err(ImageError::NotFound(digest.to_string()))
        }
    }

    /// Stores an upload streamed as `body`, if its SHA-256 is `claimed` and it fits the limit
    /// of its kind. Returns whether the blob was new.
    pub async fn put(
        &self,
        claimed: &BlobDigest,
        kind: BlobKind,
        body: axum::body::Body,
    ) -> Result<bool, ImageError> {
        use http_body_util::BodyExt;

        let limit = self.limit(kind);
        if self.path(claimed).is_file() {
            // Already here. The body is still read (within the limit, and thrown away) so the
            // client is not cut off mid-upload.
            let mut body = body;
            let mut size: u64 = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(ImageError::Upload)?.into_data() {
                    size += data.len() as u64;
                    if size > limit {
                        return Err(self.too_large(kind));
                    }
                }
            }
            return Ok(false);
        }
        let tmp = self
            .dir
            .join(format!("{claimed}.{}.partial", rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            let mut body = body;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(ImageError::Upload)?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                size += data.len() as u64;
                if size > limit {
                    return Err(self.too_large(kind));
                }
                hasher.update(&data);
                file.write_all(&data).await?;
            }
            let actual = token::hex::encode(&hasher.finalize());
            if actual != claimed.as_str() {
                return Err(ImageError::DigestMismatch {
                    claimed: claimed.to_string(),
                    actual,
                });
            }
            file.sync_all().await?;
            tokio::fs::rename(&tmp, self.path(claimed)).await?;
            crate::durable::sync_dir(&self.dir)?;
            Ok(true)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

/// Reads the parts of an image and computes the token's image digest over them (see
/// `token::image_digest_with_disk`: kernel, optional initrd, command line, optional disk).
pub fn token_digest(
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    disk: Option<token::DiskPart>,
) -> std::io::Result<token::ImageDigest> {
    let kernel = std::fs::read(kernel)?;
    let initrd = initrd.map(std::fs::read).transpose()?;
    Ok(token::image_digest_with_disk(
        &kernel,
        initrd.as_deref(),
        cmdline,
        disk,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> BlobDigest {
        BlobDigest::try_from(token::hex::encode(&Sha256::digest(bytes))).unwrap()
    }

    #[tokio::test]
    async fn stores_only_what_matches_its_digest_and_fits() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images"), 8, 16).unwrap();
        let digest = sha(b"kernel");
        let boot = BlobKind::Boot;
        assert!(store.put(&digest, boot, "kernel".into()).await.unwrap());
        assert!(!store.put(&digest, boot, "kernel".into()).await.unwrap());
        assert_eq!(
            std::fs::read(store.existing(&digest).unwrap()).unwrap(),
            b"kernel"
        );

        let other = sha(b"other");
        assert!(matches!(
            store.put(&other, boot, "kernel2".into()).await,
            Err(ImageError::DigestMismatch { .. })
        ));
        assert!(matches!(
            store
                .put(&sha(b"123456789"), boot, "123456789".into())
                .await,
            Err(ImageError::TooLarge { limit: 8, .. })
        ));
        assert!(matches!(
            store.existing(&other),
            Err(ImageError::NotFound(_))
        ));
        // A disk has its own, larger limit, and is not read as a kernel.
        let disk = sha(b"0123456789abcdef");
        assert!(matches!(
            store
                .put(
                    &sha(b"0123456789abcdef!"),
                    BlobKind::Disk,
                    "0123456789abcdef!".into()
                )
                .await,
            Err(ImageError::TooLarge {
                limit: 16,
                flag: "--max-disk-mib",
                ..
            })
        ));
        assert!(store
            .put(&disk, BlobKind::Disk, "0123456789abcdef".into())
            .await
            .unwrap());
        assert!(matches!(
            store.token_digest(&disk, None, "", None).await,
            Err(ImageError::TooLarge { limit: 8, .. })
        ));
        // The remembered digests are keyed by the disk too: each reference gets its own.
        for readonly in [false, true, false] {
            let image = DiskImage {
                sha256: disk.clone(),
                readonly,
            };
            assert_eq!(
                store
                    .token_digest(&digest, None, "c", Some(&image))
                    .await
                    .unwrap(),
                token::image_digest_with_disk(b"kernel", None, "c", Some(image.part()))
            );
        }
        assert!(matches!(
            store
                .token_digest(
                    &digest,
                    None,
                    "c",
                    Some(&DiskImage {
                        sha256: other.clone(),
                        readonly: true
                    })
                )
                .await,
            Err(ImageError::NotFound(_))
        ));
        // Nothing but the good blobs is left.
        assert_eq!(
            std::fs::read_dir(dir.path().join("images"))
                .unwrap()
                .count(),
            2
        );
        assert!(BlobDigest::try_from("../etc/passwd".to_string()).is_err());
    }
}
