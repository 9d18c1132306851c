//! The host's ed25519 identity: made on first start, kept in the data directory.
//!
//! The key file holds the 32-byte secret seed as hex. The host id the broker registers is
//! derived from the public key, so the two can never disagree. (The migration work brings
//! `vmm keygen` and its file format; hostd switches to it when that lands.)

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use token::{HostId, SigningKey, VerifyingKey};

pub const KEY_FILE: &str = "host-identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write the host key {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the host key {path} is not 64 hex digits")]
    Corrupt { path: PathBuf },
}

/// The host's signing key and the id derived from it.
#[derive(Clone)]
pub struct HostIdentity {
    pub key: SigningKey,
    pub host_id: HostId,
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
    pub fn from_key(key: SigningKey) -> Self {
        let host_id = host_id_for(&key.verifying_key());
        Self { key, host_id }
    }

    /// Loads the key from `data_dir`, or makes one (mode 0600) if there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IdentityError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                let seed: [u8; 32] = token::hex::decode_array(text.trim())
                    .map_err(|_| IdentityError::Corrupt { path: path.clone() })?;
                Ok(Self::from_key(SigningKey::from_bytes(&seed)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                file.write_all(token::hex::encode(key.as_bytes()).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                crate::durable::sync_dir(data_dir).map_err(io)?;
                Ok(Self::from_key(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = HostIdentity::load_or_create(dir.path()).unwrap();
        let second = HostIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.host_id, second.host_id);
        assert_eq!(first.public_key(), second.public_key());
        fs::write(dir.path().join(KEY_FILE), "zz").unwrap();
        assert!(matches!(
            HostIdentity::load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
