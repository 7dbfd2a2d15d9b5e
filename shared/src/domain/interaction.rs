//! Interactions (customer conversations) and the messages they hold.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::email::AttachmentInfo;
use super::ids::{Category, ChannelName, EmailAddress, Fingerprint, InteractionId, MessageId, QueueName, RawMailKey};

/// Routing priority: 1 (lowest) to 10 (most urgent). Higher is offered first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 10;
    pub const NORMAL: Priority = Priority(5);

    pub fn new(value: u8) -> Result<Self, super::ids::InvalidValue> {
        if (Self::MIN..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(super::ids::InvalidValue { kind: "priority", reason: "it must be between 1 and 10" })
        }
    }

    pub fn value(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::NORMAL
    }
}

impl TryFrom<u8> for Priority {
    type Error = super::ids::InvalidValue;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Priority> for u8 {
    fn from(value: Priority) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sentiment {
    Positive,
    Neutral,
    Negative,
}

impl Sentiment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Positive => "positive",
            Self::Neutral => "neutral",
            Self::Negative => "negative",
        }
    }
}

impl fmt::Display for Sentiment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an interaction stands. Ingest creates `Queued` interactions and re-queues `Ended` ones
/// when the customer writes again; routing moves them through the other states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InteractionState {
    Queued,
    Offered,
    Assigned,
    Ended,
}

impl InteractionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Offered => "offered",
            Self::Assigned => "assigned",
            Self::Ended => "ended",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub id: InteractionId,
    pub channel: ChannelName,
    pub customer: EmailAddress,
    pub customer_name: Option<String>,
    pub subject: String,
    pub queue: QueueName,
    pub priority: Priority,
    pub state: InteractionState,
    pub category: Category,
    pub sentiment: Sentiment,
    /// Everyone who may write into this conversation: the customer and the people they copied.
    /// Threading by header or token only accepts mail from these addresses.
    pub participants: Vec<EmailAddress>,
    /// The fingerprint of the message that opened it (guards against id collisions).
    pub origin: Fingerprint,
    pub message_count: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it last started waiting in a queue (for longest-waiting-first routing).
    pub queued_at: Option<DateTime<Utc>>,
    /// Who it is offered or assigned to, and the history routing needs.
    #[serde(default)]
    pub routing: super::presence::RoutingState,
}

impl Interaction {
    pub fn is_participant(&self, address: &EmailAddress) -> bool {
        &self.customer == address || self.participants.contains(address)
    }

    /// Takes in one more message of the conversation: its people become participants and, with
    /// `requeue`, an ended conversation waits in its queue again. Every backend applies exactly
    /// this when it appends a message, so they cannot drift apart.
    pub fn absorb(&mut self, message: &StoredMessage, new_participants: &[EmailAddress], requeue: bool) {
        for p in new_participants {
            if !self.is_participant(p) {
                self.participants.push(p.clone());
            }
        }
        self.message_count += 1;
        self.updated_at = message.received_at;
        if requeue && self.state == InteractionState::Ended {
            self.state = InteractionState::Queued;
            self.queued_at = Some(message.received_at);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// The longest decoded body kept with a stored message; the raw message always has all of it.
/// DynamoDB items are capped at 400 KB, so the whole body cannot live in the state table.
pub const STORED_BODY_LIMIT: usize = 64 * 1024;

/// One email of an interaction, as the transcript shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub fingerprint: Fingerprint,
    pub interaction_id: InteractionId,
    pub raw_key: RawMailKey,
    pub direction: Direction,
    pub message_id: Option<MessageId>,
    /// Outlook's `Thread-Index` conversation key; indexed like a Message-ID for threading.
    #[serde(default)]
    pub conversation_key: Option<MessageId>,
    pub from: EmailAddress,
    pub from_name: Option<String>,
    pub to: Vec<EmailAddress>,
    pub cc: Vec<EmailAddress>,
    pub subject: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub text_body: String,
    pub body_truncated: bool,
    pub attachments: Vec<AttachmentInfo>,
    pub degraded: Vec<String>,
    /// `new` or `threaded`, and why: recorded so a retry can finish the same decision and an
    /// operator can see why an email joined a conversation.
    pub disposition: super::journal::Disposition,
    pub reason: String,
    pub category: Category,
    pub sentiment: Sentiment,
}
