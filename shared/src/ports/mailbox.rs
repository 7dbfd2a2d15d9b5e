//! Mailboxes Mailroom polls: the protocol sessions (IMAP, POP3), how a connection is made, and
//! the per-channel state that makes polling resumable (cursors, health, a lease).
//!
//! The use case decides *what* to fetch and when to acknowledge; the adapters speak the
//! protocols. Every network step of an adapter has a time-out, so a silent server costs a
//! failed run, never a stuck poller.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::BackendResult;
use super::identity::{AccessToken, AccessTokenSource};
use crate::domain::ids::ChannelName;
use crate::domain::mailbox::{
    ChannelHealth, ImapCursor, MailHost, MailProtocol, MailboxKey, MailboxUser, OAuth2Client, ProtocolFamily,
};

/// A failure talking to a mail server. `Display` is in plain words for admins and the channel's
/// health; sources (I/O and TLS errors) are kept for the logs.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("the server name {host} could not be found")]
    UnknownHost {
        host: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("connections to {host} are not allowed: {reason}")]
    Refused { host: String, reason: String },
    #[error("could not connect to {host} port {port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("the server did not answer in time ({step})")]
    Timeout { step: &'static str },
    #[error("the secure connection (TLS) to {host} failed")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server does not offer {0}, which this channel's protocol setting requires")]
    NoStartTls(&'static str),
    #[error("the server refused the sign-in ({detail})")]
    AuthFailed { detail: String },
    #[error("the server closed the connection")]
    Closed,
    #[error("the connection to the server failed")]
    Io {
        #[source]
        source: std::io::Error,
    },
    /// An answer the client could not use. `detail` is ours (never the server's text), so a
    /// mail server probed by mistake cannot make Mailroom echo its banner.
    #[error("the server answered something unexpected while {step}: {detail}")]
    Protocol { step: &'static str, detail: String },
    #[error("the server does not support {0}, which Mailroom needs")]
    Unsupported(&'static str),
    #[error("the INBOX could not be opened ({detail})")]
    NoInbox { detail: String },
}

impl MailboxError {
    /// Whether the same attempt could succeed later without anyone changing a setting.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Self::Refused { .. }
                | Self::NoStartTls(_)
                | Self::AuthFailed { .. }
                | Self::Unsupported(_)
                | Self::Tls { .. }
        )
    }

    /// The error with its causes, in words (for health and test-connection results). Causes
    /// are I/O and TLS errors, which never hold credentials.
    pub fn plain_words(&self) -> String {
        let mut words = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            words.push_str(": ");
            words.push_str(&s.to_string());
            source = s.source();
        }
        words
    }
}

/// Where to connect: the name (for TLS) and the addresses it was resolved to and checked
/// against the network policy. Adapters connect only to these addresses, never resolving the
/// name again, so a DNS answer cannot change between the check and the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailEndpoint {
    pub protocol: MailProtocol,
    pub host: MailHost,
    pub port: u16,
    pub addresses: Vec<IpAddr>,
}

/// How to sign in. Never printed.
pub enum MailboxCredentials {
    /// IMAP `LOGIN`, POP3 `USER`/`PASS`.
    Password { user: MailboxUser, password: SecretString },
    /// `AUTHENTICATE XOAUTH2` / `AUTH XOAUTH2` with a bearer token.
    OAuth2 { user: MailboxUser, token: AccessToken },
}

impl std::fmt::Debug for MailboxCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Password { .. } => f.write_str("MailboxCredentials::Password(..)"),
            Self::OAuth2 { .. } => f.write_str("MailboxCredentials::OAuth2(..)"),
        }
    }
}

/// What a new connection looks like, for "test connection".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The TLS version, e.g. `TLSv1.3`; `None` for an unencrypted connection.
    pub tls: Option<String>,
    /// The address connected to.
    pub address: IpAddr,
}

/// The state of the selected INBOX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImapInbox {
    pub uid_validity: u32,
    /// The UID the next message will get (`UIDNEXT`).
    pub uid_next: u32,
    /// Messages in the mailbox.
    pub exists: u32,
}

/// One message as fetched.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    pub uid: u32,
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for FetchedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchedMessage").field("uid", &self.uid).field("bytes", &self.raw.len()).finish()
    }
}

/// Why an IDLE wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleOutcome {
    /// The server announced a change (new mail, expunge, flags).
    Changed,
    /// Nothing happened within the wait; renew it.
    TimedOut,
    /// The stop signal fired.
    Stopped,
}

/// A signed-in IMAP connection. UIDs are always of the selected INBOX.
#[async_trait]
pub trait ImapSession: Send {
    /// `SELECT INBOX`: UIDVALIDITY, UIDNEXT and the message count.
    async fn select_inbox(&mut self) -> Result<ImapInbox, MailboxError>;
    /// UIDs greater than `after`, ascending.
    async fn uids_after(&mut self, after: u32) -> Result<Vec<u32>, MailboxError>;
    /// UIDs from `from` to `through` carrying `\Seen`, ascending.
    async fn seen_between(&mut self, from: u32, through: u32) -> Result<Vec<u32>, MailboxError>;
    /// UIDs up to `through` flagged `\Deleted` (a deletion an earlier run did not finish).
    async fn deleted_through(&mut self, through: u32) -> Result<Vec<u32>, MailboxError>;
    /// `RFC822.SIZE` of each UID that still exists.
    async fn sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, MailboxError>;
    /// `UID FETCH BODY.PEEK[]`: the messages that still exist, without setting `\Seen`.
    async fn fetch(&mut self, uids: &[u32]) -> Result<Vec<FetchedMessage>, MailboxError>;
    /// `UID STORE +FLAGS (\Seen)`.
    async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), MailboxError>;
    /// Flags `\Deleted` and expunges exactly these UIDs (`UID EXPUNGE`, or `EXPUNGE` when the
    /// server has no UIDPLUS and nothing else is flagged).
    async fn delete(&mut self, uids: &[u32]) -> Result<(), MailboxError>;
    /// Whether the server announced IDLE.
    fn supports_idle(&self) -> bool;
    /// Waits in IDLE until the server announces a change, `timeout` passes or `stop` turns true.
    async fn idle(
        &mut self,
        timeout: Duration,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<IdleOutcome, MailboxError>;
    /// `LOGOUT`, best effort.
    async fn logout(&mut self);
}

/// A signed-in POP3 connection (the TRANSACTION state). Message numbers are of this session.
#[async_trait]
pub trait Pop3Session: Send {
    /// `STAT`: message count and total size.
    async fn stat(&mut self) -> Result<(u32, u64), MailboxError>;
    /// `UIDL`: every message's number and unique id, in order.
    async fn uidl(&mut self) -> Result<Vec<(u32, String)>, MailboxError>;
    /// `LIST`: every message's number and size, in order.
    async fn list(&mut self) -> Result<Vec<(u32, u64)>, MailboxError>;
    /// `RETR` of each message, in order: un-dot-stuffed, line ends as sent. The commands are
    /// pipelined when the server announces PIPELINING (RFC 2449), so a batch costs one round
    /// trip instead of one per message.
    async fn retr(&mut self, numbers: &[u32]) -> Result<Vec<Vec<u8>>, MailboxError>;
    /// `DELE` of each message (pipelined likewise): marks them; the deletion happens only at
    /// `quit`.
    async fn dele(&mut self, numbers: &[u32]) -> Result<(), MailboxError>;
    /// `QUIT`: commits deletions. A connection that drops before it deletes nothing.
    async fn quit(&mut self) -> Result<(), MailboxError>;
}

/// A signed-in session of either protocol.
pub enum MailboxSession {
    Imap(Box<dyn ImapSession>),
    Pop3(Box<dyn Pop3Session>),
}

impl MailboxSession {
    pub fn family(&self) -> ProtocolFamily {
        match self {
            Self::Imap(_) => ProtocolFamily::Imap,
            Self::Pop3(_) => ProtocolFamily::Pop3,
        }
    }

    /// Ends the session politely (IMAP `LOGOUT`, POP3 `QUIT`), best effort.
    pub async fn close(&mut self) {
        match self {
            Self::Imap(s) => s.logout().await,
            Self::Pop3(s) => {
                let _ = s.quit().await;
            }
        }
    }
}

/// Opens signed-in sessions: TCP, TLS (implicit or STARTTLS/STLS), greeting and sign-in.
#[async_trait]
pub trait MailboxConnector: Send + Sync {
    async fn connect(
        &self,
        endpoint: &MailEndpoint,
        credentials: &MailboxCredentials,
    ) -> Result<(MailboxSession, ConnectionInfo), MailboxError>;
}

/// Resolves a server name to addresses (DNS in production, a table in tests).
#[async_trait]
pub trait HostResolver: Send + Sync {
    async fn resolve(&self, host: &MailHost, port: u16) -> Result<Vec<IpAddr>, MailboxError>;
}

/// Builds the token source for an OAuth2 app registration (client credentials for the
/// Exchange Online scope). Implementations cache tokens until shortly before they expire.
pub trait TokenSources: Send + Sync {
    fn source(&self, client: &OAuth2Client, client_secret: SecretString) -> Arc<dyn AccessTokenSource>;
}

/// Per-channel polling state: SQLite locally, the DynamoDB state table in AWS.
///
/// Cursors are kept per mailbox key, so a channel pointed at another mailbox starts afresh.
#[async_trait]
pub trait MailboxStateStore: Send + Sync {
    async fn imap_cursor(&self, channel: &ChannelName, mailbox: &MailboxKey) -> BackendResult<Option<ImapCursor>>;
    async fn save_imap_cursor(
        &self,
        channel: &ChannelName,
        mailbox: &MailboxKey,
        cursor: &ImapCursor,
    ) -> BackendResult<()>;
    /// The POP3 UIDLs already ingested (and, in delete mode, not yet known to be deleted).
    async fn pop3_taken(&self, channel: &ChannelName, mailbox: &MailboxKey) -> BackendResult<HashSet<String>>;
    async fn pop3_add(&self, channel: &ChannelName, mailbox: &MailboxKey, uidl: &str) -> BackendResult<()>;
    /// Forgets UIDLs that are no longer on the server.
    async fn pop3_forget(&self, channel: &ChannelName, mailbox: &MailboxKey, uidls: &[String]) -> BackendResult<()>;

    async fn health(&self, channel: &ChannelName) -> BackendResult<Option<ChannelHealth>>;
    async fn save_health(&self, channel: &ChannelName, health: &ChannelHealth) -> BackendResult<()>;

    /// Takes the channel's polling lease until `until` if it is free, expired at `now`, or
    /// already `owner`'s. Two pollers (overlapping Lambda runs, `mailroom serve` beside a Lambda)
    /// then never read one mailbox at the same time.
    async fn try_lease(
        &self,
        channel: &ChannelName,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BackendResult<bool>;
    /// Gives the lease up if `owner` holds it.
    async fn release_lease(&self, channel: &ChannelName, owner: &str) -> BackendResult<()>;
}
