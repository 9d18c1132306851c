//! The key this host's `vmm`s present in migration TLS: an ed25519 identity of its own, not
//! the host identity.
//!
//! Every jail holds a copy (a VM's outgoing migration is started inside its jail), so a guest
//! that takes over its `vmm` can read it. With a key of its own, such a guest can at most
//! pose as this host in a migration handshake. It cannot sign claims, host-to-host requests
//! or broker requests, which the host identity signs and which never enter a jail.
//!
//! The host identity vouches for the migration key: it signs the key, domain-separated and
//! bound to the host id. A source learns its destination's migration key from the
//! destination's answer to "prepare", and accepts it only with a signature by the key the
//! broker registered for that host. A destination learns its source's from the prepare
//! request itself, which the source's host identity signs.

use std::path::{Path, PathBuf};

use migrator::identity::Identity;
use token::{HostId, Signature, VerifyingKey};

use crate::identity::{HostIdentity, IdentityError};

/// The migration identity file in the data directory, in `vmm keygen`'s format.
pub const MIGRATION_KEY_FILE: &str = "migration-identity.pem";

const DOMAIN: &[u8] = b"laundromat/migration-key/v1\0";

#[derive(Debug, thiserror::Error)]
pub enum EndorsementError {
    #[error("the migration key {0:?} is not 64 hex digits")]
    Key(String),
    #[error("the migration key's endorsement is not a 128-hex-digit signature")]
    Format,
    #[error("the migration key is not signed by the host's registered key")]
    Signature,
}

/// This host's migration identity and the host identity's signature over it.
#[derive(Debug, Clone)]
pub struct MigrationKey {
    /// The PEM file: given to `vmm` as `--identity`, and copied into every jail.
    pub path: PathBuf,
    pub public: VerifyingKey,
    pub endorsement: Signature,
}

fn message(host: HostId, key: &VerifyingKey) -> Vec<u8> {
    [DOMAIN, &host.0, key.as_bytes()].concat()
}

impl MigrationKey {
    /// Loads the migration identity from `data_dir`, or makes one (mode 0600), and has `host`
    /// sign it. The file is kept across restarts: jails of re-adopted VMs hold copies of it.
    pub fn load_or_create(data_dir: &Path, host: &HostIdentity) -> Result<Self, IdentityError> {
        let path = data_dir.join(MIGRATION_KEY_FILE);
        let identity = if path.exists() {
            Identity::load(&path)?
        } else {
            let made = Identity::generate();
            made.save(&path)?;
            crate::durable::sync_dir(data_dir).map_err(|source| IdentityError::Io {
                path: data_dir.to_path_buf(),
                source,
            })?;
            made
        };
        let public = identity.signing_key().verifying_key();
        if public == host.public_key() {
            // Someone copied the host identity over it: that would put the host key in jails.
            return Err(IdentityError::SameAsHost { path });
        }
        let endorsement = ed25519_dalek::Signer::sign(&host.key, &message(host.host_id, &public));
        Ok(Self {
            path,
            public,
            endorsement,
        })
    }

    /// The public key as `--peer` takes it: 64 hex digits.
    pub fn public_hex(&self) -> String {
        token::hex::encode(self.public.as_bytes())
    }

    pub fn endorsement_hex(&self) -> String {
        token::hex::encode(&self.endorsement.to_bytes())
    }
}

/// Checks that `host`'s registered key `host_key` signed the migration key `key_hex`, and
/// returns that key.
pub fn verify(
    host: HostId,
    host_key: &VerifyingKey,
    key_hex: &str,
    endorsement_hex: &str,
) -> Result<VerifyingKey, EndorsementError> {
    let key_bytes: [u8; 32] =
        token::hex::decode_array(key_hex).map_err(|_| EndorsementError::Key(key_hex.into()))?;
    let key =
        VerifyingKey::from_bytes(&key_bytes).map_err(|_| EndorsementError::Key(key_hex.into()))?;
    let sig: [u8; 64] =
        token::hex::decode_array(endorsement_hex).map_err(|_| EndorsementError::Format)?;
    host_key
        .verify_strict(&message(host, &key), &Signature::from_bytes(&sig))
        .map_err(|_| EndorsementError::Signature)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use token::SigningKey;

    use super::*;

    fn host(seed: u8, dir: &Path) -> HostIdentity {
        HostIdentity::from_key(SigningKey::from_bytes(&[seed; 32]), dir.join("host.pem"))
    }

    #[test]
    fn is_made_once_private_distinct_from_the_host_key_and_endorsed_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = host(1, dir.path());
        let first = MigrationKey::load_or_create(dir.path(), &a).unwrap();
        let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(first.public, a.public_key());
        let again = MigrationKey::load_or_create(dir.path(), &a).unwrap();
        assert_eq!(again.public, first.public);

        let (key, sig) = (first.public_hex(), first.endorsement_hex());
        let checked = verify(a.host_id, &a.public_key(), &key, &sig).unwrap();
        assert_eq!(checked, first.public);
    }

    #[test]
    fn another_hosts_signature_a_swapped_key_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (host(1, dir.path()), host(2, dir.path()));
        let mine = MigrationKey::load_or_create(dir.path(), &a).unwrap();
        let (key, sig) = (mine.public_hex(), mine.endorsement_hex());
        // b's registered key did not sign it, nor does it hold for b's host id.
        assert!(matches!(
            verify(b.host_id, &b.public_key(), &key, &sig),
            Err(EndorsementError::Signature)
        ));
        assert!(matches!(
            verify(b.host_id, &a.public_key(), &key, &sig),
            Err(EndorsementError::Signature)
        ));
        // An attacker's key with a's signature over the real one.
        let other = token::hex::encode(SigningKey::from_bytes(&[9; 32]).verifying_key().as_bytes());
        assert!(matches!(
            verify(a.host_id, &a.public_key(), &other, &sig),
            Err(EndorsementError::Signature)
        ));
        assert!(matches!(
            verify(a.host_id, &a.public_key(), "zz", &sig),
            Err(EndorsementError::Key(_))
        ));
        assert!(matches!(
            verify(a.host_id, &a.public_key(), &key, "00"),
            Err(EndorsementError::Format)
        ));
    }

    #[test]
    fn the_host_identity_copied_over_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = host(1, dir.path());
        Identity::from_signing_key(a.key.clone())
            .save(&dir.path().join(MIGRATION_KEY_FILE))
            .unwrap();
        assert!(matches!(
            MigrationKey::load_or_create(dir.path(), &a),
            Err(IdentityError::SameAsHost { .. })
        ));
    }
}
