//! Ports of outbound mail: rendering a message to bytes, sending bytes through an account, and
//! the state the send path keeps (delivery records, agent profiles, write-only secrets, the
//! channels' outgoing settings).

use async_trait::async_trait;
use secrecy::SecretString;

use super::BackendResult;
use crate::domain::ids::{AgentId, ChannelName, EmailAddress, InteractionId, MessageId};
use crate::domain::outbound::{OutboundEmail, OutboundRecord, SendingChannel, ServerReply, SmtpLogin, SmtpServer};
use crate::domain::profile::AgentProfile;

/// Turns a composed email into RFC 5322 bytes (the MIME adapter).
pub trait MessageRenderer: Send + Sync {
    fn render(&self, email: &OutboundEmail) -> Result<Vec<u8>, RenderError>;
}

#[derive(Debug, thiserror::Error)]
#[error("the message could not be rendered: {reason}")]
pub struct RenderError {
    pub reason: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The account a sender signs in with, resolved for one send: server, login and password.
/// Its `Debug` never shows the password.
#[derive(Debug, Clone)]
pub enum Route {
    /// Amazon SES with the process's AWS credentials.
    Ses,
    Smtp {
        server: SmtpServer,
        login: SmtpLogin,
        password: SecretString,
    },
}

/// SMTP's envelope: `MAIL FROM` and `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailEnvelope {
    pub from: EmailAddress,
    pub recipients: Vec<EmailAddress>,
}

/// The server accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// SMTP's final `250 …` line, or `SES message id <id>`.
    pub response: String,
}

/// Why a send failed. The three kinds decide what the send worker does next.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt later: SMTP 4xx, a timeout, a dropped or refused connection, SES
    /// throttling.
    #[error("temporary failure: {reply}")]
    Transient {
        reply: ServerReply,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The server refused this message or its recipients for good (SMTP 5xx after MAIL/RCPT/DATA,
    /// SES `MessageRejected`): sending it again cannot help.
    #[error("rejected: {reply}")]
    Rejected {
        reply: ServerReply,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The account or server is misconfigured (authentication refused, TLS not offered or not
    /// trusted, sender identity not verified): nothing is sent until an admin or the agent fixes
    /// it, then a replay sends it.
    #[error("cannot send with this account: {reply}")]
    Configuration {
        reply: ServerReply,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl SendError {
    pub fn reply(&self) -> &ServerReply {
        match self {
            Self::Transient { reply, .. } | Self::Rejected { reply, .. } | Self::Configuration { reply, .. } => reply,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    pub fn configuration(text: impl Into<String>) -> Self {
        Self::Configuration { reply: ServerReply { code: None, text: text.into() }, source: None }
    }
}

/// Sends raw messages through an account (SES, an SMTP server).
#[async_trait]
pub trait MailSender: Send + Sync {
    async fn send(&self, route: &Route, envelope: &MailEnvelope, raw: &[u8]) -> Result<Accepted, SendError>;
    /// "Test connection": connects, secures and signs in without sending, and says what answered.
    async fn check(&self, route: &Route) -> Result<String, SendError>;
}

/// Whether a conditional write took effect.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Done,
    /// The record was not in the expected version: someone else changed it. Holds it as stored.
    Stale(Option<Box<OutboundRecord>>),
}

/// Delivery records, keyed by our Message-ID, stored with their interaction.
#[async_trait]
pub trait OutboundStore: Send + Sync {
    /// Stores a new record unless one with its Message-ID exists; returns the stored one.
    async fn create_record(&self, record: &OutboundRecord) -> BackendResult<OutboundRecord>;
    async fn record(
        &self,
        interaction: &InteractionId,
        message_id: &MessageId,
    ) -> BackendResult<Option<OutboundRecord>>;
    /// Replaces the record if the stored version is `expected_version` (the conditional state
    /// change that makes a redelivered send job harmless).
    async fn replace_record(&self, record: &OutboundRecord, expected_version: u64) -> BackendResult<Written>;
    /// The outbound messages of an interaction, oldest first.
    async fn records_of(&self, interaction: &InteractionId) -> BackendResult<Vec<OutboundRecord>>;
}

/// Agent profiles.
#[async_trait]
pub trait ProfileStore: Send + Sync {
    async fn profile(&self, agent: &AgentId) -> BackendResult<Option<AgentProfile>>;
    async fn put_profile(&self, profile: &AgentProfile) -> BackendResult<()>;
}

/// The channels' outgoing side (from the configuration, or an admin store later).
#[async_trait]
pub trait ChannelDirectory: Send + Sync {
    async fn sending_channel(&self, name: &ChannelName) -> BackendResult<Option<SendingChannel>>;
    /// Every channel address: mail to our own addresses is never sent (it would loop).
    async fn own_addresses(&self) -> BackendResult<Vec<EmailAddress>>;
}
