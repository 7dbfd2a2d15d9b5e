//! Sending through an SMTP server with lettre, on a socket of our own with `TCP_NODELAY`.
//!
//! Released lettre builds its sockets without `TCP_NODELAY`, so every command waits about 45 ms
//! for a delayed ACK. We open the socket ourselves and hand it to lettre's connection: STARTTLS is
//! then lettre's upgrade of that same socket; implicit TLS is done here with tokio-rustls, before
//! the greeting. One connection per message: a message costs a few milliseconds on loopback and
//! there is no pool to go stale between sends.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use lettre::Address;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::domain::ids::EmailAddress;
use crate::domain::mailbox::NetworkPolicy;
use crate::domain::outbound::{ServerReply, SmtpSecurity, SmtpServer};
use crate::ports::outbound::{Accepted, MailEnvelope, MailSender, Route, SendError};

/// Reply codes that mean the account, not the message, is the problem (RFC 4954): the message is
/// parked until the credentials are fixed instead of being failed for good.
const AUTH_CODES: &[u16] = &[530, 534, 535, 538];

#[derive(Debug, thiserror::Error)]
pub enum SmtpSetupError {
    #[error("cannot read the CA certificates in {path}")]
    ReadCa {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no usable PEM certificate")]
    NoCertificate { path: String },
}

/// The SMTP side of [`MailSender`]: every SMTP route (channel or agent account) goes through it.
#[derive(Clone)]
pub struct SmtpSender {
    hello: ClientId,
    timeout: Duration,
    /// Extra trust anchors (a company CA; the test CA in tests) besides the public web roots.
    extra_roots_pem: Arc<Vec<u8>>,
    tls: Arc<rustls::ClientConfig>,
    /// Which addresses a server name may resolve to (every one is checked at each connection, so
    /// a name cannot lead to the metadata service or, in the cloud, into the VPC).
    policy: NetworkPolicy,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// The variable naming a PEM file of extra CA certificates to trust.
    pub const CA_FILE_VAR: &'static str = "MAILROOM_SMTP_CA_FILE";
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// A sender trusting the public web roots and the certificates in `extra_ca_pem`, under the
    /// one-machine network policy ([`NetworkPolicy::LOCAL`]; see [`Self::with_policy`]).
    pub fn new(extra_ca_pem: Option<Vec<u8>>, timeout: Duration) -> Result<Self, SmtpSetupError> {
        let pem = extra_ca_pem.unwrap_or_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            // A certificate rustls cannot use is skipped, as the platform verifiers do.
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let hello = hostname_client_id();
        Ok(Self { hello, timeout, extra_roots_pem: Arc::new(pem), tls: Arc::new(tls), policy: NetworkPolicy::LOCAL })
    }

    /// The same sender, connecting only where `policy` allows (the cloud functions pass the
    /// deployment's policy, public addresses only unless configured otherwise).
    pub fn with_policy(self, policy: NetworkPolicy) -> Self {
        Self { policy, ..self }
    }

    /// Reads `MAILROOM_SMTP_CA_FILE` when set (a configuration error names the file).
    pub fn from_env() -> Result<Self, SmtpSetupError> {
        let pem = match std::env::var(Self::CA_FILE_VAR) {
            Ok(path) if !path.trim().is_empty() => {
                let bytes =
                    std::fs::read(&path).map_err(|source| SmtpSetupError::ReadCa { path: path.clone(), source })?;
                if CertificateDer::pem_slice_iter(&bytes).flatten().next().is_none() {
                    return Err(SmtpSetupError::NoCertificate { path });
                }
                Some(bytes)
            }
            _ => None,
        };
        Self::new(pem, Self::DEFAULT_TIMEOUT)
    }

    async fn connect(&self, server: &SmtpServer) -> Result<AsyncSmtpConnection, SendError> {
        let host = server.host.as_str();
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, server.port))
            .await
            .map_err(|e| transient(format!("cannot resolve {host}: {e}"), e))?
            .collect();
        let ips: Vec<_> = addresses.iter().map(SocketAddr::ip).collect();
        // A refused address is the admin's to fix, not a moment's trouble: no retry.
        self.policy.check_all(&ips).map_err(|refusal| SendError::Configuration {
            reply: reply(None, format!("the outgoing server {host} is not allowed: {refusal}")),
            source: None,
        })?;
        // Connect to the addresses just checked, not to the name again (its answer may change).
        let tcp = TcpStream::connect(&addresses[..])
            .await
            .map_err(|e| transient(format!("cannot connect to {}:{}: {e}", host, server.port), e))?;
        // The point of opening the socket ourselves (see the module comment).
        tcp.set_nodelay(true).map_err(|e| transient("cannot set TCP_NODELAY".into(), e))?;
        match server.security {
            SmtpSecurity::Tls => {
                let name = ServerName::try_from(host.to_owned()).map_err(|e| SendError::Configuration {
                    reply: reply(None, format!("invalid server name {host}")),
                    source: Some(e.into()),
                })?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| tls_error(server, e))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(ImplicitTls(tls)), &self.hello)
                    .await
                    .map_err(|e| classify(e, Phase::Connect))
            }
            SmtpSecurity::Starttls => {
                let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                    .await
                    .map_err(|e| classify(e, Phase::Connect))?;
                if !conn.can_starttls() {
                    conn.abort().await;
                    return Err(SendError::configuration(format!("{server} does not offer STARTTLS")));
                }
                let mut params = TlsParameters::builder(host.to_owned());
                if !self.extra_roots_pem.is_empty() {
                    let cert = Certificate::from_pem(&self.extra_roots_pem).map_err(|e| SendError::Configuration {
                        reply: reply(None, "the extra CA certificates are unusable".into()),
                        source: Some(e.into()),
                    })?;
                    params = params.add_root_certificate(cert);
                }
                let params = params.build_rustls().map_err(|e| classify(e, Phase::Connect))?;
                conn.starttls(params, &self.hello).await.map_err(|e| classify(e, Phase::Connect))?;
                Ok(conn)
            }
        }
    }

    /// Connects, secures and signs in.
    async fn session(&self, route: &Route) -> Result<(AsyncSmtpConnection, SmtpServer), SendError> {
        let Route::Smtp { server, login, password } = route else {
            return Err(SendError::configuration("the SMTP sender was given a route that is not SMTP"));
        };
        let mut conn = self.connect(server).await?;
        let credentials = Credentials::new(login.as_str().to_owned(), password.expose_secret().to_owned());
        if let Err(e) = conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials).await {
            conn.abort().await;
            return Err(classify(e, Phase::Auth));
        }
        Ok((conn, server.clone()))
    }
}

fn hostname_client_id() -> ClientId {
    // EHLO names this host; an unusable hostname falls back to lettre's default.
    hostname_guess().map(ClientId::Domain).unwrap_or_default()
}

fn hostname_guess() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        .then(|| name.to_owned())
}

#[async_trait]
impl MailSender for SmtpSender {
    async fn send(&self, route: &Route, envelope: &MailEnvelope, raw: &[u8]) -> Result<Accepted, SendError> {
        let attempt = async {
            let (mut conn, _) = self.session(route).await?;
            let envelope = lettre_envelope(envelope)?;
            let response = conn.send(&envelope, raw).await.map_err(|e| classify(e, Phase::Send))?;
            // The message is accepted; a failing QUIT changes nothing.
            let _ = conn.quit().await;
            Ok(Accepted { response: describe(&response) })
        };
        tokio::time::timeout(self.timeout, attempt).await.unwrap_or_else(|_| {
            Err(SendError::Transient {
                reply: reply(None, format!("no answer within {} s", self.timeout.as_secs())),
                source: None,
            })
        })
    }

    async fn check(&self, route: &Route) -> Result<String, SendError> {
        let attempt = async {
            let (mut conn, server) = self.session(route).await?;
            let _ = conn.quit().await;
            Ok(format!("connected to {server}, TLS established, signed in"))
        };
        tokio::time::timeout(self.timeout, attempt).await.unwrap_or_else(|_| {
            Err(SendError::Transient {
                reply: reply(None, format!("no answer within {} s", self.timeout.as_secs())),
                source: None,
            })
        })
    }
}

fn lettre_envelope(envelope: &MailEnvelope) -> Result<Envelope, SendError> {
    let address = |a: &EmailAddress| {
        a.as_str().parse::<Address>().map_err(|e| SendError::Rejected {
            reply: reply(None, "an address cannot be used in the SMTP envelope".into()),
            source: Some(e.into()),
        })
    };
    let to = envelope.recipients.iter().map(address).collect::<Result<Vec<_>, _>>()?;
    Envelope::new(Some(address(&envelope.from)?), to).map_err(|e| SendError::Rejected {
        reply: reply(None, "the message has no recipient".into()),
        source: Some(e.into()),
    })
}

fn describe(response: &Response) -> String {
    let code: u16 = response.code().into();
    format!("{code} {}", response.message().collect::<Vec<_>>().join(" ")).trim_end().to_owned()
}

fn reply(code: Option<u16>, text: String) -> ServerReply {
    ServerReply { code, text }
}

fn transient(text: String, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SendError {
    SendError::Transient { reply: reply(None, text), source: Some(source.into()) }
}

fn tls_error(server: &SmtpServer, e: io::Error) -> SendError {
    // A certificate the client does not trust is an admin's problem, not a passing one.
    let text = format!("TLS with {server} failed: {e}");
    if e.kind() == io::ErrorKind::InvalidData {
        SendError::Configuration { reply: reply(None, text), source: Some(e.into()) }
    } else {
        SendError::Transient { reply: reply(None, text), source: Some(e.into()) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Auth,
    Send,
}

/// Sorts lettre's errors into the three kinds the send worker acts on, keeping the server's words.
fn classify(e: lettre::transport::smtp::Error, phase: Phase) -> SendError {
    let code = e.status().map(u16::from);
    let text = match (code, std::error::Error::source(&e)) {
        (Some(code), Some(words)) => format!("{code} {words}"),
        (Some(code), None) => code.to_string(),
        (None, _) => e.to_string(),
    };
    let reply = reply(code, text);
    let source = Some(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    let inner = source.as_ref().and_then(|s| s.downcast_ref::<lettre::transport::smtp::Error>()).expect("just boxed");
    if inner.is_transient() || inner.is_timeout() {
        return SendError::Transient { reply, source };
    }
    if inner.is_permanent() {
        let auth = phase == Phase::Auth || code.is_some_and(|c| AUTH_CODES.contains(&c));
        return if auth { SendError::Configuration { reply, source } } else { SendError::Rejected { reply, source } };
    }
    if inner.is_tls() || inner.is_client() || phase == Phase::Auth {
        return SendError::Configuration { reply, source };
    }
    // Network and connection errors, unparsable answers: the server or the path is unwell.
    SendError::Transient { reply, source }
}

/// A TLS stream lettre treats as its plain transport: implicit TLS is already in place.
#[derive(Debug)]
struct ImplicitTls(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for ImplicitTls {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}
