//! The ingest use case: from raw bytes to a journaled disposition and, for a person's email, an
//! interaction waiting for routing.
//!
//! One function serves every front door: the SES Lambda, the SMTP listener and poller of
//! `mailroom serve`, `mailroom ingest`, and the tests. Each step is idempotent, so at-least-once
//! delivery (SES retries, SQS redelivery, a re-run) never loses an email nor records it twice:
//!
//! 1. store the raw bytes (content-addressed) — before anything can fail;
//! 2. open a `pending` journal entry for them (a crash from here on is finished by the retry);
//! 3. parse, quarantine what cannot be handled, claim the logical message (fingerprint);
//! 4. screen out automatic mail, resolve the channel, classify, thread, run the email script;
//! 5. persist the interaction and message, enqueue routing, then mark the journal entry `final`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tracing::{info, instrument};

use crate::config::IngestLimits;
use crate::domain::email::ParsedEmail;
use crate::domain::ids::{ChannelName, EmailAddress, Fingerprint, InteractionId};
use crate::domain::interaction::{Direction, Interaction, InteractionState, STORED_BODY_LIMIT, StoredMessage};
use crate::domain::journal::{Disposition, JournalEntry, JournalState, Source};
use crate::domain::routing::RoutingRequest;
use crate::domain::screening;
use crate::domain::script::ScriptInput;
use crate::domain::threading::{self, ThreadDecision};
use crate::ports::{
    BackendError, Classifier, Clock, FingerprintClaim, IngestStore, MessageParser, RawMailStore, WorkQueue,
};
use crate::usecases::channel_directory::ChannelDirectory;

/// An email as a front door hands it over.
#[derive(Debug, Clone)]
pub struct InboundEmail {
    pub raw: Vec<u8>,
    pub source: Source,
    /// Envelope recipients (SES receipt, SMTP `RCPT TO`), when known.
    pub envelope_recipients: Vec<EmailAddress>,
    /// The channel, when the front door knows it (a mailbox poller).
    pub channel: Option<ChannelName>,
}

impl InboundEmail {
    pub fn new(raw: Vec<u8>, source: Source) -> Self {
        Self { raw, source, envelope_recipients: Vec::new(), channel: None }
    }
}

/// What ingest did with one email.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestOutcome {
    /// The journal entry of these raw bytes, as recorded.
    pub entry: JournalEntry,
    /// True when these exact bytes had already been ingested: nothing new was recorded.
    pub repeat_delivery: bool,
}

impl IngestOutcome {
    /// The disposition to report for this delivery: a repeat delivery is a `duplicate`.
    pub fn disposition(&self) -> Disposition {
        if self.repeat_delivery {
            Disposition::Duplicate
        } else {
            self.entry.disposition.unwrap_or(Disposition::Quarantined)
        }
    }

    pub fn reason(&self) -> String {
        if self.repeat_delivery {
            format!(
                "already ingested at {} as {}",
                self.entry.received_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                self.entry.disposition.map(Disposition::as_str).unwrap_or("pending")
            )
        } else {
            self.entry.reason.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A backend failed; the email is safe to hand over again (everything is idempotent).
    #[error("ingest could not finish; the email can be retried")]
    Backend(#[from] BackendError),
}

impl IngestError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Backend(e) => e.is_transient(),
        }
    }
}

/// Everything ingest needs, built once per process.
#[derive(Clone)]
pub struct IngestService {
    pub raw_store: Arc<dyn RawMailStore>,
    pub store: Arc<dyn IngestStore>,
    pub routing: Arc<dyn WorkQueue>,
    pub parser: Arc<dyn MessageParser>,
    pub classifier: Arc<dyn Classifier>,
    /// The channels, from the channel store (refreshed) or fixed from the config file.
    pub channels: ChannelDirectory,
    pub limits: IngestLimits,
    pub clock: Arc<dyn Clock>,
    /// The CRM handoff queue, where the handoff runs: every message threaded into an existing
    /// interaction is announced there (`handoff::notify_message`), so its case gets the email too.
    pub handoff_queue: Option<Arc<dyn WorkQueue>>,
}

/// At most this many referenced ids are looked up: enough for any real thread, and a bound on the
/// work a hostile `References` header can cause.
const MAX_THREAD_LOOKUPS: usize = 50;

impl IngestService {
    #[instrument(skip_all, fields(raw_key, disposition, interaction_id))]
    pub async fn ingest(&self, inbound: InboundEmail) -> Result<IngestOutcome, IngestError> {
        let raw_key = self.raw_store.put(&inbound.raw).await?;
        tracing::Span::current().record("raw_key", &raw_key.as_str()[..16]);

        let entry = match self.store.journal_get(&raw_key).await? {
            Some(existing) if existing.is_final() => {
                tracing::Span::current().record("disposition", "duplicate");
                info!("repeat delivery of an email already journaled");
                return Ok(IngestOutcome { entry: existing, repeat_delivery: true });
            }
            // A pending entry: an earlier attempt stopped half-way; finish its work.
            Some(pending) => pending,
            None => {
                let pending =
                    JournalEntry::pending(raw_key.clone(), inbound.raw.len(), inbound.source.clone(), self.clock.now());
                self.store.journal_begin(&pending).await?;
                pending
            }
        };

        let entry = self.decide(entry, &inbound).await?;
        self.store.journal_finalize(&entry).await?;
        let span = tracing::Span::current();
        span.record("disposition", entry.disposition.map(Disposition::as_str).unwrap_or("?"));
        if let Some(id) = &entry.interaction_id {
            span.record("interaction_id", id.as_str());
        }
        info!("email journaled");
        Ok(IngestOutcome { entry, repeat_delivery: false })
    }

    async fn decide(&self, mut entry: JournalEntry, inbound: &InboundEmail) -> Result<JournalEntry, IngestError> {
        let now = self.clock.now();
        let channels = self.channels.current().await?;
        let finish = |mut e: JournalEntry, d: Disposition, reason: String| {
            e.state = JournalState::Final;
            e.disposition = Some(d);
            e.reason = reason;
            e.decided_at = Some(now);
            e
        };

        if inbound.raw.len() > self.limits.max_message_bytes {
            let reason = format!(
                "over the size limit: {} bytes, the limit is {} bytes",
                inbound.raw.len(),
                self.limits.max_message_bytes
            );
            return Ok(finish(entry, Disposition::Quarantined, reason));
        }

        let parsed = self.parser.parse(&inbound.raw);
        describe(&mut entry, &parsed);
        if !parsed.has_headers {
            return Ok(finish(entry, Disposition::Quarantined, "not an email: no header fields found".into()));
        }
        let Some(sender) = parsed.from.clone() else {
            let reason = match &parsed.from_raw {
                Some(_) => "no sender: the From header holds no valid email address".to_string(),
                None => "no sender: the From header is missing".to_string(),
            };
            return Ok(finish(entry, Disposition::Quarantined, reason));
        };

        let fingerprint = fingerprint(&parsed, &inbound.raw);
        entry.fingerprint = Some(fingerprint.clone());
        if let FingerprintClaim::Theirs(original) = self.store.claim_fingerprint(&fingerprint, &entry.raw_key).await? {
            let first = self.store.journal_get(&original).await?;
            entry.interaction_id = first.as_ref().and_then(|f| f.interaction_id.clone());
            entry.channel = first.as_ref().and_then(|f| f.channel.clone());
            let when = first
                .as_ref()
                .map(|f| f.received_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "earlier".into());
            let reason = format!("the same message arrived before (raw {}, received {when})", &original.as_str()[..16]);
            return Ok(finish(entry, Disposition::Duplicate, reason));
        }

        if let Some(verdict) = screening::screen(&parsed, channels.own_addresses()) {
            return Ok(finish(entry, verdict.disposition, verdict.reason));
        }

        let recipients = recipients(&parsed, &inbound.envelope_recipients);
        let channel = match inbound.channel.as_ref() {
            Some(name) => channels.by_name(name),
            None => recipients.iter().find_map(|r| channels.by_address(r)).or_else(|| channels.fallback()),
        };
        let Some((channel, script)) = channel else {
            return Ok(finish(entry, Disposition::Quarantined, "no channel is configured for this recipient".into()));
        };
        entry.channel = Some(channel.name.clone());
        if !channel.enabled {
            let reason = format!("channel {} is disabled", channel.name);
            return Ok(finish(entry, Disposition::Quarantined, reason));
        }

        // A retry after a crash: the message was persisted, so finish with the decision recorded then.
        if let Some(stored) = self.store.message(&fingerprint).await? {
            let interaction = self.store.interaction(&stored.interaction_id).await?;
            if let Some(interaction) = interaction {
                self.request_routing_if_waiting(&interaction).await?;
                if stored.disposition == Disposition::Threaded {
                    self.notify_handoff(&stored).await?;
                }
                fill_routing(&mut entry, &interaction, &stored);
                return Ok(finish(entry, stored.disposition, stored.reason.clone()));
            }
        }

        let classification = self.classifier.classify(&parsed);
        entry.category = Some(classification.category.clone());
        entry.sentiment = Some(classification.sentiment);

        let decision = self.thread(&parsed, &sender.address).await?;
        let own = channels.own_addresses();
        let others: Vec<EmailAddress> =
            recipients.iter().filter(|a| !own.contains(a) && **a != sender.address).cloned().collect();
        let (body, truncated) = clip(&parsed.text_body, STORED_BODY_LIMIT);

        let mut message = StoredMessage {
            fingerprint: fingerprint.clone(),
            interaction_id: InteractionId::for_first_message(&fingerprint),
            raw_key: entry.raw_key.clone(),
            direction: Direction::Inbound,
            message_id: parsed.message_id.clone(),
            conversation_key: parsed.conversation_key.clone(),
            from: sender.address.clone(),
            from_name: sender.name.clone(),
            to: parsed.to.iter().map(|m| m.address.clone()).collect(),
            cc: parsed.cc.iter().map(|m| m.address.clone()).collect(),
            subject: parsed.subject.clone(),
            sent_at: parsed.date,
            received_at: entry.received_at,
            text_body: body,
            body_truncated: truncated,
            attachments: parsed.attachments.clone(),
            degraded: parsed.degraded.clone(),
            disposition: Disposition::New,
            reason: String::new(),
            category: classification.category.clone(),
            sentiment: classification.sentiment,
        };

        let interaction = match decision {
            ThreadDecision::Join { interaction, reason } => {
                message.interaction_id = interaction.id.clone();
                message.disposition = Disposition::Threaded;
                message.reason = reason;
                let mut joining = vec![sender.address.clone()];
                joining.extend(others.iter().cloned());
                let requeue = interaction.state == InteractionState::Ended;
                self.store.append_message(&message, &joining, requeue).await?
            }
            ThreadDecision::New { reason } => {
                let routing = script.decide(
                    &ScriptInput {
                        email: &parsed,
                        sender: &sender.address,
                        recipients: &recipients,
                        category: &classification.category,
                    },
                    &channel.default_queue,
                    channel.default_priority,
                );
                message.reason = match &routing.rule {
                    Some(rule) => format!("{reason}; routed by rule {rule:?}"),
                    None => format!("{reason}; routed to the channel's default queue"),
                };
                let interaction = Interaction {
                    id: message.interaction_id.clone(),
                    channel: channel.name.clone(),
                    customer: sender.address.clone(),
                    customer_name: sender.name.clone(),
                    subject: parsed.subject.clone(),
                    queue: routing.queue,
                    priority: routing.priority,
                    state: InteractionState::Queued,
                    category: classification.category.clone(),
                    sentiment: classification.sentiment,
                    participants: others.clone(),
                    origin: fingerprint.clone(),
                    message_count: 1,
                    created_at: entry.received_at,
                    updated_at: entry.received_at,
                    queued_at: Some(entry.received_at),
                    routing: Default::default(),
                };
                self.store.create_interaction(&interaction, &message).await?;
                interaction
            }
        };

        self.request_routing_if_waiting(&interaction).await?;
        if message.disposition == Disposition::Threaded {
            self.notify_handoff(&message).await?;
        }
        fill_routing(&mut entry, &interaction, &message);
        Ok(finish(entry, message.disposition, message.reason))
    }

    /// Tells the handoff about a message threaded into an existing interaction (it is dropped
    /// there until the interaction has a case). Sent before the journal entry is final, so a crash
    /// in between sends it again on the retry; the handoff records each message once.
    async fn notify_handoff(&self, message: &StoredMessage) -> Result<(), IngestError> {
        if let Some(queue) = &self.handoff_queue {
            crate::usecases::handoff::notify_message(queue.as_ref(), &message.interaction_id, &message.fingerprint)
                .await?;
        }
        Ok(())
    }

    async fn thread(&self, parsed: &ParsedEmail, sender: &EmailAddress) -> Result<ThreadDecision, IngestError> {
        let mut parents = parsed.thread_parents();
        parents.truncate(MAX_THREAD_LOOKUPS);
        let mut by_header = Vec::new();
        if !parents.is_empty() {
            let mut found = self.store.messages_with_ids(&parents).await?;
            // Keep the order of `parents`: In-Reply-To first, then the newest reference.
            found.sort_by_key(|c| parents.iter().position(|p| *p == c.message_id).unwrap_or(usize::MAX));
            let mut seen = Vec::new();
            for candidate in found {
                if seen.contains(&candidate.interaction_id) {
                    continue;
                }
                seen.push(candidate.interaction_id.clone());
                let interaction = self.store.interaction(&candidate.interaction_id).await?;
                by_header.push((candidate, interaction));
            }
        }
        let mut by_token = Vec::new();
        for token in threading::reference_tokens(&parsed.subject).into_iter().take(5) {
            let interaction = self.store.interaction(&token).await?;
            by_token.push((token, interaction));
        }
        Ok(threading::decide(sender, &by_header, &by_token))
    }

    async fn request_routing_if_waiting(&self, interaction: &Interaction) -> Result<(), IngestError> {
        if interaction.state == InteractionState::Queued {
            let request = RoutingRequest::InteractionQueued {
                interaction_id: interaction.id.clone(),
                queue: interaction.queue.clone(),
                priority: interaction.priority,
            };
            self.routing.send(&request.to_body(), Duration::ZERO).await?;
        }
        Ok(())
    }
}

/// Copies what the CLI and operators see of the email into the journal entry.
fn describe(entry: &mut JournalEntry, parsed: &ParsedEmail) {
    entry.message_id = parsed.message_id.clone();
    entry.from = parsed.from.as_ref().map(|m| m.address.clone());
    entry.from_name = parsed.from.as_ref().and_then(|m| m.name.clone());
    entry.subject = parsed.has_headers.then(|| parsed.subject.clone());
    entry.degraded = parsed.degraded.clone();
}

fn fill_routing(entry: &mut JournalEntry, interaction: &Interaction, message: &StoredMessage) {
    entry.interaction_id = Some(interaction.id.clone());
    entry.queue = Some(interaction.queue.clone());
    entry.priority = Some(interaction.priority);
    entry.category = Some(message.category.clone());
    entry.sentiment = Some(message.sentiment);
}

/// Envelope recipients first, then `Delivered-To`, `To` and `Cc`, without repeats.
fn recipients(parsed: &ParsedEmail, envelope: &[EmailAddress]) -> Vec<EmailAddress> {
    let mut out: Vec<EmailAddress> = Vec::new();
    let all = envelope
        .iter()
        .chain(parsed.delivered_to.iter())
        .chain(parsed.to.iter().map(|m| &m.address))
        .chain(parsed.cc.iter().map(|m| &m.address));
    for a in all {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

fn clip(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

/// The identity of the logical message: Message-ID, sender, date, subject, recipients and the
/// body bytes, but none of the trace headers (`Received`, `Return-Path`, `DKIM-Signature`,
/// `X-SES-*`, ...) that differ between deliveries of the same email. Line endings are folded so a
/// CRLF and an LF copy of one message are the same message.
pub fn fingerprint(parsed: &ParsedEmail, raw: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &str| {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        h.update([0]);
    };
    field("message-id", parsed.message_id.as_ref().map(|m| m.as_str()).unwrap_or_default());
    field("from", parsed.from.as_ref().map(|m| m.address.as_str()).unwrap_or_default());
    field("date", &parsed.date.map(|d: DateTime<Utc>| d.timestamp().to_string()).unwrap_or_default());
    field("subject", &parsed.subject);
    for m in parsed.to.iter().chain(parsed.cc.iter()) {
        field("rcpt", m.address.as_str());
    }
    h.update(b"body\0");
    // Hash the runs between carriage returns: same digest as skipping each `\r`, at memcpy speed.
    for run in body_bytes(raw).split(|&b| b == b'\r') {
        h.update(run);
    }
    Fingerprint::from_digest(h.finalize())
}

/// The bytes after the header section (after the first empty line, LF or CRLF).
fn body_bytes(raw: &[u8]) -> &[u8] {
    let mut from = 0;
    while let Some(offset) = memchr::memchr(b'\n', &raw[from..]) {
        let newline = from + offset;
        let rest = &raw[newline + 1..];
        if rest.starts_with(b"\n") {
            return &raw[newline + 2..];
        }
        if rest.starts_with(b"\r\n") {
            return &raw[newline + 3..];
        }
        from = newline + 1;
    }
    &raw[raw.len()..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_starts_after_the_first_empty_line() {
        assert_eq!(body_bytes(b"A: b\n\nbody\n"), b"body\n");
        assert_eq!(body_bytes(b"A: b\r\nC: d\r\n\r\nbody"), b"body");
        assert_eq!(body_bytes(b"A: b\r\n"), b"");
        assert_eq!(body_bytes(b""), b"");
    }

    #[test]
    fn line_endings_do_not_change_the_fingerprint() {
        let lf = b"From: a@example.org\nSubject: x\n\nline one\nline two\n";
        let crlf = b"From: a@example.org\r\nSubject: x\r\n\r\nline one\r\nline two\r\n";
        let email = ParsedEmail { subject: "x".into(), ..Default::default() };
        assert_eq!(fingerprint(&email, lf), fingerprint(&email, crlf));
        assert_ne!(fingerprint(&email, lf), fingerprint(&email, b"From: a@example.org\n\nline one\n"));
    }
}
