//! Host identities: an ed25519 key pair per host, and the public keys hosts name each other by.
//!
//! The identity file is the private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the
//! format `openssl genpkey -algorithm ed25519` writes, so standard tools can read and make it.
//! It is created with mode 0600 and never overwritten; loading refuses a file that other users
//! can read. A public key travels as 64 lowercase hex digits (the 32 raw key bytes): that is
//! what `vmm keygen` prints, what `--peer` takes, and what `hostd` registers with the broker.
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{} already exists; refusing to overwrite a host identity", .0.display())]
    Exists(PathBuf),
    #[error("cannot write the identity file {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the identity file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the identity file {} is readable by other users (mode {mode:04o}); run chmod 600 on it",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{} is not an ed25519 private key in PKCS#8 PEM", .0.display())]
    Format(PathBuf),
    #[error("a public key is 64 hex digits (32 bytes), not {0:?}")]
    BadPublicKey(String),
}

/// A host's ed25519 key pair.
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public())
    }
}

impl Identity {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The identity of an existing key.
    pub fn from_signing_key(key: SigningKey) -> Self {
        Self { key }
    }

    /// Writes the identity to a new file at `path` (mode 0600); an existing file is an error.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let write_err = |source| IdentityError::Write {
            path: path.into(),
            source,
        };
        let pem = self
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => IdentityError::Exists(path.into()),
                _ => write_err(e),
            })?;
        file.write_all(pem.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_err)
    }

    /// Reads the identity at `path`, refusing a file other users can read.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let read_err = |source| IdentityError::Read {
            path: path.into(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions {
                path: path.into(),
                mode: mode & 0o7777,
            });
        }
        let pem = std::fs::read_to_string(path).map_err(read_err)?;
        let key =
            SigningKey::from_pkcs8_pem(&pem).map_err(|_| IdentityError::Format(path.into()))?;
        Ok(Self { key })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// The private key as PKCS#8 DER, for TLS.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        // Encoding a valid in-memory key cannot fail; an empty document would be refused by
        // whatever tries to use it.
        self.key
            .to_pkcs8_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default()
    }

    /// The underlying signing key, for protocols that sign with the host identity.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// A host's public key: the name one host knows another by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_hex(hex: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::BadPublicKey(hex.to_string());
        let hex = hex.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| bad())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// The DER SubjectPublicKeyInfo a certificate for this key carries.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.as_bytes());
        der
    }

    /// The key in a SubjectPublicKeyInfo, if it is an ed25519 key.
    pub fn from_spki_der(der: &[u8]) -> Option<Self> {
        let raw = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        let bytes: [u8; 32] = raw.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok().map(Self)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_bytes()
            .iter()
            .try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_a_save_and_load_and_is_private() {
        let dir = tempfile_dir();
        let path = dir.join("id.pem");
        let id = Identity::generate();
        id.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.public(), id.public());
        // Never overwritten.
        let other = Identity::generate();
        assert!(matches!(other.save(&path), Err(IdentityError::Exists(_))));
        assert_eq!(Identity::load(&path).unwrap().public(), id.public());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn loading_refuses_readable_or_malformed_files() {
        let dir = tempfile_dir();
        let path = dir.join("id.pem");
        Identity::generate().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Identity::load(&junk),
            Err(IdentityError::Format(_))
        ));
        assert!(matches!(
            Identity::load(&dir.join("missing")),
            Err(IdentityError::Read { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn openssl_style_pkcs8_v1_keys_load() {
        // `openssl genpkey -algorithm ed25519` output for the RFC 8032 test key 1.
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
                   -----END PRIVATE KEY-----\n";
        let dir = tempfile_dir();
        let path = dir.join("v1.pem");
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let id = Identity::load(&path).unwrap();
        assert_eq!(
            id.public().to_string(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn public_keys_parse_from_hex_and_spki() {
        let id = Identity::generate();
        let hex = id.public().to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(PublicKey::from_hex(&hex).unwrap(), id.public());
        assert_eq!(
            PublicKey::from_spki_der(&id.public().spki_der()),
            Some(id.public())
        );
        for bad in ["", "abcd", &"zz".repeat(32), &"00".repeat(33)] {
            assert!(PublicKey::from_hex(bad).is_err(), "{bad}");
        }
        let mut spki = id.public().spki_der();
        spki[5] ^= 1;
        assert_eq!(PublicKey::from_spki_der(&spki), None);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "migrator-identity-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
