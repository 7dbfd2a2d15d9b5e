//! Ports: what the use cases need from the outside world, as traits.
//!
//! Each backend (embedded on disk, AWS) implements them; the contract tests in `tests/` hold both
//! to the same behaviour. Errors say whether a retry can help, because that decides between
//! retrying (SQS `batchItemFailures`, an SMTP 451) and recording a permanent failure.

pub mod channels;
pub mod crm;
pub mod identity;
pub mod mailbox;
pub mod outbound;
pub mod routing;
pub mod secrets;
pub mod teams;

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::classify::Classification;
use crate::domain::email::ParsedEmail;
use crate::domain::ids::{Fingerprint, InteractionId, MessageId, RawMailKey};
use crate::domain::interaction::{Interaction, StoredMessage};
use crate::domain::journal::JournalEntry;
use crate::domain::threading::ThreadCandidate;

/// A failure of a storage or queue backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Worth retrying: throttling, a timeout, a dropped connection, a busy database.
    #[error("{operation} failed temporarily")]
    Transient {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Retrying will not help: a missing table, denied access, corrupt data.
    #[error("{operation} failed")]
    Permanent {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A conditional write found the record in another state than expected.
    #[error("{operation}: {detail}")]
    Conflict { operation: &'static str, detail: String },
}

impl BackendError {
    pub fn transient(operation: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Transient { operation, source: source.into() }
    }

    pub fn permanent(operation: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Permanent { operation, source: source.into() }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// Raw messages, stored by content address before anything else happens to them.
#[async_trait]
pub trait RawMailStore: Send + Sync {
    /// Stores the bytes under their SHA-256 and returns that key. Storing the same bytes again is
    /// a no-op that returns the same key.
    async fn put(&self, raw: &[u8]) -> BackendResult<RawMailKey>;
    async fn get(&self, key: &RawMailKey) -> BackendResult<Option<Vec<u8>>>;
}

/// Who owns a fingerprint: the first raw message that claimed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FingerprintClaim {
    /// This raw message owns it (first time, or a retry of the same delivery).
    Ours,
    /// Another raw message with the same logical content claimed it first.
    Theirs(RawMailKey),
}

/// The state that ingest reads and writes. Every write is idempotent, so a retry after a crash at
/// any point converges on the same records.
#[async_trait]
pub trait IngestStore: Send + Sync {
    async fn journal_get(&self, raw: &RawMailKey) -> BackendResult<Option<JournalEntry>>;
    /// Records that a raw message arrived (state `pending`), unless an entry exists already.
    async fn journal_begin(&self, entry: &JournalEntry) -> BackendResult<()>;
    /// Records the disposition (state `final`), replacing the pending entry.
    async fn journal_finalize(&self, entry: &JournalEntry) -> BackendResult<()>;
    /// The newest journal entries first, at most `limit`.
    async fn journal_recent(&self, limit: usize) -> BackendResult<Vec<JournalEntry>>;

    async fn claim_fingerprint(&self, fingerprint: &Fingerprint, raw: &RawMailKey) -> BackendResult<FingerprintClaim>;

    /// The stored message with this fingerprint, if ingest already persisted it.
    async fn message(&self, fingerprint: &Fingerprint) -> BackendResult<Option<StoredMessage>>;
    /// Messages we hold with any of these Message-IDs (several messages may share one id).
    async fn messages_with_ids(&self, ids: &[MessageId]) -> BackendResult<Vec<ThreadCandidate>>;
    async fn interaction(&self, id: &InteractionId) -> BackendResult<Option<Interaction>>;
    /// The messages of an interaction in the order they arrived.
    async fn interaction_messages(&self, id: &InteractionId) -> BackendResult<Vec<StoredMessage>>;

    /// Creates the interaction with its first message. Idempotent: if both exist already, nothing
    /// changes. An existing interaction with the same id but another origin is a `Conflict`.
    async fn create_interaction(&self, interaction: &Interaction, first: &StoredMessage) -> BackendResult<()>;
    /// Appends a message to an existing interaction, adding participants and, with `requeue`,
    /// moving an ended interaction back to `queued`. Idempotent per message fingerprint.
    /// Returns the interaction as stored afterwards.
    async fn append_message(
        &self,
        message: &StoredMessage,
        new_participants: &[crate::domain::ids::EmailAddress],
        requeue: bool,
    ) -> BackendResult<Interaction>;
}

/// A message taken from a work queue, invisible to others until deleted or its visibility ends.
#[derive(Debug, Clone)]
pub struct ReceivedWork {
    pub body: String,
    /// Opaque handle for `delete`/`release`.
    pub receipt: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// A durable work queue with SQS semantics: at-least-once delivery, a visibility timeout,
/// redelivery when not deleted in time, and a dead-letter queue after `max_receives`.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    fn name(&self) -> &str;
    async fn send(&self, body: &str, delay: Duration) -> BackendResult<()>;
    /// Up to `max` messages, waiting up to `wait` for the first one.
    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> BackendResult<Vec<ReceivedWork>>;
    /// Done with a message: it is never delivered again.
    async fn delete(&self, receipt: &str) -> BackendResult<()>;
    /// Gives a message back to be delivered again after `delay`.
    async fn release(&self, receipt: &str, delay: Duration) -> BackendResult<()>;
    /// Messages visible or in flight (approximate on SQS).
    async fn depth(&self) -> BackendResult<u64>;
}

/// Turns raw bytes into the parsed view. Never fails: what cannot be read is reported in
/// `ParsedEmail::degraded` or shows as missing fields.
pub trait MessageParser: Send + Sync {
    fn parse(&self, raw: &[u8]) -> ParsedEmail;
}

/// Category and sentiment of an inbound email. The built-in rules implement it; an external
/// service can replace them.
pub trait Classifier: Send + Sync {
    fn classify(&self, email: &ParsedEmail) -> Classification;
}

impl Classifier for crate::domain::classify::RuleClassifier {
    fn classify(&self, email: &ParsedEmail) -> Classification {
        crate::domain::classify::RuleClassifier::classify(self, email)
    }
}

/// The time, injectable so tests can control it.
pub trait Clock: Send + Sync {
    fn now(&self) -> chrono::DateTime<chrono::Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}
