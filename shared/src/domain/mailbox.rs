//! Incoming mailboxes: how a channel's mail is fetched over IMAP or POP3, the cursor that makes
//! polling resumable, the channel's health as admins see it, and the network rule that keeps
//! "test connection" from probing internal networks. Values and rules only: no sockets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::ids::InvalidValue;

fn invalid(kind: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { kind, reason }
}

/// A setting of a channel that is not valid, named as the admin API and the config file name it
/// (relative to the channel, e.g. `mailbox.auth.tenant`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

// ---------------------------------------------------------------------------------------- protocol

/// How Mailroom talks to the incoming server. The plain protocols can be upgraded with
/// STARTTLS (IMAP) or STLS (POP3) on the same port; `imap` and `pop3` alone are unencrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MailProtocol {
    #[serde(rename = "imap")]
    Imap,
    #[serde(rename = "imap+starttls")]
    ImapStarttls,
    #[serde(rename = "imaps")]
    Imaps,
    #[serde(rename = "pop3")]
    Pop3,
    #[serde(rename = "pop3+stls")]
    Pop3Stls,
    #[serde(rename = "pop3s")]
    Pop3s,
}

/// IMAP or POP3, whatever the transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolFamily {
    Imap,
    Pop3,
}

/// Transport security of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Unencrypted: passwords and mail travel in clear text.
    None,
    /// Plain connection upgraded with STARTTLS/STLS before signing in; refused if not offered.
    StartTls,
    /// TLS from the first byte (ports 993 and 995).
    Implicit,
}

impl MailProtocol {
    pub const ALL: [MailProtocol; 6] =
        [Self::Imap, Self::ImapStarttls, Self::Imaps, Self::Pop3, Self::Pop3Stls, Self::Pop3s];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Imap => "imap",
            Self::ImapStarttls => "imap+starttls",
            Self::Imaps => "imaps",
            Self::Pop3 => "pop3",
            Self::Pop3Stls => "pop3+stls",
            Self::Pop3s => "pop3s",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// 143 / 993 for IMAP, 110 / 995 for POP3.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Imap | Self::ImapStarttls => 143,
            Self::Imaps => 993,
            Self::Pop3 | Self::Pop3Stls => 110,
            Self::Pop3s => 995,
        }
    }

    pub fn family(self) -> ProtocolFamily {
        match self {
            Self::Imap | Self::ImapStarttls | Self::Imaps => ProtocolFamily::Imap,
            Self::Pop3 | Self::Pop3Stls | Self::Pop3s => ProtocolFamily::Pop3,
        }
    }

    pub fn tls(self) -> TlsMode {
        match self {
            Self::Imap | Self::Pop3 => TlsMode::None,
            Self::ImapStarttls | Self::Pop3Stls => TlsMode::StartTls,
            Self::Imaps | Self::Pop3s => TlsMode::Implicit,
        }
    }
}

impl fmt::Display for MailProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------- values

/// The incoming server: a DNS name or an IP address literal, stored lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MailHost(String);

impl MailHost {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "server name";
        let host = raw.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if host.is_empty() {
            return Err(invalid(KIND, "it is empty"));
        }
        if host.parse::<IpAddr>().is_ok() {
            return Ok(Self(host));
        }
        let name = host.strip_suffix('.').unwrap_or(&host);
        if name.len() > 253 {
            return Err(invalid(KIND, "it is longer than 253 characters"));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name.split('.').all(label_ok) {
            return Err(invalid(KIND, "use a host name such as imap.example.com, or an IP address"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address, when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.0.parse().ok()
    }
}

impl fmt::Display for MailHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MailHost {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MailHost> for String {
    fn from(value: MailHost) -> Self {
        value.0
    }
}

/// The user id a mailbox signs in with (often an email address). Never logged.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MailboxUser(String);

impl MailboxUser {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "user id";
        let user = raw.trim();
        if user.is_empty() {
            return Err(invalid(KIND, "it is empty"));
        }
        if user.len() > 320 {
            return Err(invalid(KIND, "it is longer than 320 characters"));
        }
        // A line break would end the command it is sent in and start another.
        if user.chars().any(|c| c.is_control()) {
            return Err(invalid(KIND, "it contains control characters"));
        }
        Ok(Self(user.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MailboxUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MailboxUser(..)")
    }
}

impl TryFrom<String> for MailboxUser {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MailboxUser> for String {
    fn from(value: MailboxUser) -> Self {
        value.0
    }
}

/// The name of a secret in the secret store (a table in the data directory, or AWS Secrets
/// Manager under the deployment's prefix), e.g. `channel/support/password`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretName(String);

impl SecretName {
    /// Letters, digits and `/_+=.@-` (the characters Secrets Manager allows), 1 to 256 of them.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "secret name";
        let name = raw.trim();
        if name.is_empty() {
            return Err(invalid(KIND, "it is empty"));
        }
        if name.len() > 256 {
            return Err(invalid(KIND, "it is longer than 256 characters"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c)) || name.starts_with('/') {
            return Err(invalid(KIND, "only letters, digits and /_+=.@- are allowed, not starting with /"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name under which a channel's password (or OAuth2 client secret) is stored.
    pub fn for_channel(channel: &super::ids::ChannelName, what: &str) -> Self {
        Self(format!("channel/{}/{what}", channel.as_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SecretName {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SecretName> for String {
    fn from(value: SecretName) -> Self {
        value.0
    }
}

/// Checks a password or client secret before it is stored: a line break or NUL would end the
/// IMAP/POP3 command it is sent in.
pub fn check_secret_value(value: &SecretString) -> Result<(), &'static str> {
    let v = value.expose_secret();
    if v.is_empty() {
        return Err("it is empty");
    }
    if v.len() > 4096 {
        return Err("it is longer than 4096 characters");
    }
    if v.contains(['\r', '\n', '\0']) {
        return Err("it contains a line break or NUL character");
    }
    Ok(())
}

/// A write-only secret as a channel refers to it.
///
/// Stored channels only ever hold `Stored` (a name in the secret store). A config file may also
/// give the value itself (`password = "..."`) or an environment variable
/// (`password = { env = "VAR" }`); start-up moves such values into the secret store and keeps the
/// name. The value is never serialized: an inline secret prints as `"********"`.
#[derive(Clone)]
pub enum SecretRef {
    /// `{ secret = "channel/support/password" }`
    Stored(SecretName),
    /// `"the value"`: only in a local config file.
    Inline(SecretString),
    /// `{ env = "SUPPORT_MAILBOX_PASSWORD" }`: read at start-up.
    Env(String),
}

impl SecretRef {
    pub fn stored_name(&self) -> Option<&SecretName> {
        match self {
            Self::Stored(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stored(name) => f.debug_tuple("Stored").field(name).finish(),
            Self::Inline(_) => f.write_str("Inline(********)"),
            Self::Env(var) => f.debug_tuple("Env").field(var).finish(),
        }
    }
}

impl PartialEq for SecretRef {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Stored(a), Self::Stored(b)) => a == b,
            (Self::Inline(a), Self::Inline(b)) => a.expose_secret() == b.expose_secret(),
            (Self::Env(a), Self::Env(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretTable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<SecretName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretForm {
    Value(String),
    Table(SecretTable),
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match SecretForm::deserialize(deserializer)? {
            SecretForm::Value(v) => Ok(Self::Inline(SecretString::from(v))),
            SecretForm::Table(SecretTable { secret: Some(name), env: None }) => Ok(Self::Stored(name)),
            SecretForm::Table(SecretTable { secret: None, env: Some(var) }) if !var.trim().is_empty() => {
                Ok(Self::Env(var.trim().to_owned()))
            }
            SecretForm::Table(_) => {
                Err(D::Error::custom("give the value, { secret = \"name\" } or { env = \"VARIABLE\" }"))
            }
        }
    }
}

impl Serialize for SecretRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Stored(name) => SecretTable { secret: Some(name.clone()), env: None }.serialize(serializer),
            Self::Env(var) => SecretTable { secret: None, env: Some(var.clone()) }.serialize(serializer),
            Self::Inline(_) => serializer.serialize_str("********"),
        }
    }
}

/// What happens to a message on the server once it is durably ingested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterFetch {
    /// Leave a copy on the server; IMAP marks it `\Seen`.
    #[default]
    #[serde(alias = "leave")]
    MarkSeen,
    /// Delete it from the server (IMAP: `\Deleted` and expunge; POP3: `DELE`).
    Delete,
}

impl AfterFetch {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MarkSeen => "mark_seen",
            Self::Delete => "delete",
        }
    }
}

/// The public Microsoft identity platform, the default OAuth2 authority.
pub const MICROSOFT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Microsoft's sovereign-cloud authorities, accepted where custom authorities are not.
pub const MICROSOFT_AUTHORITIES: &[&str] = &[
    MICROSOFT_AUTHORITY,
    "https://login.microsoftonline.us",
    "https://login.partner.microsoftonline.cn",
    "https://login.chinacloudapi.cn",
];

fn default_authority() -> String {
    MICROSOFT_AUTHORITY.to_owned()
}

/// A Microsoft 365 / Entra ID app registration using the client-credentials grant (the mailbox
/// is reached with application permissions `IMAP.AccessAsApp` / `POP.AccessAsApp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Client {
    /// e.g. `https://login.microsoftonline.com` (the default), or a local authority in tests.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// The directory (tenant) id or domain, e.g. `contoso.onmicrosoft.com`.
    pub tenant: String,
    /// The application (client) id.
    pub client_id: String,
    pub client_secret: SecretRef,
}

/// How the mailbox signs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MailboxAuth {
    /// User id and password (e.g. a Gmail app password): IMAP `LOGIN`, POP3 `USER`/`PASS`.
    Normal { password: SecretRef },
    /// Microsoft 365 / Exchange Online: an OAuth2 token from client credentials, sent with
    /// XOAUTH2.
    Oauth2(OAuth2Client),
}

impl MailboxAuth {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Normal { .. } => "normal",
            Self::Oauth2(_) => "oauth2",
        }
    }

    /// The secret this sign-in needs.
    pub fn secret(&self) -> &SecretRef {
        match self {
            Self::Normal { password } => password,
            Self::Oauth2(c) => &c.client_secret,
        }
    }

    pub fn secret_mut(&mut self) -> &mut SecretRef {
        match self {
            Self::Normal { password } => password,
            Self::Oauth2(c) => &mut c.client_secret,
        }
    }

    /// `password` or `client-secret`: the last part of the secret's name in the store.
    pub fn secret_label(&self) -> &'static str {
        match self {
            Self::Normal { .. } => "password",
            Self::Oauth2(_) => "client-secret",
        }
    }
}

/// The incoming server of a channel and how its mail is taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingMailbox {
    pub protocol: MailProtocol,
    pub host: MailHost,
    /// When absent, the protocol's default (110 / 995 / 143 / 993).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The user id; with `oauth2`, the mailbox address the app reads.
    pub user: MailboxUser,
    pub auth: MailboxAuth,
    #[serde(default)]
    pub after_fetch: AfterFetch,
}

impl IncomingMailbox {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.protocol.default_port())
    }

    /// Which mailbox this is, independent of how it is reached securely: cursors are kept per
    /// key, so pointing a channel at another server or user starts afresh instead of skipping
    /// mail. A hash, so user ids stay out of keys.
    pub fn key(&self) -> MailboxKey {
        let family = match self.protocol.family() {
            ProtocolFamily::Imap => "imap",
            ProtocolFamily::Pop3 => "pop3",
        };
        let digest = Sha256::digest(format!("{family}\0{}\0{}", self.host.as_str(), self.user.as_str()).as_bytes());
        MailboxKey(hex::encode(&digest[..8]))
    }

    /// Checks what serde cannot: the port, and the OAuth2 fields.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.port == Some(0) {
            return Err(FieldError::new("mailbox.port", "must be between 1 and 65535"));
        }
        if let MailboxAuth::Oauth2(c) = &self.auth {
            check_authority_url(&c.authority).map_err(|p| FieldError::new("mailbox.auth.authority", p))?;
            check_plain_field(&c.tenant).map_err(|p| FieldError::new("mailbox.auth.tenant", p))?;
            check_plain_field(&c.client_id).map_err(|p| FieldError::new("mailbox.auth.client_id", p))?;
        }
        let field = match &self.auth {
            MailboxAuth::Normal { .. } => "mailbox.auth.password",
            MailboxAuth::Oauth2(_) => "mailbox.auth.client_secret",
        };
        if let SecretRef::Inline(v) = self.auth.secret() {
            check_secret_value(v).map_err(|p| FieldError::new(field, p))?;
        }
        Ok(())
    }
}

fn check_plain_field(v: &str) -> Result<(), &'static str> {
    if v.trim().is_empty() {
        return Err("is required");
    }
    if v.len() > 256 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
        return Err("only letters, digits, '-', '.' and '_' are allowed (up to 256)");
    }
    Ok(())
}

/// An authority is an `https://` (or, for a local one, `http://`) URL with a host and nothing
/// after it but an optional path.
pub fn check_authority_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with https:// (e.g. https://login.microsoftonline.com)")?;
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    if host.is_empty() || rest.contains(['?', '#', '@', ' ']) {
        return Err("must be a URL such as https://login.microsoftonline.com");
    }
    Ok(())
}

/// The host of an authority URL (without port).
pub fn authority_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let hostport = rest.split('/').next()?;
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next();
    }
    hostport.split(':').next()
}

/// A stable id for one mailbox (protocol family, host, user), used to key cursors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MailboxKey(String);

impl MailboxKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.len() == 16 && raw.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(invalid("mailbox key", "16 hex digits expected"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MailboxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------- cursors

/// Where IMAP polling of one mailbox stands: every message with a UID up to `last_uid` (in this
/// UIDVALIDITY) is ingested and acknowledged (marked seen or deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImapCursor {
    pub uid_validity: u32,
    pub last_uid: u32,
    /// On first contact with a mailbox whose mail is left on the server, messages up to this UID
    /// are taken only if they are still unseen: years of mail someone already read are not
    /// turned into new interactions. 0 when it does not apply (later mail is always taken).
    #[serde(default)]
    pub unseen_only_through: u32,
}

impl ImapCursor {
    /// The cursor for a mailbox seen for the first time.
    pub fn first_contact(uid_validity: u32, uid_next: u32, after_fetch: AfterFetch) -> Self {
        let through = match after_fetch {
            AfterFetch::MarkSeen => uid_next.saturating_sub(1),
            // A mailbox whose mail we delete is ours alone: take everything in it.
            AfterFetch::Delete => 0,
        };
        Self { uid_validity, last_uid: 0, unseen_only_through: through }
    }

    /// After UIDVALIDITY changed, every UID is new: take everything again. The duplicate checks
    /// of ingest (same bytes, same logical message) absorb what was already taken.
    pub fn resync(uid_validity: u32) -> Self {
        Self { uid_validity, last_uid: 0, unseen_only_through: 0 }
    }

    /// Moves past a UID that is ingested and acknowledged (or gone from the server).
    pub fn advance(&mut self, uid: u32) {
        self.last_uid = self.last_uid.max(uid);
    }
}

/// What the cursor knows about a new mailbox state, decided on each `SELECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStart {
    /// No cursor yet for this mailbox.
    FirstContact(ImapCursor),
    /// UIDVALIDITY changed since the cursor was written: resynchronize.
    Resync { previous_uid_validity: u32, cursor: ImapCursor },
    /// Carry on from the stored cursor.
    Continue(ImapCursor),
}

impl CursorStart {
    pub fn decide(stored: Option<ImapCursor>, uid_validity: u32, uid_next: u32, after_fetch: AfterFetch) -> Self {
        match stored {
            None => Self::FirstContact(ImapCursor::first_contact(uid_validity, uid_next, after_fetch)),
            Some(c) if c.uid_validity != uid_validity => {
                Self::Resync { previous_uid_validity: c.uid_validity, cursor: ImapCursor::resync(uid_validity) }
            }
            Some(c) => Self::Continue(c),
        }
    }

    pub fn cursor(&self) -> ImapCursor {
        match self {
            Self::FirstContact(c) | Self::Continue(c) => *c,
            Self::Resync { cursor, .. } => *cursor,
        }
    }
}

// ---------------------------------------------------------------------------------------- health

/// Counts of one polling run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    /// Messages downloaded.
    pub fetched: u32,
    /// Messages handed to ingest that it recorded for the first time.
    pub ingested: u32,
    /// Messages ingest had seen before (a retry after a crash, a UIDVALIDITY resync).
    pub repeats: u32,
    /// Messages marked seen or deleted on the server.
    pub acknowledged: u32,
    /// Whether the run stopped at its count or time bound with mail still waiting.
    pub more_waiting: bool,
    /// Messages left on the server because they are larger than a run may download.
    #[serde(default)]
    pub too_large: u32,
}

/// Whether a channel's mailbox is being read, as admins see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Never polled yet.
    Unknown,
    /// The last run succeeded.
    Healthy,
    /// The last run failed; `last_error` says why.
    Failing,
}

/// A channel's mailbox health: stored after every run, shown to admins, logged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHealth {
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    /// In plain words, e.g. "the server refused the user id or password".
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    #[serde(default)]
    pub last_run: RunCounts,
}

impl ChannelHealth {
    pub fn status(&self) -> HealthStatus {
        match (self.consecutive_failures, self.last_attempt_at) {
            (_, None) => HealthStatus::Unknown,
            (0, Some(_)) => HealthStatus::Healthy,
            _ => HealthStatus::Failing,
        }
    }

    pub fn record_success(&mut self, at: DateTime<Utc>, counts: RunCounts) {
        self.last_attempt_at = Some(at);
        self.last_success_at = Some(at);
        self.consecutive_failures = 0;
        self.last_run = counts;
    }

    /// The error is kept until the next failure replaces it, so admins can still see why an
    /// earlier run failed; `status()` says whether it is current.
    pub fn record_failure(&mut self, at: DateTime<Utc>, words: impl Into<String>, counts: RunCounts) {
        self.last_attempt_at = Some(at);
        self.last_error = Some(words.into());
        self.last_error_at = Some(at);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_run = counts;
    }
}

// ---------------------------------------------------------------------------------------- network

/// What kind of address a server name resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// RFC 1918, carrier-grade NAT, unique-local IPv6 and other non-routed ranges.
    Private,
    /// 169.254.0.0/16 and fe80::/10: where cloud metadata services live.
    LinkLocal,
    /// A cloud instance metadata address outside the link-local range (e.g. `fd00:ec2::254`).
    Metadata,
    /// Unspecified, broadcast, multicast, documentation and reserved ranges: never a mail server.
    Unusable,
}

pub fn classify_ip(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if ip.is_link_local() {
        return AddressClass::LinkLocal;
    }
    // Alibaba's metadata service, outside the link-local range.
    if ip == Ipv4Addr::new(100, 100, 100, 200) {
        return AddressClass::Metadata;
    }
    if ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a, b, c) == (192, 0, 2)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
        || (a, b, c) == (192, 0, 0)
    {
        return AddressClass::Unusable;
    }
    if ip.is_private() || (a == 100 && (64..128).contains(&b)) || (a == 198 && (b == 18 || b == 19)) {
        return AddressClass::Private;
    }
    AddressClass::Public
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    // IPv4 embedded in IPv6 (mapped, or NAT64's well-known prefix) is judged as the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let seg = ip.segments();
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = seg[6].to_be_bytes();
        let [c, d] = seg[7].to_be_bytes();
        return classify_v4(Ipv4Addr::new(a, b, c, d));
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    // AWS's IPv6 instance metadata endpoint sits in the unique-local range.
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
        return AddressClass::Metadata;
    }
    if (seg[0] & 0xffc0) == 0xfe80 {
        return AddressClass::LinkLocal;
    }
    if ip.is_unspecified() || ip.is_multicast() || seg[0] == 0x2001 && seg[1] == 0x0db8 {
        return AddressClass::Unusable;
    }
    if (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfec0 {
        return AddressClass::Private;
    }
    AddressClass::Public
}

/// Which addresses Mailroom may connect to for a channel's mailbox. In the cloud deployment
/// this keeps "test connection" (and the poller) from reaching the metadata service or the VPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
    /// OAuth2 authorities other than Microsoft's (a local authority in tests).
    pub allow_custom_authority: bool,
}

/// Why an address was refused, in words an admin can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressRefusal {
    #[error("{0} is a link-local address, where cloud metadata services live; connections to it are never made")]
    LinkLocal(IpAddr),
    #[error("{0} is a cloud metadata address; connections to it are never made")]
    Metadata(IpAddr),
    #[error("{0} is not a usable server address")]
    Unusable(IpAddr),
    #[error("{0} is a loopback address; connections to it are not allowed here")]
    Loopback(IpAddr),
    #[error(
        "{0} is a private network address; connections to it are not allowed unless the setting mailbox.allow_private_networks is on"
    )]
    Private(IpAddr),
}

impl NetworkPolicy {
    /// The cloud deployment: public addresses only.
    pub const CLOUD: Self = Self { allow_loopback: false, allow_private: false, allow_custom_authority: false };
    /// One machine (`mailroom serve`, tests): the admin is the operator, anything goes but
    /// metadata and link-local addresses.
    pub const LOCAL: Self = Self { allow_loopback: true, allow_private: true, allow_custom_authority: true };

    pub fn check(&self, ip: IpAddr) -> Result<(), AddressRefusal> {
        match classify_ip(ip) {
            AddressClass::Public => Ok(()),
            AddressClass::LinkLocal => Err(AddressRefusal::LinkLocal(ip)),
            AddressClass::Metadata => Err(AddressRefusal::Metadata(ip)),
            AddressClass::Unusable => Err(AddressRefusal::Unusable(ip)),
            AddressClass::Loopback if self.allow_loopback => Ok(()),
            AddressClass::Loopback => Err(AddressRefusal::Loopback(ip)),
            AddressClass::Private if self.allow_private => Ok(()),
            AddressClass::Private => Err(AddressRefusal::Private(ip)),
        }
    }

    /// Every address a name resolved to must pass: one bad address refuses the name, so a DNS
    /// answer mixing a public and an internal address cannot slip through.
    pub fn check_all(&self, ips: &[IpAddr]) -> Result<(), AddressRefusal> {
        ips.iter().try_for_each(|ip| self.check(*ip))
    }

    /// Whether an OAuth2 authority URL may be used.
    pub fn check_authority(&self, url: &str) -> Result<(), &'static str> {
        check_authority_url(url)?;
        let known = MICROSOFT_AUTHORITIES.iter().any(|a| url.trim_end_matches('/').eq_ignore_ascii_case(a));
        if known || self.allow_custom_authority {
            Ok(())
        } else {
            Err("only Microsoft's sign-in authorities (such as https://login.microsoftonline.com) are allowed here")
        }
    }
}

// ---------------------------------------------------------------------------------------- settings

/// The `[mailbox]` section of the configuration: how polling runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailboxSettings {
    /// How often POP3 mailboxes (and IMAP ones without IDLE) are polled by `mailroom serve`.
    pub poll_interval_secs: u64,
    /// At most this many messages per mailbox per run; the next run carries on.
    pub max_messages_per_run: usize,
    /// A run stops taking new messages after this long (well inside the Lambda timeout).
    pub max_run_secs: u64,
    /// Mailboxes polled at the same time.
    pub concurrency: usize,
    pub connect_timeout_secs: u64,
    /// For each command, and for each message downloaded.
    pub command_timeout_secs: u64,
    /// IDLE is renewed this often (servers drop it after 30 minutes).
    pub idle_renew_secs: u64,
    /// How soon channel changes made by an admin reach ingest and the pollers.
    pub channel_refresh_secs: u64,
    /// Connections to loopback addresses (default: allowed locally, refused in the cloud).
    pub allow_loopback: Option<bool>,
    /// Connections to private network addresses (default: allowed locally, refused in the cloud).
    pub allow_private_networks: Option<bool>,
    /// OAuth2 authorities other than Microsoft's (default: allowed locally, refused in the cloud).
    pub allow_custom_authority: Option<bool>,
    /// A PEM file of extra CA certificates to trust besides the public roots (e.g. a test CA).
    pub extra_ca_file: Option<String>,
}

impl Default for MailboxSettings {
    fn default() -> Self {
        Self {
            poll_interval_secs: 60,
            max_messages_per_run: 500,
            max_run_secs: 40,
            concurrency: 4,
            connect_timeout_secs: 15,
            command_timeout_secs: 60,
            idle_renew_secs: 25 * 60,
            channel_refresh_secs: 30,
            allow_loopback: None,
            allow_private_networks: None,
            allow_custom_authority: None,
            extra_ca_file: None,
        }
    }
}

impl MailboxSettings {
    /// The network policy, with the deployment's defaults where the settings are silent.
    pub fn network_policy(&self, defaults: NetworkPolicy) -> NetworkPolicy {
        NetworkPolicy {
            allow_loopback: self.allow_loopback.unwrap_or(defaults.allow_loopback),
            allow_private: self.allow_private_networks.unwrap_or(defaults.allow_private),
            allow_custom_authority: self.allow_custom_authority.unwrap_or(defaults.allow_custom_authority),
        }
    }

    /// Problems named by setting (relative to `[mailbox]`).
    pub fn validate(&self) -> Result<(), FieldError> {
        let positive = [
            ("poll_interval_secs", self.poll_interval_secs),
            ("max_messages_per_run", self.max_messages_per_run as u64),
            ("max_run_secs", self.max_run_secs),
            ("concurrency", self.concurrency as u64),
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("command_timeout_secs", self.command_timeout_secs),
            ("idle_renew_secs", self.idle_renew_secs),
            ("channel_refresh_secs", self.channel_refresh_secs),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(FieldError::new(format!("mailbox.{name}"), "must be greater than 0"));
            }
        }
        if self.idle_renew_secs > 29 * 60 {
            return Err(FieldError::new("mailbox.idle_renew_secs", "must be at most 1740 (29 minutes, RFC 2177)"));
        }
        if self.extra_ca_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
            return Err(FieldError::new("mailbox.extra_ca_file", "must be a file path"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_default_their_ports() {
        assert_eq!(MailProtocol::Imap.default_port(), 143);
        assert_eq!(MailProtocol::ImapStarttls.default_port(), 143);
        assert_eq!(MailProtocol::Imaps.default_port(), 993);
        assert_eq!(MailProtocol::Pop3.default_port(), 110);
        assert_eq!(MailProtocol::Pop3Stls.default_port(), 110);
        assert_eq!(MailProtocol::Pop3s.default_port(), 995);
        assert_eq!(MailProtocol::parse("IMAP+STARTTLS"), Some(MailProtocol::ImapStarttls));
        assert_eq!(MailProtocol::parse("smtp"), None);
    }

    #[test]
    fn hosts_users_and_secret_names_are_checked() {
        assert_eq!(MailHost::parse("IMAP.Example.com.").unwrap().as_str(), "imap.example.com");
        assert_eq!(MailHost::parse("[::1]").unwrap().ip(), Some("::1".parse().unwrap()));
        for bad in ["", "imap example.com", "-x.example.com", "a..b", "x/y"] {
            assert!(MailHost::parse(bad).is_err(), "{bad:?}");
        }
        assert!(MailboxUser::parse("support@example.com").is_ok());
        assert!(MailboxUser::parse("a\r\nDELE 1").is_err());
        assert!(format!("{:?}", MailboxUser::parse("secret-user").unwrap()).contains(".."));
        assert!(SecretName::parse("channel/support/password").is_ok());
        assert!(SecretName::parse("/abs").is_err());
        assert!(SecretName::parse("a b").is_err());
        assert!(check_secret_value(&SecretString::from("pa\r\nss")).is_err());
        assert!(check_secret_value(&SecretString::from("")).is_err());
    }

    #[test]
    fn secrets_deserialize_in_three_forms_and_never_print() {
        #[derive(Deserialize, Serialize)]
        struct T {
            a: SecretRef,
            b: SecretRef,
            c: SecretRef,
        }
        let t: T =
            toml::from_str("a = \"hunter2\"\nb = { secret = \"channel/x/password\" }\nc = { env = \"PW\" }\n").unwrap();
        assert!(matches!(&t.a, SecretRef::Inline(v) if v.expose_secret() == "hunter2"));
        assert_eq!(t.b, SecretRef::Stored(SecretName::parse("channel/x/password").unwrap()));
        assert_eq!(t.c, SecretRef::Env("PW".into()));
        let printed = toml::to_string(&t).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!format!("{:?}", t.a).contains("hunter2"));
        assert!(toml::from_str::<T>("a = {}\nb = \"x\"\nc = \"y\"\n").is_err());
    }

    #[test]
    fn a_mailbox_reads_from_toml_with_defaults() {
        let m: IncomingMailbox = toml::from_str(
            "protocol = \"imaps\"\nhost = \"outlook.office365.com\"\nuser = \"support@contoso.com\"\n\
             [auth]\ntype = \"oauth2\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"abc\"\nclient_secret = { secret = \"s\" }\n",
        )
        .unwrap();
        assert_eq!(m.port(), 993);
        assert_eq!(m.after_fetch, AfterFetch::MarkSeen);
        let MailboxAuth::Oauth2(c) = &m.auth else { panic!("oauth2") };
        assert_eq!(c.authority, MICROSOFT_AUTHORITY);
        m.validate().unwrap();
        let mut other = m.clone();
        other.protocol = MailProtocol::ImapStarttls;
        assert_eq!(m.key(), other.key(), "the key does not depend on transport security");
        other.user = MailboxUser::parse("sales@contoso.com").unwrap();
        assert_ne!(m.key(), other.key());
        assert!(MailboxKey::parse(m.key().as_str()).is_ok());
    }

    #[test]
    fn cursors_decide_first_contact_resync_and_continue() {
        let first = CursorStart::decide(None, 7, 11, AfterFetch::MarkSeen);
        assert_eq!(
            first,
            CursorStart::FirstContact(ImapCursor { uid_validity: 7, last_uid: 0, unseen_only_through: 10 })
        );
        assert_eq!(CursorStart::decide(None, 7, 11, AfterFetch::Delete).cursor().unseen_only_through, 0);
        let mut c = first.cursor();
        c.advance(5);
        c.advance(3);
        assert_eq!(c.last_uid, 5);
        assert_eq!(CursorStart::decide(Some(c), 7, 11, AfterFetch::MarkSeen), CursorStart::Continue(c));
        assert_eq!(
            CursorStart::decide(Some(c), 8, 11, AfterFetch::MarkSeen),
            CursorStart::Resync { previous_uid_validity: 7, cursor: ImapCursor::resync(8) }
        );
    }

    #[test]
    fn health_counts_failures_until_a_success() {
        let mut h = ChannelHealth::default();
        assert_eq!(h.status(), HealthStatus::Unknown);
        let t = Utc::now();
        h.record_failure(t, "the server refused the password", RunCounts::default());
        h.record_failure(t, "the server refused the password", RunCounts::default());
        assert_eq!((h.status(), h.consecutive_failures), (HealthStatus::Failing, 2));
        h.record_success(t, RunCounts { fetched: 1, ..Default::default() });
        assert_eq!((h.status(), h.consecutive_failures), (HealthStatus::Healthy, 0));
        assert!(h.last_error.is_some(), "the last error stays visible");
    }

    #[test]
    fn the_network_policy_refuses_metadata_always_and_private_unless_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cloud = NetworkPolicy::CLOUD;
        assert!(cloud.check(ip("93.184.216.34")).is_ok());
        assert!(cloud.check(ip("2606:4700::1111")).is_ok());
        for never in
            ["169.254.169.254", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254", "0.0.0.0", "::", "224.0.0.1"]
        {
            assert!(cloud.check(ip(never)).is_err(), "{never}");
            assert!(NetworkPolicy::LOCAL.check(ip(never)).is_err(), "{never} is refused even locally");
        }
        for private in ["10.0.0.5", "172.16.3.4", "192.168.1.1", "100.64.0.1", "fd12::1", "::ffff:10.1.1.1"] {
            assert!(matches!(cloud.check(ip(private)), Err(AddressRefusal::Private(_))), "{private}");
            assert!(NetworkPolicy::LOCAL.check(ip(private)).is_ok());
        }
        for lo in ["127.0.0.1", "::1", "127.1.2.3"] {
            assert!(matches!(cloud.check(ip(lo)), Err(AddressRefusal::Loopback(_))), "{lo}");
        }
        assert!(cloud.check_all(&[ip("93.184.216.34"), ip("10.0.0.1")]).is_err(), "one bad address refuses all");
        assert!(cloud.check_authority("https://login.microsoftonline.com/").is_ok());
        assert!(cloud.check_authority("http://127.0.0.1:45680").is_err());
        assert!(NetworkPolicy::LOCAL.check_authority("http://127.0.0.1:45680").is_ok());
        assert_eq!(authority_host("http://127.0.0.1:45680/x"), Some("127.0.0.1"));
    }

    #[test]
    fn settings_name_the_bad_value() {
        let s = MailboxSettings { max_run_secs: 0, ..Default::default() };
        assert_eq!(s.validate().unwrap_err().field, "mailbox.max_run_secs");
        let p =
            MailboxSettings { allow_loopback: Some(false), ..Default::default() }.network_policy(NetworkPolicy::LOCAL);
        assert!(!p.allow_loopback && p.allow_private);
    }
}
