//! TLS for mail connections: rustls trusting the public web roots (webpki-roots), plus extra CA
//! certificates from a PEM file when configured (a test CA, a company CA).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::net::MailStream;
use crate::domain::mailbox::MailHost;
use crate::ports::mailbox::MailboxError;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("configuration setting mailbox.extra_ca_file: cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration setting mailbox.extra_ca_file: {path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("configuration setting mailbox.extra_ca_file: a certificate in {path} is not usable")]
    BadCertificate {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The client side of TLS, built once per process.
#[derive(Clone)]
pub struct TlsSettings {
    connector: TlsConnector,
}

impl TlsSettings {
    /// The public web roots only.
    pub fn public_roots() -> Self {
        Self::from_roots(Self::web_roots())
    }

    /// The public web roots and the CA certificates in a PEM file.
    pub fn with_extra_ca_file(path: &Path) -> Result<Self, TlsSetupError> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read { path: shown.clone(), source })?;
        let mut roots = Self::web_roots();
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| TlsSetupError::BadCertificate { path: shown.clone(), source: e.into() })?;
            roots.add(cert).map_err(|e| TlsSetupError::BadCertificate { path: shown.clone(), source: e.into() })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsSetupError::NoCertificate { path: shown });
        }
        Ok(Self::from_roots(roots))
    }

    fn web_roots() -> RootCertStore {
        RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
    }

    fn from_roots(roots: RootCertStore) -> Self {
        // Both ring and aws-lc-rs are compiled in (other crates want them); name one rather than
        // rely on a process-wide default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self { connector: TlsConnector::from(Arc::new(config)) }
    }

    /// The TLS handshake on a connected socket, checking the certificate against `host`.
    pub(crate) async fn wrap(
        &self,
        host: &MailHost,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<MailStream, MailboxError> {
        let name = ServerName::try_from(host.as_str().to_owned()).map_err(|e| MailboxError::Tls {
            host: host.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let stream = tokio::time::timeout(timeout, self.connector.connect(name, tcp))
            .await
            .map_err(|_| MailboxError::Timeout { step: "the TLS handshake" })?
            .map_err(|source| MailboxError::Tls { host: host.to_string(), source })?;
        Ok(MailStream::Tls(Box::new(stream)))
    }
}
