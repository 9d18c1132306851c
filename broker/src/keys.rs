//! ed25519 key files: the 32-byte secret seed in hex, one line, mode 0600.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use token::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} does not hold a 64-digit hex secret key")]
    Malformed { path: PathBuf },
    #[error("key file {path} already exists; remove it first to make a new key")]
    Exists { path: PathBuf },
}

pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bytes: [u8; 32] =
        token::hex::decode_array(text.trim()).map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Makes a new key and writes it to `path`, which must not exist; creates the parent
/// directory (mode 0700) if needed.
pub fn create(path: &Path) -> Result<SigningKey, KeyError> {
    let write_error = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(write_error)?;
    }
    let key = SigningKey::generate(&mut OsRng);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => write_error(source),
        })?;
    writeln!(file, "{}", token::hex::encode(&key.to_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
    Ok(key)
}

/// Loads the key at `path`, creating it first if there is none.
pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
    match create(path) {
        Ok(key) => Ok(key),
        Err(KeyError::Exists { .. }) => load(path),
        Err(error) => Err(error),
    }
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn creates_once_with_private_mode_and_reloads() {
        let dir = std::env::temp_dir().join(format!("broker-keys-{}", std::process::id()));
        let path = dir.join("sub/key");
        let key = load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create(&path).unwrap(), key);
        assert!(matches!(create(&path), Err(KeyError::Exists { .. })));
        fs::write(&path, "zz").unwrap();
        assert!(matches!(load(&path), Err(KeyError::Malformed { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
