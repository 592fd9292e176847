//! TLS for pgseal's own connections, with libpq's `sslmode` meanings, read from the same
//! environment variables libpq reads: `PGSSLMODE` and `PGSSLROOTCERT`.
//!
//! | mode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | when the server offers it | against `PGSSLROOTCERT` when set (as `verify-ca`), else not |
//! | `require` | always | the same |
//! | `verify-ca` | always | chain against `PGSSLROOTCERT` |
//! | `verify-full` | always | chain and host name against `PGSSLROOTCERT` |
//!
//! Managed services use their own CAs (RDS: the "global bundle" PEM from AWS), so the roots
//! come only from `PGSSLROOTCERT`, never from the system store. A host reached through a
//! tunnel (`--connect-via`) does not match the certificate's name: use `verify-ca` there.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How strictly a connection uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never.
    Disable,
    /// When the server offers it (`allow` and `prefer`).
    Prefer,
    /// Always.
    Require,
    /// Always, with the certificate chain checked.
    VerifyCa,
    /// Always, with the chain and the host name checked.
    VerifyFull,
}

/// A TLS setting could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `PGSSLMODE` holds something libpq does not know.
    #[error(
        "PGSSLMODE={0:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
    )]
    BadMode(String),
    /// A verifying mode without roots.
    #[error(
        "sslmode {0} checks the server's certificate: set PGSSLROOTCERT to the CA bundle (for RDS, AWS's global-bundle.pem)"
    )]
    NoRoots(&'static str),
    /// The roots file cannot be used.
    #[error("PGSSLROOTCERT {path}: {reason}")]
    Roots {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What TLS pgseal uses for its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// The mode.
    pub mode: TlsMode,
    /// PEM file of the CAs to trust.
    pub root_cert: Option<PathBuf>,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy {
            mode: TlsMode::Prefer,
            root_cert: None,
        }
    }
}

impl TlsPolicy {
    /// `PGSSLMODE` (default `prefer`) and `PGSSLROOTCERT`.
    pub fn from_env() -> Result<Self, TlsError> {
        let mode = match std::env::var("PGSSLMODE").ok().as_deref() {
            None | Some("") | Some("prefer") | Some("allow") => TlsMode::Prefer,
            Some("disable") => TlsMode::Disable,
            Some("require") => TlsMode::Require,
            Some("verify-ca") => TlsMode::VerifyCa,
            Some("verify-full") => TlsMode::VerifyFull,
            Some(other) => return Err(TlsError::BadMode(other.to_string())),
        };
        let root_cert = std::env::var_os("PGSSLROOTCERT")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        Ok(TlsPolicy { mode, root_cert })
    }

    /// The rustls connector for this policy, built once and reused while the policy stays
    /// the same (building reads the roots file): every connection asks for it.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TlsError> {
        static LAST: Mutex<Option<(TlsPolicy, MakeRustlsConnect)>> = Mutex::new(None);
        let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((policy, connector)) = last.as_ref()
            && policy == self
        {
            return Ok(connector.clone());
        }
        let connector = self.build_connector()?;
        *last = Some((self.clone(), connector.clone()));
        Ok(connector)
    }

    /// Builds the rustls connector for this policy (never asked for [`TlsMode::Disable`]).
    fn build_connector(&self) -> Result<MakeRustlsConnect, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = match (&self.root_cert, self.mode) {
            (None, TlsMode::VerifyCa) => return Err(TlsError::NoRoots("verify-ca")),
            (None, TlsMode::VerifyFull) => return Err(TlsError::NoRoots("verify-full")),
            (None, _) => None,
            (Some(path), _) => Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(path)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Roots {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            ),
        };
        let verifier = Arc::new(Verifier {
            chain,
            check_name: self.mode == TlsMode::VerifyFull,
            algorithms: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The CAs in a PEM file.
fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |reason: String| TlsError::Roots {
        path: path.to_path_buf(),
        reason,
    };
    let mut store = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        store
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(store)
}

/// How a server's certificate is checked: not at all for `require`/`prefer` without roots
/// (encrypted, as libpq does); the chain against the roots otherwise, and the host name
/// only for `verify-full`. Signatures are always checked with the provider's algorithms.
#[derive(Debug)]
struct Verifier {
    /// The chain's verifier, when there are roots.
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// Whether the certificate must name the host (`verify-full`).
    check_name: bool,
    /// The provider's signature algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
