//! The host's ed25519 identity: made on first start, kept in the data directory in
//! `vmm keygen`'s format (PKCS#8 PEM, mode 0600, see `migrator::identity`), so that the same
//! file is what hostd signs claims and host-to-host requests with and what its `vmm`
//! processes present in migration TLS.
//!
//! The host id the broker registers is derived from the public key, so the two can never
//! disagree. A data directory from before the switch holds the key as a hex seed in
//! `host-identity.key`: it is converted once, to the same key (the host id and the broker
//! registration stay valid), and the old file is removed only after the PEM is on disk.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use migrator::identity::{Identity, IdentityError as KeyFileError};
use sha2::{Digest, Sha256};
use token::{HostId, SigningKey, VerifyingKey};

/// The identity file, in `vmm keygen`'s format.
pub const IDENTITY_FILE: &str = "host-identity.pem";
/// The hex seed file of hostd before it used `vmm keygen`'s format.
pub const LEGACY_KEY_FILE: &str = "host-identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot use the host identity")]
    KeyFile(#[from] KeyFileError),
    #[error("cannot read or remove the old host key {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the old host key {path} is not 64 hex digits; restore it or remove it to make a new identity")]
    CorruptLegacy { path: PathBuf },
    #[error("the migration key {path} is the host identity; remove it, and a key of its own is made (the host key must never be copied into jails)")]
    SameAsHost { path: PathBuf },
}

/// How [`HostIdentity::load_or_create`] found the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Loaded,
    /// Made now: the operator must register its public key with the broker.
    Created,
    /// Converted from the old hex seed file: the same key, in the new file.
    Converted,
}

/// The host's signing key, the id derived from it and the file it is kept in.
#[derive(Clone)]
pub struct HostIdentity {
    pub key: SigningKey,
    pub host_id: HostId,
    /// The PEM file, given to `vmm` as `--identity` for migrations.
    pub path: PathBuf,
}

impl std::fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostIdentity({})", self.host_id)
    }
}

/// The host id for a public key: the first 16 bytes of a domain-separated SHA-256.
pub fn host_id_for(key: &VerifyingKey) -> HostId {
    let mut hasher = Sha256::new();
    hasher.update(b"laundromat/host-id/v1\0");
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut id = [0; 16];
    id.copy_from_slice(&digest[..16]);
    HostId(id)
}

impl HostIdentity {
    /// An identity for `key` kept at `path` (the file is not touched).
    pub fn from_key(key: SigningKey, path: PathBuf) -> Self {
        let host_id = host_id_for(&key.verifying_key());
        Self { key, host_id, path }
    }

    /// Loads the identity from `data_dir`, converting an old hex seed file, or makes one
    /// (mode 0600) if there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, Origin), IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let legacy = data_dir.join(LEGACY_KEY_FILE);
        if path.exists() {
            let identity = Identity::load(&path)?;
            return Ok((
                Self::from_key(identity.signing_key().clone(), path),
                Origin::Loaded,
            ));
        }
        let legacy_io = |source| IdentityError::Io {
            path: legacy.clone(),
            source,
        };
        let (key, origin) = match fs::read_to_string(&legacy) {
            Ok(text) => {
                let seed: [u8; 32] = token::hex::decode_array(text.trim()).map_err(|_| {
                    IdentityError::CorruptLegacy {
                        path: legacy.clone(),
                    }
                })?;
                (SigningKey::from_bytes(&seed), Origin::Converted)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                (Identity::generate().signing_key().clone(), Origin::Created)
            }
            Err(e) => return Err(legacy_io(e)),
        };
        Identity::from_signing_key(key.clone()).save(&path)?;
        let sync = |dir: &Path| {
            crate::durable::sync_dir(dir).map_err(|source| IdentityError::Io {
                path: dir.to_path_buf(),
                source,
            })
        };
        sync(data_dir)?;
        if origin == Origin::Converted {
            fs::remove_file(&legacy).map_err(legacy_io)?;
            sync(data_dir)?;
        }
        Ok((Self::from_key(key, path), origin))
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as `vmm keygen` prints it and `--peer` takes it: 64 hex digits.
    pub fn public_hex(&self) -> String {
        token::hex::encode(self.public_key().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn is_made_once_private_and_read_back_by_vmm_keygen_code() {
        let dir = tempfile::tempdir().unwrap();
        let (first, origin) = HostIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(origin, Origin::Created);
        let mode = fs::metadata(&first.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, origin) = HostIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(first.host_id, second.host_id);
        let pem = Identity::load(&first.path).unwrap();
        assert_eq!(pem.public().to_string(), first.public_hex());
        fs::write(&first.path, "-----BEGIN PRIVATE KEY-----\nzz\n").unwrap();
        assert!(matches!(
            HostIdentity::load_or_create(dir.path()),
            Err(IdentityError::KeyFile(KeyFileError::Format(_)))
        ));
    }

    #[test]
    fn an_old_hex_seed_is_converted_to_the_same_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        fs::write(
            dir.path().join(LEGACY_KEY_FILE),
            token::hex::encode(&[7; 32]),
        )
        .unwrap();
        let (converted, origin) = HostIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(origin, Origin::Converted);
        assert_eq!(converted.public_key(), key.verifying_key());
        assert!(!dir.path().join(LEGACY_KEY_FILE).exists());
        let (again, origin) = HostIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!((again.host_id, origin), (converted.host_id, Origin::Loaded));

        let bad = tempfile::tempdir().unwrap();
        fs::write(bad.path().join(LEGACY_KEY_FILE), "zz").unwrap();
        assert!(matches!(
            HostIdentity::load_or_create(bad.path()),
            Err(IdentityError::CorruptLegacy { .. })
        ));
        assert!(!bad.path().join(IDENTITY_FILE).exists());
    }
}
