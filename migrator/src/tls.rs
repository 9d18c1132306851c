//! Mutual TLS 1.3 between two host identities, each side pinned to the key it expects.
//!
//! Each side presents a self-signed certificate for its ed25519 identity. Nobody signs these
//! certificates: trust comes from the pin. A verifier accepts the peer's certificate only if
//! its SubjectPublicKeyInfo is exactly the expected ed25519 key, and checks the peer's
//! handshake signature (TLS 1.3 `CertificateVerify`) against that pinned key through the
//! crypto provider, so only the holder of the expected private key can complete a handshake.
//! Names, dates and issuers in the certificate are ignored; the key is the identity.
//!
//! Everything else is rustls' TLS 1.3 with the `ring` provider: ephemeral key exchange per
//! connection (a recorded session cannot be replayed), AEAD records, no session resumption
//! and no early data, so every connection does the full mutual authentication.
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use crate::identity::{Identity, PublicKey};

/// The name the source asks for. Not checked by either side (the key is pinned), and not
/// sent (no SNI).
pub const SERVER_NAME: &str = "laundromat-migration";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot make a certificate for this host's identity: {0}")]
    Certificate(String),
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// The peer presented a certificate for another key than the one it was expected to hold.
#[derive(Debug, thiserror::Error)]
#[error("it presented the key {presented}, but {expected} was expected")]
pub struct WrongPeerKey {
    presented: String,
    expected: PublicKey,
}

/// The crypto provider: ring, TLS 1.3 suites only, AES-128-GCM first (hardware AES makes it
/// the cheapest per byte on x86-64; ChaCha20-Poly1305 stays for hosts without it).
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// A self-signed certificate for `identity`, and its private key, for rustls.
fn certificate(
    identity: &Identity,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsSetupError> {
    let cert_err = |e: rcgen::Error| TlsSetupError::Certificate(e.to_string());
    let pkcs8 = identity.pkcs8_der();
    let key_pair = rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(cert_err)?;
    let mut params =
        rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(cert_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("laundromat host {}", identity.public()),
    );
    let cert = params.self_signed(&key_pair).map_err(cert_err)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    Ok((cert.der().clone(), key))
}

/// Accepts exactly one ed25519 key, and checks handshake signatures against it.
#[derive(Debug)]
struct Pinned {
    expected: PublicKey,
    spki: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn new(expected: PublicKey, provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected,
            spki: expected.spki_der(),
            provider,
        }
    }

    fn check_certificate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let spki = parsed.subject_public_key_info();
        if spki.as_ref() == self.spki.as_slice() {
            return Ok(());
        }
        let presented = PublicKey::from_spki_der(spki.as_ref())
            .map_or_else(|| "of another type".to_string(), |k| k.to_string());
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(WrongPeerKey {
                presented,
                expected: self.expected,
            })),
        )))
    }

    /// Verifies a TLS 1.3 handshake signature with the pinned key (the certificate already
    /// matched it).
    fn verify13(
        &self,
        message: &[u8],
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(self.spki.as_slice()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn no_tls12() -> rustls::Error {
        rustls::Error::PeerIncompatible(rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_certificate(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for Pinned {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_certificate(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The source's TLS configuration: present `identity`, accept only a destination holding
/// `peer`.
pub fn client_config(
    identity: &Identity,
    peer: PublicKey,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let (cert, key) = certificate(identity)?;
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned::new(peer, provider)))
        .with_client_auth_cert(vec![cert], key)?;
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.enable_sni = false;
    Ok(Arc::new(cfg))
}

/// The destination's TLS configuration: present `identity`, accept only a source holding
/// `peer`.
pub fn server_config(
    identity: &Identity,
    peer: PublicKey,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = provider();
    let (cert, key) = certificate(identity)?;
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(Pinned::new(peer, provider)))
        .with_single_cert(vec![cert], key)?;
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// The server name the source connects with.
pub fn server_name() -> ServerName<'static> {
    // A constant valid DNS name.
    ServerName::try_from(SERVER_NAME)
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}
