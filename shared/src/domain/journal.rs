//! The journal: one entry for every raw message that ever arrived, with what became of it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{Category, ChannelName, EmailAddress, Fingerprint, InteractionId, MessageId, QueueName, RawMailKey};
use super::interaction::{Priority, Sentiment};

/// What became of an inbound email. These exact words appear in the journal, the CLI and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Started a new interaction.
    New,
    /// Joined an existing interaction.
    Threaded,
    /// The same message arrived before; recorded once.
    Duplicate,
    AutoReply,
    Bounce,
    Bulk,
    /// Our own mail coming back.
    Loop,
    Spam,
    /// Kept, with a reason, because it cannot be handled (no sender, not an email, too large, virus).
    Quarantined,
}

impl Disposition {
    pub const ALL: [Disposition; 9] = [
        Self::New,
        Self::Threaded,
        Self::Duplicate,
        Self::AutoReply,
        Self::Bounce,
        Self::Bulk,
        Self::Loop,
        Self::Spam,
        Self::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Threaded => "threaded",
            Self::Duplicate => "duplicate",
            Self::AutoReply => "auto_reply",
            Self::Bounce => "bounce",
            Self::Bulk => "bulk",
            Self::Loop => "loop",
            Self::Spam => "spam",
            Self::Quarantined => "quarantined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Whether the email reaches an agent.
    pub fn reaches_agents(self) -> bool {
        matches!(self, Self::New | Self::Threaded)
    }
}

impl fmt::Display for Disposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an email came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Amazon SES receipt rule (the object SES wrote).
    Ses { bucket: String, key: String },
    /// The local SMTP listener of `mailroom serve`.
    Smtp,
    /// A mailbox poller (IMAP or POP3) of a channel.
    Mailbox { channel: ChannelName, protocol: String },
    /// A file handed to `mailroom ingest`.
    File { path: String },
    /// A replay of a stored raw message (DLQ replay, re-ingest).
    Replay,
}

/// Processing state of a journal entry: `pending` between storing the raw bytes and recording a
/// disposition. A pending entry left behind by a crash is finished by the retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalState {
    Pending,
    Final,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub raw_key: RawMailKey,
    pub state: JournalState,
    pub received_at: DateTime<Utc>,
    pub source: Source,
    pub size: usize,
    pub disposition: Option<Disposition>,
    pub reason: String,
    pub fingerprint: Option<Fingerprint>,
    pub channel: Option<ChannelName>,
    pub interaction_id: Option<InteractionId>,
    pub message_id: Option<MessageId>,
    pub from: Option<EmailAddress>,
    pub from_name: Option<String>,
    pub subject: Option<String>,
    pub queue: Option<QueueName>,
    pub priority: Option<Priority>,
    pub category: Option<Category>,
    pub sentiment: Option<Sentiment>,
    pub degraded: Vec<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

impl JournalEntry {
    pub fn pending(raw_key: RawMailKey, size: usize, source: Source, received_at: DateTime<Utc>) -> Self {
        Self {
            raw_key,
            state: JournalState::Pending,
            received_at,
            source,
            size,
            disposition: None,
            reason: String::new(),
            fingerprint: None,
            channel: None,
            interaction_id: None,
            message_id: None,
            from: None,
            from_name: None,
            subject: None,
            queue: None,
            priority: None,
            category: None,
            sentiment: None,
            degraded: Vec::new(),
            decided_at: None,
        }
    }

    pub fn is_final(&self) -> bool {
        self.state == JournalState::Final
    }
}
