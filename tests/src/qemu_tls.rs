//! X.509 credentials for QEMU's TLS migration (`tls-creds-x509`), made with GnuTLS's
//! `certtool` as QEMU's documentation does: a throw-away CA, a server certificate for
//! 127.0.0.1 (the destination) and a client certificate (the source), so both ends
//! authenticate each other as ours do. Keys are ed25519, like our host identities.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use thiserror::Error;

use crate::process::find_program;

/// GnuTLS priority for QEMU: TLS 1.3 with AES-128-GCM only, the suite our rustls
/// configuration prefers, so the two encrypted migrations use the same cipher.
pub const QEMU_TLS_PRIORITY: &str = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM";

#[derive(Debug, Error)]
pub enum QemuTlsError {
    #[error("certtool not found; install it with `apt-get install gnutls-bin`")]
    NoCerttool,
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot run certtool")]
    Run(#[source] std::io::Error),
    #[error("`certtool {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// Where the credentials are: each directory holds what one QEMU endpoint reads
/// (`ca-cert.pem`, and `server-cert.pem`/`server-key.pem` or `client-cert.pem`/`client-key.pem`).
pub struct QemuTlsCreds {
    pub server_dir: PathBuf,
    pub client_dir: PathBuf,
}

const CA_TEMPLATE: &str = "cn = laundromat migrate-bench CA\nca\ncert_signing_key\n\
                           expiration_days = 2\n";
const SERVER_TEMPLATE: &str = "cn = 127.0.0.1\nip_address = 127.0.0.1\ndns_name = localhost\n\
                               tls_www_server\nsigning_key\nexpiration_days = 2\n";
const CLIENT_TEMPLATE: &str = "cn = laundromat migrate-bench source\ntls_www_client\n\
                               signing_key\nexpiration_days = 2\n";

impl QemuTlsCreds {
    /// Makes the CA and both certificates under `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<Self, QemuTlsError> {
        let certtool = find_program(Path::new("certtool")).ok_or(QemuTlsError::NoCerttool)?;
        let server_dir = dir.join("server");
        let client_dir = dir.join("client");
        for d in [dir, &server_dir, &client_dir] {
            fs::create_dir_all(d).map_err(|e| QemuTlsError::Write(d.to_owned(), e))?;
        }
        let write = |path: PathBuf, text: &str| {
            fs::write(&path, text).map_err(|e| QemuTlsError::Write(path, e))
        };
        let run = |args: &[&Path]| -> Result<(), QemuTlsError> {
            let output = Command::new(&certtool)
                .args(args)
                .output()
                .map_err(QemuTlsError::Run)?;
            if output.status.success() {
                return Ok(());
            }
            Err(QemuTlsError::Failed {
                args: args
                    .iter()
                    .map(|a| a.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        };
        let p = Path::new;
        let ca_key = dir.join("ca-key.pem");
        let ca_cert = dir.join("ca-cert.pem");
        let ca_info = dir.join("ca.info");
        write(ca_info.clone(), CA_TEMPLATE)?;
        run(&[
            p("--generate-privkey"),
            p("--key-type=ed25519"),
            p("--outfile"),
            &ca_key,
        ])?;
        run(&[
            p("--generate-self-signed"),
            p("--load-privkey"),
            &ca_key,
            p("--template"),
            &ca_info,
            p("--outfile"),
            &ca_cert,
        ])?;
        let ca_text = fs::read_to_string(&ca_cert).map_err(QemuTlsError::Run)?;
        for (d, role, template) in [
            (&server_dir, "server", SERVER_TEMPLATE),
            (&client_dir, "client", CLIENT_TEMPLATE),
        ] {
            let key = d.join(format!("{role}-key.pem"));
            let cert = d.join(format!("{role}-cert.pem"));
            let info = dir.join(format!("{role}.info"));
            write(info.clone(), template)?;
            write(d.join("ca-cert.pem"), &ca_text)?;
            run(&[
                p("--generate-privkey"),
                p("--key-type=ed25519"),
                p("--outfile"),
                &key,
            ])?;
            run(&[
                p("--generate-certificate"),
                p("--load-privkey"),
                &key,
                p("--load-ca-certificate"),
                &ca_cert,
                p("--load-ca-privkey"),
                &ca_key,
                p("--template"),
                &info,
                p("--outfile"),
                &cert,
            ])?;
        }
        Ok(Self {
            server_dir,
            client_dir,
        })
    }

    /// The `-object` value for one endpoint (`server` on the destination, `client` on the
    /// source), with id `tls0`; both verify their peer.
    pub fn object(&self, server: bool) -> String {
        let (dir, endpoint) = match server {
            true => (&self.server_dir, "server"),
            false => (&self.client_dir, "client"),
        };
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint={endpoint},verify-peer=on,priority={}",
            dir.display(),
            QEMU_TLS_PRIORITY
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_and_both_certificates() {
        if find_program(Path::new("certtool")).is_none() {
            // CI installs gnutls-bin (.ci/install-packages); say so rather than pass quietly.
            assert!(
                std::env::var_os("LAUNDROMAT_REQUIRE_KVM").is_none(),
                "certtool is missing: install gnutls-bin"
            );
            eprintln!("certtool is missing; skipped");
            return;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let creds = QemuTlsCreds::create(dir.path()).expect("credentials");
        for file in ["ca-cert.pem", "server-cert.pem", "server-key.pem"] {
            assert!(creds.server_dir.join(file).is_file(), "{file}");
        }
        for file in ["ca-cert.pem", "client-cert.pem", "client-key.pem"] {
            assert!(creds.client_dir.join(file).is_file(), "{file}");
        }
        assert!(creds.object(true).contains("endpoint=server"));
        assert!(creds.object(false).contains("endpoint=client"));
    }
}
