//! Channel administration, as the admin API offers it: create, read, update and disable
//! channels, with write-only passwords (entered twice) and client secrets kept in the secret
//! store; "test connection" for a channel's incoming server; the channel's outgoing server
//! (internal or a custom SMTP server); and seeding the channel store from the config file at
//! start-up.
//!
//! Errors name the field they are about (`mailbox.auth.password_confirmation`), so the API can
//! answer 400 with it. Secrets are never returned: a view says only whether one is set.

use std::collections::HashSet;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::config::ConfigError;
use crate::domain::channel::Channel;
use crate::domain::ids::{ChannelName, EmailAddress, QueueName};
use crate::domain::interaction::Priority;
use crate::domain::mailbox::{
    AfterFetch, ChannelHealth, HealthStatus, IncomingMailbox, MICROSOFT_AUTHORITY, MailHost, MailProtocol, MailboxAuth,
    MailboxUser, OAuth2Client, SecretName, SecretRef, check_secret_value,
};
use crate::domain::outbound::{
    ChannelOutbound, HostName, OutgoingServer, SecretKey, SmtpLogin, SmtpSecurity, SmtpServer,
};
use crate::domain::script::{EmailScript, RoutingRule};
use crate::ports::channels::{ChannelStore, StoredChannel};
use crate::ports::mailbox::{MailboxSession, MailboxStateStore};
use crate::ports::secrets::SecretStore;
use crate::ports::{BackendError, Clock};
use crate::usecases::channel_directory::ChannelDirectory;
use crate::usecases::poll_mailbox::{AccessError, MailboxAccess, OpenTrace};

// ---------------------------------------------------------------------------------------- errors

/// Channel names the admin API's fixed routes take (`/v1/admin/channels/<name>`).
pub const RESERVED_NAMES: &[&str] = &["test-connection"];

/// What the admin API maps to its answers: `Invalid` → 400 (naming the field), `NotFound` →
/// 404, `Conflict` → 409, `Backend` → 503 when transient, else 500.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("channel {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the channel store failed")]
    Backend(#[source] BackendError),
}

impl AdminError {
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), problem: problem.into() }
    }
}

impl From<BackendError> for AdminError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Conflict { detail, .. } => Self::Conflict(detail),
            other => Self::Backend(other),
        }
    }
}

// ---------------------------------------------------------------------------------------- inputs

/// A password or secret as typed into the admin API: never printed, never serialized.
#[derive(Clone)]
pub struct WriteOnly(pub SecretString);

impl std::fmt::Debug for WriteOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteOnly(********)")
    }
}

impl<'de> Deserialize<'de> for WriteOnly {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Self(SecretString::from(s)))
    }
}

impl From<&str> for WriteOnly {
    fn from(value: &str) -> Self {
        Self(SecretString::from(value.to_owned()))
    }
}

fn yes() -> bool {
    true
}

/// A channel as the admin API receives it (JSON body of create and update).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    pub name: String,
    pub address: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub default_queue: String,
    #[serde(default)]
    pub default_priority: Option<u8>,
    #[serde(default)]
    pub script: Vec<RoutingRule>,
    #[serde(default)]
    pub mailbox: Option<MailboxInput>,
    /// The outgoing server. Left out: the internal server for a new channel; on an update, the
    /// channel keeps the one it has.
    #[serde(default)]
    pub outbound: Option<OutboundInput>,
}

/// A channel's outgoing side as the admin API receives it: the shape of the config file's
/// `outbound` table, checked field by field so a mistake names its field (`server.port`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundInput {
    pub server: ServerInput,
    /// "Override server configuration": agents may send as themselves with their own account.
    #[serde(default)]
    pub agent_accounts: bool,
}

/// `{"kind": "internal"}`, or `{"kind": "smtp", "host": ..., "port": ..., "security": ...,
/// "login": ...}`. The password is not here: it is set on its own, write-only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInput {
    pub kind: String,
    #[serde(default)]
    pub host: Option<String>,
    /// Empty: 587 for `starttls`, 465 for `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` or `tls` (there is no unencrypted mode).
    #[serde(default)]
    pub security: Option<String>,
    /// The channel's login on the server; empty: the channel address.
    #[serde(default)]
    pub login: Option<String>,
}

/// The incoming server settings as the admin API receives them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxInput {
    /// `imap`, `imap+starttls`, `imaps`, `pop3`, `pop3+stls` or `pop3s`.
    pub protocol: String,
    pub host: String,
    /// Empty: the protocol's default (143, 993, 110, 995).
    #[serde(default)]
    pub port: Option<u16>,
    pub user: String,
    pub auth: AuthInput,
    /// `mark_seen` (leave on the server, the default) or `delete`.
    #[serde(default)]
    pub after_fetch: Option<String>,
}

/// How the mailbox signs in. Secrets left out of an update keep their stored value.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthInput {
    Normal {
        #[serde(default)]
        password: Option<WriteOnly>,
        /// The password typed a second time; must match.
        #[serde(default)]
        password_confirmation: Option<WriteOnly>,
    },
    Oauth2 {
        #[serde(default)]
        authority: Option<String>,
        tenant: String,
        client_id: String,
        #[serde(default)]
        client_secret: Option<WriteOnly>,
    },
}

/// What "test connection" checks: the stored settings of `channel`, or `mailbox` settings not
/// saved yet (with `channel`, a secret left out is taken from that channel).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionTestRequest {
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub mailbox: Option<MailboxInput>,
}

// ---------------------------------------------------------------------------------------- views

/// A channel as the admin API shows it: everything but secrets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelView {
    pub name: ChannelName,
    pub address: EmailAddress,
    pub enabled: bool,
    pub default_queue: QueueName,
    pub default_priority: Priority,
    pub script: Vec<RoutingRule>,
    pub mailbox: Option<MailboxView>,
    pub outbound: OutgoingView,
    /// Send it back with an update; a different stored version means someone else changed the
    /// channel meanwhile (409).
    pub version: u64,
    pub health: Option<HealthView>,
}

/// A channel's outgoing side as the admin API shows it: everything but the password.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutgoingView {
    pub server: ServerView,
    pub agent_accounts: bool,
    /// Whether the channel's SMTP password is stored; `null` for the internal server, which
    /// needs none.
    pub password_set: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServerView {
    Internal,
    Smtp {
        host: String,
        port: u16,
        security: SmtpSecurity,
        /// The login in use (the channel address when none was given).
        login: String,
        login_is_default: bool,
    },
}

/// The answer of `GET` and `PUT /v1/admin/channels/{name}/outgoing`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelOutgoingView {
    pub channel: ChannelName,
    pub address: EmailAddress,
    /// The channel's version, as in its view: send it back with a change (409 if it moved).
    pub version: u64,
    #[serde(flatten)]
    pub outgoing: OutgoingView,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MailboxView {
    pub protocol: MailProtocol,
    pub host: String,
    /// The port in use (the protocol's default when none was given).
    pub port: u16,
    pub port_is_default: bool,
    pub user: String,
    pub auth: AuthView,
    pub after_fetch: AfterFetch,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthView {
    Normal { password_set: bool },
    Oauth2 { authority: String, tenant: String, client_id: String, client_secret_set: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthView {
    pub status: HealthStatus,
    #[serde(flatten)]
    pub health: ChannelHealth,
}

/// One step of "test connection".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestStep {
    /// `settings`, `resolve`, `connect`, `sign_in` or `open_mailbox`.
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// The result of "test connection", in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionTestResult {
    pub ok: bool,
    pub summary: String,
    pub steps: Vec<TestStep>,
}

// ---------------------------------------------------------------------------------------- service

/// Everything channel administration needs, built once per process.
pub struct ChannelAdmin {
    pub store: Arc<dyn ChannelStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub state: Arc<dyn MailboxStateStore>,
    /// Invalidated after each change, so this process sees it at once (others within the
    /// directory's refresh interval).
    pub directory: ChannelDirectory,
    pub access: Arc<MailboxAccess>,
    /// The queues a channel may route to.
    pub queues: Vec<QueueName>,
    pub clock: Arc<dyn Clock>,
}

/// A secret entered with a change, to be stored under `name`.
struct NewSecret {
    name: SecretName,
    value: SecretString,
}

impl ChannelAdmin {
    pub async fn list(&self) -> Result<Vec<ChannelView>, AdminError> {
        let records = self.store.list().await?;
        let mut views = Vec::with_capacity(records.len());
        for r in records {
            views.push(self.view(r).await?);
        }
        Ok(views)
    }

    pub async fn get(&self, name: &str) -> Result<ChannelView, AdminError> {
        let record = self.record(name).await?;
        self.view(record).await
    }

    pub async fn create(&self, input: ChannelInput) -> Result<ChannelView, AdminError> {
        // `/v1/admin/channels/test-connection` tests unsaved settings: a channel of that name
        // could never be tested or reached by its own path.
        if RESERVED_NAMES.contains(&input.name.trim()) {
            return Err(AdminError::invalid("name", format!("{:?} is reserved by the admin API", input.name.trim())));
        }
        let (channel, secret) = self.build(input, None).await?;
        if self.store.get(&channel.name).await?.is_some() {
            return Err(AdminError::Conflict(format!("channel {} already exists", channel.name)));
        }
        let position = self.store.list().await?.iter().map(|r| r.position + 1).max().unwrap_or(0);
        // The secret first: a channel must never refer to a secret that is not there.
        if let Some(s) = &secret {
            self.secrets.put(&s.name, &s.value).await?;
        }
        let record = StoredChannel { channel, version: 0, position, seed: None, updated_at: self.clock.now() };
        let version = self.store.put(&record, None).await?;
        self.directory.invalidate();
        info!(channel_id = %record.channel.name, "channel created");
        self.view(StoredChannel { version, ..record }).await
    }

    /// Replaces the channel's settings. `expected_version` (from a view) guards against
    /// overwriting someone else's change; `None` skips the check.
    pub async fn update(
        &self,
        name: &str,
        input: ChannelInput,
        expected_version: Option<u64>,
    ) -> Result<ChannelView, AdminError> {
        let current = self.record(name).await?;
        if input.name.trim() != current.channel.name.as_str() {
            return Err(AdminError::invalid("name", "a channel cannot be renamed; create a new one"));
        }
        if let Some(v) = expected_version
            && v != current.version
        {
            return Err(AdminError::Conflict(format!(
                "channel {name} was changed by someone else (you have version {v}, it is at {})",
                current.version
            )));
        }
        let (channel, secret) = self.build(input, Some(&current.channel)).await?;
        if let Some(s) = &secret {
            self.secrets.put(&s.name, &s.value).await?;
        }
        let record = StoredChannel { channel, updated_at: self.clock.now(), ..current.clone() };
        let version = self.store.put(&record, Some(current.version)).await?;
        self.directory.invalidate();
        info!(channel_id = %record.channel.name, "channel updated");
        self.view(StoredChannel { version, ..record }).await
    }

    /// Disables (or re-enables) a channel: a disabled channel's mailbox is no longer polled, and
    /// mail for it is quarantined with that reason.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<ChannelView, AdminError> {
        let current = self.record(name).await?;
        let mut record = current.clone();
        record.channel.enabled = enabled;
        record.updated_at = self.clock.now();
        let version = self.store.put(&record, Some(current.version)).await?;
        self.directory.invalidate();
        info!(channel_id = %record.channel.name, enabled, "channel enabled state changed");
        self.view(StoredChannel { version, ..record }).await
    }

    /// The channel's outgoing server, and whether its password is set.
    pub async fn outgoing(&self, name: &str) -> Result<ChannelOutgoingView, AdminError> {
        let record = self.record(name).await?;
        self.outgoing_view(record).await
    }

    /// Sets the channel's outgoing server (and whether agents may use their own accounts on it).
    /// `expected_version`, as for [`ChannelAdmin::update`]. The change applies to the next
    /// message sent, queued ones included: the send path reads the channel at each send.
    pub async fn set_outbound(
        &self,
        name: &str,
        input: OutboundInput,
        expected_version: Option<u64>,
    ) -> Result<ChannelOutgoingView, AdminError> {
        let current = self.record(name).await?;
        if let Some(v) = expected_version
            && v != current.version
        {
            return Err(AdminError::Conflict(format!(
                "channel {name} was changed by someone else (you have version {v}, it is at {})",
                current.version
            )));
        }
        let outbound = self.outbound_from_input(input, "")?;
        let mut record = current.clone();
        record.channel.outbound = outbound;
        record.updated_at = self.clock.now();
        let version = self.store.put(&record, Some(current.version)).await?;
        self.directory.invalidate();
        let kind = match &record.channel.outbound.server {
            OutgoingServer::Internal => "internal",
            OutgoingServer::Smtp { .. } => "smtp",
        };
        info!(channel_id = %record.channel.name, server = kind, "channel outgoing server changed");
        self.outgoing_view(StoredChannel { version, ..record }).await
    }

    /// Connects to the incoming server, signs in and opens the mailbox (IMAP `SELECT INBOX`,
    /// POP3 `STAT`), then reports each step in plain words. Only the network policy's addresses
    /// are tried. Invalid settings are an `Invalid` error; a failure to connect is a result
    /// with `ok: false`.
    pub async fn test_connection(&self, request: ConnectionTestRequest) -> Result<ConnectionTestResult, AdminError> {
        let existing = match &request.channel {
            Some(name) => Some(self.record(name).await?.channel),
            None => None,
        };
        let (mailbox, secret) = match (request.mailbox, &existing) {
            (Some(input), existing) => {
                let name = existing.as_ref().map(|c| c.name.clone());
                let previous = existing.as_ref().and_then(|c| c.mailbox.as_ref());
                let (mailbox, given) = mailbox_from_input(input, name.as_ref(), previous, true)?;
                (mailbox, given.map(|s| s.value))
            }
            (None, Some(channel)) => match &channel.mailbox {
                Some(m) => (m.clone(), None),
                None => return Err(AdminError::invalid("mailbox", "the channel has no incoming server to test")),
            },
            (None, None) => {
                return Err(AdminError::invalid("mailbox", "give the incoming server settings or a channel"));
            }
        };
        let channel_name =
            existing.map(|c| c.name).unwrap_or_else(|| ChannelName::parse("connection-test").expect("valid"));
        Ok(self.run_test(&channel_name, &mailbox, secret).await)
    }

    async fn run_test(
        &self,
        channel: &ChannelName,
        mailbox: &IncomingMailbox,
        secret: Option<SecretString>,
    ) -> ConnectionTestResult {
        let mut steps = Vec::new();
        let mut trace = OpenTrace::default();
        let opened = self.access.open(channel, mailbox, secret, &mut trace).await;
        let target = format!("{} port {}", mailbox.host, mailbox.port());
        if !trace.addresses.is_empty() {
            let list: Vec<String> = trace.addresses.iter().map(|a| a.to_string()).collect();
            steps.push(TestStep {
                step: "resolve",
                ok: true,
                detail: format!("{} is at {}", mailbox.host, list.join(", ")),
            });
        }
        if let Some(info) = &trace.connection {
            let security = match &info.tls {
                Some(v) => format!("encrypted with {v}"),
                None => "NOT encrypted: the password and mail travel in clear text".to_owned(),
            };
            steps.push(TestStep { step: "connect", ok: true, detail: format!("connected to {target}, {security}") });
            steps.push(TestStep {
                step: "sign_in",
                ok: true,
                detail: format!("signed in with {}", mailbox.auth.kind()),
            });
        }
        let mut session = match opened {
            Ok(s) => s,
            Err(e) => {
                let step = failed_step(&e, &trace);
                // The server answered the sign-in, so the connection itself worked: say so, so the
                // admin looks at the credentials and not at the network.
                if trace.connection.is_none()
                    && matches!(e, AccessError::Mailbox(crate::ports::mailbox::MailboxError::AuthFailed { .. }))
                {
                    steps.push(TestStep { step: "connect", ok: true, detail: format!("connected to {target}") });
                }
                let words = e.plain_words();
                steps.push(TestStep { step, ok: false, detail: words.clone() });
                return ConnectionTestResult {
                    ok: false,
                    summary: format!("The connection test failed: {words}."),
                    steps,
                };
            }
        };
        let opened = match &mut session {
            MailboxSession::Imap(s) => s.select_inbox().await.map(|i| format!("opened INBOX: {} messages", i.exists)),
            MailboxSession::Pop3(s) => s.stat().await.map(|(n, _)| format!("the mailbox holds {n} messages")),
        };
        session.close().await;
        match opened {
            Ok(detail) => {
                steps.push(TestStep { step: "open_mailbox", ok: true, detail: detail.clone() });
                ConnectionTestResult { ok: true, summary: format!("Mailroom can read this mailbox: {detail}."), steps }
            }
            Err(e) => {
                let words = e.plain_words();
                steps.push(TestStep { step: "open_mailbox", ok: false, detail: words.clone() });
                ConnectionTestResult { ok: false, summary: format!("The connection test failed: {words}."), steps }
            }
        }
    }

    async fn record(&self, name: &str) -> Result<StoredChannel, AdminError> {
        let parsed = ChannelName::parse(name).map_err(|_| AdminError::NotFound(name.to_owned()))?;
        self.store.get(&parsed).await?.ok_or_else(|| AdminError::NotFound(name.to_owned()))
    }

    async fn view(&self, record: StoredChannel) -> Result<ChannelView, AdminError> {
        let c = record.channel;
        let health = match &c.mailbox {
            Some(_) => self.state.health(&c.name).await?.map(|h| HealthView { status: h.status(), health: h }),
            None => None,
        };
        let mailbox = match &c.mailbox {
            Some(m) => Some(MailboxView {
                protocol: m.protocol,
                host: m.host.to_string(),
                port: m.port(),
                port_is_default: m.port.is_none(),
                user: m.user.as_str().to_owned(),
                auth: match &m.auth {
                    MailboxAuth::Normal { password } => {
                        AuthView::Normal { password_set: self.secret_set(password).await? }
                    }
                    MailboxAuth::Oauth2(app) => AuthView::Oauth2 {
                        authority: app.authority.clone(),
                        tenant: app.tenant.clone(),
                        client_id: app.client_id.clone(),
                        client_secret_set: self.secret_set(&app.client_secret).await?,
                    },
                },
                after_fetch: m.after_fetch,
            }),
            None => None,
        };
        let outbound = self.outgoing_of(&c).await?;
        Ok(ChannelView {
            name: c.name,
            address: c.address,
            enabled: c.enabled,
            default_queue: c.default_queue,
            default_priority: c.default_priority,
            script: c.script,
            mailbox,
            outbound,
            version: record.version,
            health,
        })
    }

    async fn outgoing_view(&self, record: StoredChannel) -> Result<ChannelOutgoingView, AdminError> {
        let outgoing = self.outgoing_of(&record.channel).await?;
        let c = record.channel;
        Ok(ChannelOutgoingView { channel: c.name, address: c.address, version: record.version, outgoing })
    }

    async fn outgoing_of(&self, c: &Channel) -> Result<OutgoingView, AdminError> {
        let (server, password_set) = match &c.outbound.server {
            OutgoingServer::Internal => (ServerView::Internal, None),
            OutgoingServer::Smtp { server, login } => {
                let key = SecretKey::ChannelSmtpPassword(c.name.clone()).secret_name();
                let set = self.secrets.get(&key).await?.is_some();
                let view = ServerView::Smtp {
                    host: server.host.as_str().to_owned(),
                    port: server.port,
                    security: server.security,
                    login: login.as_ref().map(|l| l.as_str().to_owned()).unwrap_or_else(|| c.address.to_string()),
                    login_is_default: login.is_none(),
                };
                (view, Some(set))
            }
        };
        Ok(OutgoingView { server, agent_accounts: c.outbound.agent_accounts, password_set })
    }

    /// Checks an outgoing side from the API; `prefix` goes before the field names (`outbound.`
    /// inside a channel). A host given as an address must pass the network policy (metadata and
    /// link-local addresses never do).
    fn outbound_from_input(&self, input: OutboundInput, prefix: &str) -> Result<ChannelOutbound, AdminError> {
        let field = |name: &str| format!("{prefix}{name}");
        let ServerInput { kind, host, port, security, login } = input.server;
        let server = match kind.trim() {
            "internal" => {
                let given = [
                    ("host", host.is_some()),
                    ("port", port.is_some()),
                    ("security", security.is_some()),
                    ("login", login.is_some()),
                ];
                if let Some((name, _)) = given.into_iter().find(|(_, given)| *given) {
                    return Err(AdminError::invalid(
                        field(&format!("server.{name}")),
                        "only a custom SMTP server (kind smtp) has this setting",
                    ));
                }
                OutgoingServer::Internal
            }
            "smtp" => {
                let host = host
                    .filter(|h| !h.trim().is_empty())
                    .ok_or_else(|| AdminError::invalid(field("server.host"), "is required for an SMTP server"))?;
                let host = HostName::parse(&host).map_err(|e| AdminError::invalid(field("server.host"), e.reason))?;
                if let Ok(ip) = host.as_str().trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>()
                {
                    self.access
                        .policy
                        .check(ip)
                        .map_err(|refusal| AdminError::invalid(field("server.host"), refusal.to_string()))?;
                }
                let security = match security.as_deref().map(str::trim) {
                    Some("starttls") => SmtpSecurity::Starttls,
                    Some("tls") => SmtpSecurity::Tls,
                    Some(_) => {
                        return Err(AdminError::invalid(
                            field("server.security"),
                            "choose starttls or tls (credentials never travel unencrypted)",
                        ));
                    }
                    None => return Err(AdminError::invalid(field("server.security"), "choose starttls or tls")),
                };
                let port = match (port, security) {
                    (Some(0), _) => {
                        return Err(AdminError::invalid(field("server.port"), "must be between 1 and 65535"));
                    }
                    (Some(p), _) => p,
                    (None, SmtpSecurity::Starttls) => 587,
                    (None, SmtpSecurity::Tls) => 465,
                };
                let login = match login.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(l) => {
                        Some(SmtpLogin::parse(l).map_err(|e| AdminError::invalid(field("server.login"), e.reason))?)
                    }
                };
                OutgoingServer::Smtp { server: SmtpServer { host, port, security }, login }
            }
            _ => return Err(AdminError::invalid(field("server.kind"), "choose internal or smtp")),
        };
        Ok(ChannelOutbound { server, agent_accounts: input.agent_accounts })
    }

    async fn secret_set(&self, secret: &SecretRef) -> Result<bool, AdminError> {
        Ok(match secret {
            SecretRef::Stored(name) => self.secrets.get(name).await?.is_some(),
            SecretRef::Inline(_) | SecretRef::Env(_) => true,
        })
    }

    /// Checks an input and turns it into a channel, with the secret entered (if any).
    async fn build(
        &self,
        input: ChannelInput,
        current: Option<&Channel>,
    ) -> Result<(Channel, Option<NewSecret>), AdminError> {
        let name = ChannelName::parse(&input.name).map_err(|e| AdminError::invalid("name", e.reason))?;
        let address = EmailAddress::parse(&input.address).map_err(|e| AdminError::invalid("address", e.reason))?;
        let default_queue =
            QueueName::parse(&input.default_queue).map_err(|e| AdminError::invalid("default_queue", e.reason))?;
        if !self.queues.contains(&default_queue) {
            return Err(AdminError::invalid("default_queue", format!("there is no queue {default_queue:?}")));
        }
        let default_priority = match input.default_priority {
            Some(p) => Priority::new(p).map_err(|e| AdminError::invalid("default_priority", e.reason))?,
            None => Priority::default(),
        };
        let script = EmailScript::compile(&input.script).map_err(|e| AdminError::invalid("script", e.to_string()))?;
        if let Some(q) = script.queues().find(|q| !self.queues.contains(q)) {
            return Err(AdminError::invalid("script", format!("a rule routes to queue {q:?}, which does not exist")));
        }
        let others = self.store.list().await?;
        if let Some(other) = others.iter().find(|r| r.channel.name != name && r.channel.address == address) {
            return Err(AdminError::invalid(
                "address",
                format!("channel {} already uses this address", other.channel.name),
            ));
        }
        let (mailbox, secret) = match input.mailbox {
            Some(m) => {
                let previous = current.and_then(|c| c.mailbox.as_ref());
                let (mailbox, secret) = mailbox_from_input(m, Some(&name), previous, false)?;
                if let MailboxAuth::Oauth2(app) = &mailbox.auth {
                    self.access
                        .policy
                        .check_authority(&app.authority)
                        .map_err(|p| AdminError::invalid("mailbox.auth.authority", p))?;
                }
                (Some(mailbox), secret)
            }
            None => (None, None),
        };
        let outbound = match input.outbound {
            Some(o) => self.outbound_from_input(o, "outbound.")?,
            None => current.map(|c| c.outbound.clone()).unwrap_or_default(),
        };
        let channel = Channel {
            name,
            address,
            enabled: input.enabled,
            default_queue,
            default_priority,
            script: input.script,
            mailbox,
            outbound,
        };
        Ok((channel, secret))
    }
}

fn failed_step(e: &AccessError, trace: &OpenTrace) -> &'static str {
    use crate::ports::mailbox::MailboxError as M;
    match e {
        AccessError::SecretMissing(_) | AccessError::SecretStore(..) | AccessError::Authority(_) => "settings",
        AccessError::Token(_) => "sign_in",
        AccessError::Mailbox(M::UnknownHost { .. } | M::Refused { .. }) => "resolve",
        AccessError::Mailbox(M::AuthFailed { .. }) => "sign_in",
        AccessError::Mailbox(_) if trace.connection.is_some() => "sign_in",
        AccessError::Mailbox(_) => "connect",
    }
}

/// Checks mailbox settings from the API. `channel` names the secret; `previous` supplies the
/// stored secret when none is entered. With `for_test`, a missing secret is not an error when
/// there is a previous one (and the test reads it).
fn mailbox_from_input(
    input: MailboxInput,
    channel: Option<&ChannelName>,
    previous: Option<&IncomingMailbox>,
    for_test: bool,
) -> Result<(IncomingMailbox, Option<NewSecret>), AdminError> {
    let protocol = MailProtocol::parse(&input.protocol).ok_or_else(|| {
        AdminError::invalid("mailbox.protocol", "choose imap, imap+starttls, imaps, pop3, pop3+stls or pop3s")
    })?;
    let host = MailHost::parse(&input.host).map_err(|e| AdminError::invalid("mailbox.host", e.reason))?;
    if input.port == Some(0) {
        return Err(AdminError::invalid("mailbox.port", "must be between 1 and 65535"));
    }
    let user = MailboxUser::parse(&input.user).map_err(|e| AdminError::invalid("mailbox.user", e.reason))?;
    let after_fetch = match input.after_fetch.as_deref().map(str::trim) {
        None | Some("") | Some("mark_seen") | Some("leave") => AfterFetch::MarkSeen,
        Some("delete") => AfterFetch::Delete,
        Some(_) => return Err(AdminError::invalid("mailbox.after_fetch", "choose mark_seen or delete")),
    };
    let secret_name = |label: &str| {
        channel
            .map(|c| SecretName::for_channel(c, label))
            .unwrap_or_else(|| SecretName::parse("connection-test").expect("valid"))
    };
    let (auth, entered) = match input.auth {
        AuthInput::Normal { password, password_confirmation } => {
            let field = "mailbox.auth.password";
            let previous_secret = previous.and_then(|m| match &m.auth {
                MailboxAuth::Normal { password } => Some(password.clone()),
                MailboxAuth::Oauth2(_) => None,
            });
            match password {
                Some(WriteOnly(value)) => {
                    check_secret_value(&value).map_err(|p| AdminError::invalid(field, p))?;
                    // Typed twice in the admin UI; a test with unsaved settings may skip the
                    // confirmation, saving may not.
                    match password_confirmation {
                        Some(WriteOnly(again)) if again.expose_secret() == value.expose_secret() => {}
                        Some(_) => {
                            return Err(AdminError::invalid(
                                "mailbox.auth.password_confirmation",
                                "the two passwords differ",
                            ));
                        }
                        None if for_test => {}
                        None => {
                            return Err(AdminError::invalid(
                                "mailbox.auth.password_confirmation",
                                "enter the password a second time",
                            ));
                        }
                    }
                    let name = secret_name("password");
                    (MailboxAuth::Normal { password: SecretRef::Stored(name.clone()) }, Some(NewSecret { name, value }))
                }
                None => match previous_secret {
                    Some(stored) => (MailboxAuth::Normal { password: stored }, None),
                    None => return Err(AdminError::invalid(field, "is required")),
                },
            }
        }
        AuthInput::Oauth2 { authority, tenant, client_id, client_secret } => {
            let authority =
                authority.filter(|a| !a.trim().is_empty()).unwrap_or_else(|| MICROSOFT_AUTHORITY.to_owned());
            let previous_secret = previous.and_then(|m| match &m.auth {
                MailboxAuth::Oauth2(app) => Some(app.client_secret.clone()),
                MailboxAuth::Normal { .. } => None,
            });
            let (client_secret, entered) = match client_secret {
                Some(WriteOnly(value)) => {
                    check_secret_value(&value).map_err(|p| AdminError::invalid("mailbox.auth.client_secret", p))?;
                    let name = secret_name("client-secret");
                    (SecretRef::Stored(name.clone()), Some(NewSecret { name, value }))
                }
                None => match previous_secret {
                    Some(stored) => (stored, None),
                    None => return Err(AdminError::invalid("mailbox.auth.client_secret", "is required")),
                },
            };
            let app = OAuth2Client {
                authority: authority.trim().to_owned(),
                tenant: tenant.trim().to_owned(),
                client_id: client_id.trim().to_owned(),
                client_secret,
            };
            (MailboxAuth::Oauth2(app), entered)
        }
    };
    let mailbox = IncomingMailbox { protocol, host, port: input.port, user, auth, after_fetch };
    mailbox.validate().map_err(|e| AdminError::invalid(e.field, e.problem))?;
    Ok((mailbox, entered))
}

// ---------------------------------------------------------------------------------------- seeding

/// How seeding treats secrets given in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedOptions {
    /// Whether `password = "..."` and `{ env = "..." }` are accepted. Locally yes; in the
    /// cloud no: the config is a stack parameter, so secrets go through the admin API or
    /// Secrets Manager and the config names them (`{ secret = "..." }`).
    pub allow_secret_values: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot write the channels from the configuration")]
    Backend(#[from] BackendError),
}

/// What seeding did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub created: Vec<ChannelName>,
    pub updated: Vec<ChannelName>,
    pub unchanged: Vec<ChannelName>,
    /// Channels that came from the config file and are no longer in it.
    pub disabled: Vec<ChannelName>,
}

/// The seed digest of a channel whose config entry was removed: any entry added back later
/// differs from it, so it is applied again.
const REMOVED_FROM_CONFIG: &str = "removed";

fn setting(channel: &ChannelName, field: &str, problem: impl Into<String>) -> SeedError {
    SeedError::Config(ConfigError::Invalid { setting: format!("channels.{channel}.{field}"), problem: problem.into() })
}

/// Writes the config file's channels into the channel store at start-up.
///
/// A channel is written when it is new, or when its config entry changed since it was last
/// applied (a digest is kept with it). An entry that did not change leaves the stored channel
/// alone, so changes an admin made through the API survive restarts. Secret values in the
/// file (`password = "..."`, `{ env = "VAR" }`) go into the secret store under
/// `channel/<name>/password` (or `client-secret`); the stored channel keeps only that name.
/// Channels created through the admin API are never touched; a channel that came from the file
/// and is no longer in it is disabled (its mail and history stay).
pub async fn seed_channels(
    store: &dyn ChannelStore,
    secrets: &dyn SecretStore,
    channels: &[Channel],
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    options: SeedOptions,
    clock: &dyn Clock,
) -> Result<SeedReport, SeedError> {
    let existing = store.list().await?;
    let mut report = SeedReport::default();
    let configured: HashSet<&ChannelName> = channels.iter().map(|c| &c.name).collect();
    for (position, configured_channel) in channels.iter().enumerate() {
        let name = &configured_channel.name;
        if let Some(other) = existing.iter().find(|r| {
            &r.channel.name != name
                && r.channel.address == configured_channel.address
                && !configured.contains(&r.channel.name)
        }) {
            return Err(setting(
                name,
                "address",
                format!("channel {} (created through the admin API) already uses this address", other.channel.name),
            ));
        }
        let mut channel = configured_channel.clone();
        let mut value = None;
        if let Some(mailbox) = &mut channel.mailbox {
            let label = mailbox.auth.secret_label();
            let field = match &mailbox.auth {
                MailboxAuth::Normal { .. } => "mailbox.auth.password",
                MailboxAuth::Oauth2(_) => "mailbox.auth.client_secret",
            };
            let given = match mailbox.auth.secret() {
                SecretRef::Stored(_) => None,
                _ if !options.allow_secret_values => {
                    return Err(setting(
                        name,
                        field,
                        "secret values are not accepted here; store the secret through the admin API, or in the secret store, and give its name as { secret = \"...\" }",
                    ));
                }
                SecretRef::Inline(v) => Some(v.clone()),
                SecretRef::Env(var) => Some(SecretString::from(
                    env(var).ok_or_else(|| setting(name, field, format!("environment variable {var} is not set")))?,
                )),
            };
            if let Some(v) = given {
                check_secret_value(&v).map_err(|p| setting(name, field, p))?;
                let secret_name = SecretName::for_channel(name, label);
                *mailbox.auth.secret_mut() = SecretRef::Stored(secret_name.clone());
                value = Some((secret_name, v));
            }
        }
        let digest = seed_digest(&channel, value.as_ref().map(|(_, v)| v));
        let current = existing.iter().find(|r| &r.channel.name == name);
        if let Some(current) = current
            && seeded_before_outbound(current, &channel, value.as_ref().map(|(_, v)| v))
        {
            // Seeded from this very entry before channels carried their outgoing side (it came
            // from [outbound.channels.<name>] at each start then): add that side to what is
            // stored, keeping an admin's other changes, and remember the entry as applied.
            let mut record = current.clone();
            record.channel.outbound = channel.outbound.clone();
            record.seed = Some(digest);
            record.updated_at = clock.now();
            store.put(&record, Some(current.version)).await?;
            info!(channel_id = %name, "channel's outgoing server taken from the configuration");
            report.updated.push(name.clone());
            continue;
        }
        if let Some(current) = current
            && current.seed.as_deref() == Some(digest.as_str())
        {
            // Unchanged in the file: keep what is stored (an admin may have changed it), but
            // put back a secret that went missing.
            if let Some((secret_name, v)) = &value
                && secrets.get(secret_name).await?.is_none()
            {
                secrets.put(secret_name, v).await?;
            }
            report.unchanged.push(name.clone());
            continue;
        }
        if let Some((secret_name, v)) = &value {
            secrets.put(secret_name, v).await?;
        }
        let record = StoredChannel {
            channel,
            version: 0,
            position: position as u64,
            seed: Some(digest),
            updated_at: clock.now(),
        };
        match current {
            Some(current) => {
                store.put(&record, Some(current.version)).await?;
                report.updated.push(name.clone());
            }
            None => {
                store.put(&record, None).await?;
                report.created.push(name.clone());
            }
        }
    }
    for gone in existing.iter().filter(|r| r.seed.is_some() && !configured.contains(&r.channel.name)) {
        if gone.seed.as_deref() == Some(REMOVED_FROM_CONFIG) {
            continue;
        }
        let mut record = gone.clone();
        record.channel.enabled = false;
        record.seed = Some(REMOVED_FROM_CONFIG.to_owned());
        record.updated_at = clock.now();
        store.put(&record, Some(gone.version)).await?;
        info!(channel_id = %gone.channel.name, "channel removed from the configuration: disabled");
        report.disabled.push(gone.channel.name.clone());
    }
    Ok(report)
}

/// Whether `current` was seeded from this config entry by a version that kept the channel's
/// outgoing side out of the store: its digest is the entry's without the outgoing side, and it
/// has none of its own yet.
fn seeded_before_outbound(current: &StoredChannel, channel: &Channel, secret: Option<&SecretString>) -> bool {
    if channel.outbound.is_default() || !current.channel.outbound.is_default() {
        return false;
    }
    let without = Channel { outbound: ChannelOutbound::default(), ..channel.clone() };
    current.seed.as_deref() == Some(seed_digest(&without, secret).as_str())
}

/// A digest of a config entry as applied. It covers the secret's value too (salted with the
/// channel name), so changing only a password in the file is applied at the next start; the
/// value itself sits in the same data directory already.
fn seed_digest(channel: &Channel, secret: Option<&SecretString>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(channel).unwrap_or_default());
    if let Some(v) = secret {
        hasher.update(b"\0secret\0");
        hasher.update(channel.name.as_str().as_bytes());
        hasher.update(b"\0");
        hasher.update(v.expose_secret().as_bytes());
    }
    hex::encode(&hasher.finalize()[..16])
}
