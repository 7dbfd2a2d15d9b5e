//! Mail servers over IMAP (async-imap) and POP3 (a small client of our own on tokio), with TLS
//! from tokio-rustls (the public web roots plus an optional extra CA, e.g. a test CA), XOAUTH2
//! for Microsoft 365, and a time-out on every network step.

mod imap;
mod net;
mod pop3;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

pub use self::net::DnsResolver;
pub use self::tls::{TlsSettings, TlsSetupError};
use crate::adapters::microsoft_identity::{ClientCredentials, ClientCredentialsTokens};
use crate::domain::mailbox::{MailboxSettings, OAuth2Client, ProtocolFamily};
use crate::ports::identity::AccessTokenSource;
use crate::ports::mailbox::{
    ConnectionInfo, MailEndpoint, MailboxConnector, MailboxCredentials, MailboxError, MailboxSession, TokenSources,
};

/// The scope of Exchange Online's IMAP and POP3 (application permissions `IMAP.AccessAsApp`,
/// `POP.AccessAsApp`).
pub const EXCHANGE_SCOPE: &str = "https://outlook.office365.com/.default";

/// Time-outs of the network steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect and TLS handshake, each.
    pub connect: Duration,
    /// Each command, and each message of a download.
    pub command: Duration,
}

impl Timeouts {
    pub fn from_settings(settings: &MailboxSettings) -> Self {
        Self {
            connect: Duration::from_secs(settings.connect_timeout_secs),
            command: Duration::from_secs(settings.command_timeout_secs),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::from_settings(&MailboxSettings::default())
    }
}

/// Connects to IMAP and POP3 servers over the network.
pub struct NetworkMailboxConnector {
    tls: TlsSettings,
    timeouts: Timeouts,
}

impl NetworkMailboxConnector {
    pub fn new(tls: TlsSettings, timeouts: Timeouts) -> Self {
        Self { tls, timeouts }
    }

    /// From the `[mailbox]` settings (reads `extra_ca_file` once).
    pub fn from_settings(settings: &MailboxSettings) -> Result<Self, TlsSetupError> {
        let tls = match &settings.extra_ca_file {
            Some(path) => TlsSettings::with_extra_ca_file(std::path::Path::new(path))?,
            None => TlsSettings::public_roots(),
        };
        Ok(Self::new(tls, Timeouts::from_settings(settings)))
    }
}

#[async_trait]
impl MailboxConnector for NetworkMailboxConnector {
    async fn connect(
        &self,
        endpoint: &MailEndpoint,
        credentials: &MailboxCredentials,
    ) -> Result<(MailboxSession, ConnectionInfo), MailboxError> {
        match endpoint.protocol.family() {
            ProtocolFamily::Imap => {
                let (session, info) = imap::connect(endpoint, credentials, &self.tls, self.timeouts).await?;
                Ok((MailboxSession::Imap(Box::new(session)), info))
            }
            ProtocolFamily::Pop3 => {
                let (session, info) = pop3::connect(endpoint, credentials, &self.tls, self.timeouts).await?;
                Ok((MailboxSession::Pop3(Box::new(session)), info))
            }
        }
    }
}

/// OAuth2 client credentials against the app's authority, one cached token source per app.
pub struct ClientCredentialsTokenSources {
    http: reqwest::Client,
}

impl ClientCredentialsTokenSources {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

impl Default for ClientCredentialsTokenSources {
    fn default() -> Self {
        Self::new(ClientCredentialsTokens::default_http())
    }
}

impl TokenSources for ClientCredentialsTokenSources {
    fn source(&self, client: &OAuth2Client, client_secret: SecretString) -> Arc<dyn AccessTokenSource> {
        Arc::new(ClientCredentialsTokens::new(
            ClientCredentials {
                authority: client.authority.clone(),
                tenant: client.tenant.clone(),
                client_id: client.client_id.clone(),
                client_secret,
                scope: EXCHANGE_SCOPE.to_owned(),
            },
            self.http.clone(),
        ))
    }
}

/// The SASL XOAUTH2 initial response (`user=..^Aauth=Bearer ..^A^A`), before base64.
pub(crate) fn xoauth2_response(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

/// A server's words, made safe to show an admin: printable ASCII only, and short.
pub(crate) fn server_words(raw: &str) -> String {
    let cleaned: String =
        raw.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { ' ' }).take(160).collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() { "no reason given".to_owned() } else { cleaned }
}

/// Runs one network step with its time-out.
pub(crate) async fn step<T>(
    timeout: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, MailboxError>>,
) -> Result<T, MailboxError> {
    tokio::time::timeout(timeout, fut).await.map_err(|_| MailboxError::Timeout { step: what })?
}

/// A UID set in IMAP syntax, consecutive runs collapsed: `1:5,7,9:12`.
pub(crate) fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_collapse_runs() {
        assert_eq!(uid_set(&[9, 1, 2, 3, 7, 10, 3]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn server_words_are_printable_and_short() {
        assert_eq!(
            server_words("[AUTHENTICATIONFAILED]\r\n Authentication\x07 failed."),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(server_words(&"x".repeat(500)).len(), 160);
        assert_eq!(server_words(""), "no reason given");
    }

    #[test]
    fn xoauth2_has_the_sasl_shape() {
        assert_eq!(xoauth2_response("u@x", "t"), "user=u@x\u{1}auth=Bearer t\u{1}\u{1}");
    }
}
