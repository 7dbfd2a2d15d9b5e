//! The Dynamics 365 handoff: one incident (case) per interaction, with its contact, transcript,
//! queue, owner, priority and option-set values; later emails appended to the same case; the screen
//! pop on accept; and the AI assistants' handoff.
//!
//! # Idempotency
//! Every record Mailroom creates in the CRM has an id derived from what it is for (the incident
//! from the interaction id, an email activity from the message fingerprint, see `domain::crm`),
//! and the `HandoffStore` records each step once it succeeded. A retry resumes at the first step
//! not recorded; a step that succeeded without being recorded is found again by its id ("duplicate
//! key" is read back as success). A redelivered request therefore never creates a second incident.
//!
//! # Trigger
//! Work arrives as [`HandoffRequest`] JSON on the handoff queue (SQS `HandoffQueue`, or the
//! embedded queue `handoff`), processed by `functions/handoff` or by [`run_worker`] in
//! `mailroom serve`. What Dynamics refuses for good is parked on the dead-letter queue with the
//! reason, and replays unchanged once the admin fixed the cause (`mailroom dlq replay handoff`,
//! or an SQS redrive).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, instrument, warn};

use crate::domain::crm::{
    AttachmentOutcome, CASE_ORIGIN_EMAIL, CASE_ORIGIN_WEB, CaseHeader, ContactCandidate, ContactId, ContactMatch,
    ContactResolution, HandoffKey, HandoffRecord, HandoffStage, IdempotencyKey, IncidentId, NoteId, PropertyProblem,
    Speaker, TRANSCRIPT_NOTE_SUBJECT, TicketNumber, TicketProperties, TicketPropertyInput, TranscriptEntry,
    case_description, case_title, limits, prioritycode_for, rank_contacts, resolve_ticket_properties, split_name,
    strip_quoted_reply,
};
use crate::domain::ids::{AgentId, EmailAddress, Fingerprint, InteractionId};
use crate::domain::interaction::{Direction, Interaction, Priority, Sentiment, StoredMessage};
use crate::ports::crm::{
    AttachmentSource, Crm, CrmError, EmailParty, HandoffStore, NewContact, NewEmailActivity, NewIncident, NewNote,
    NoteAttachment, base64_len,
};
use crate::ports::{BackendError, Clock, IngestStore, WorkQueue};
use crate::usecases::crm_settings::{ActiveCrm, CrmRuntime, RuntimeError};

/// The name of the handoff work queue (its dead-letter queue is `handoff-dlq`).
pub const HANDOFF_QUEUE: &str = "handoff";

/// How the case's contact is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContactPolicy {
    /// Reuse a single match; with several, the deterministic rule (recorded); with none, create
    /// the contact from the sender.
    #[default]
    Automatic,
    /// The agent decides when there is no match or several (screen pop): the case waits.
    Agent,
}

/// A message on the handoff queue.
///
/// - The accept endpoint sends `interaction` (with `contact_policy: "agent"`) through
///   [`HandoffService::screen_pop`], which sends it itself when it cannot finish at once.
/// - A channel that hands off without an agent sends `interaction` with `"automatic"`.
/// - Ingest sends `message` for every message threaded into an existing interaction (and the
///   outbound mail path for every agent reply): it is dropped when the interaction has no case.
/// - `parked` is what the handoff puts on its dead-letter queue; replaying it retries `request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HandoffRequest {
    Interaction {
        interaction_id: InteractionId,
        #[serde(default)]
        contact_policy: ContactPolicy,
    },
    Message {
        interaction_id: InteractionId,
        fingerprint: Fingerprint,
    },
    /// Parked work: the request (or, when it could not be read, the body as it came) and why.
    Parked {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<Box<HandoffRequest>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        reason: String,
        parked_at: DateTime<Utc>,
    },
}

impl HandoffRequest {
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("handoff requests serialize")
    }

    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }

    /// The request itself, without parking envelopes (an unreadable parked body stays `Parked`).
    pub fn unparked(&self) -> &HandoffRequest {
        match self {
            Self::Parked { request: Some(request), .. } => request.unparked(),
            other => other,
        }
    }

    pub fn interaction_id(&self) -> Option<&InteractionId> {
        match self.unparked() {
            Self::Interaction { interaction_id, .. } | Self::Message { interaction_id, .. } => Some(interaction_id),
            Self::Parked { .. } => None,
        }
    }
}

/// Sends a `message` request: call it for each message threaded into an existing interaction.
pub async fn notify_message(
    queue: &dyn WorkQueue,
    interaction_id: &InteractionId,
    fingerprint: &Fingerprint,
) -> Result<(), BackendError> {
    let request = HandoffRequest::Message { interaction_id: interaction_id.clone(), fingerprint: fingerprint.clone() };
    queue.send(&request.to_body(), Duration::ZERO).await
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// No CRM configured, or its secret is missing (HTTP 503 from the API; parked by the worker).
    #[error(transparent)]
    NotConfigured(#[from] RuntimeError),
    /// HTTP 404.
    #[error("interaction {0} does not exist")]
    InteractionNotFound(InteractionId),
    /// The CRM refused or failed; transient or not as its source says (API: 503 when transient,
    /// 502 otherwise, with the message naming the privilege or property).
    #[error("{step}: {source}")]
    Crm {
        step: &'static str,
        #[source]
        source: CrmError,
    },
    /// Mailroom's own state (HTTP 503 when transient, else 500).
    #[error("handoff state")]
    Store(#[from] BackendError),
    /// HTTP 422, field `ticket_properties`.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidTicketProperties(Vec<PropertyProblem>),
    /// The case waits for the agent to pick or create its contact (HTTP 409, field `contact_id`).
    #[error("the case needs its contact first: pick one of the {} matching contacts or create the contact", candidates.len())]
    ContactRequired { candidates: Vec<ContactCandidate> },
    /// HTTP 422, field `contact_id`.
    #[error("contact {0} does not exist in the CRM")]
    ContactNotFound(ContactId),
    /// HTTP 409, field `contact_id`.
    #[error("the case is already linked to contact {0}")]
    AlreadyLinked(ContactId),
    /// HTTP 409, field `idempotency_key`.
    #[error("idempotency_key {0} was already used for a different conversation")]
    IdempotencyKeyReused(IdempotencyKey),
    /// HTTP 422, naming the field.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// Other workers kept updating the same handoff (HTTP 503; the queue retries).
    #[error("handoff {0} kept changing under concurrent updates")]
    Busy(HandoffKey),
}

impl HandoffError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotConfigured(e) => e.is_transient(),
            Self::Crm { source, .. } => source.is_transient(),
            Self::Store(e) => e.is_transient(),
            Self::Busy(_) => true,
            _ => false,
        }
    }

    /// How long the CRM asked us to wait, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Crm { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    /// The request field an API error names, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidTicketProperties(_) => Some("ticket_properties"),
            Self::ContactRequired { .. } | Self::ContactNotFound(_) | Self::AlreadyLinked(_) => Some("contact_id"),
            Self::IdempotencyKeyReused(_) => Some("idempotency_key"),
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn crm_step(step: &'static str) -> impl FnOnce(CrmError) -> HandoffError {
    move |source| HandoffError::Crm { step, source }
}

/// What the case is built from: the same for an email interaction and an AI conversation.
struct CaseSpec {
    sender: EmailAddress,
    sender_name: Option<String>,
    header: CaseHeader,
    entries: Vec<TranscriptEntry>,
    priority: Option<Priority>,
    properties: TicketProperties,
    /// `caseorigincode`: Email for mail, Web for an AI assistant's conversation.
    origin: i32,
}

/// The pieces the handoff works with, built once per process.
pub struct HandoffService {
    pub runtime: Arc<CrmRuntime>,
    pub store: Arc<dyn HandoffStore>,
    /// The interactions and their messages (the transcript).
    pub interactions: Arc<dyn IngestStore>,
    /// Customer attachments; without it, attachments are not copied.
    pub attachments: Option<Arc<dyn AttachmentSource>>,
    /// The handoff queue (the screen pop hands unfinished work to it).
    pub queue: Arc<dyn WorkQueue>,
    /// Where refused work is parked with its reason.
    pub dead_letters: Arc<dyn WorkQueue>,
    pub clock: Arc<dyn Clock>,
}

/// The case part of a screen pop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CaseStatus {
    /// The case exists, linked to its contact.
    Created { incident_id: IncidentId, ticket_number: TicketNumber, contact_id: ContactId },
    /// The case waits for the agent: pick one of `contacts` (`link_contact`) or create the contact
    /// (`create_contact_and_link`). It is created, linked to that contact, before wrap-up.
    AwaitingContact { incident_id: IncidentId },
    /// Dynamics is busy or unreachable: the handoff continues on the queue.
    Pending { incident_id: IncidentId, reason: String },
    /// Dynamics refused (the reason names the privilege or property); parked for replay.
    Failed { incident_id: IncidentId, reason: String },
}

/// The inbound email shown in the screen pop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmailSummary {
    pub from: EmailAddress,
    pub from_name: Option<String>,
    pub subject: String,
    pub received_at: DateTime<Utc>,
    pub text: String,
}

/// A prefilled "new contact" form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewContactPrompt {
    pub first_name: Option<String>,
    pub last_name: String,
    pub email: EmailAddress,
}

/// What the agent sees on accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScreenPop {
    pub interaction_id: InteractionId,
    /// How many customer records carry the sender's address (`None`: the lookup could not run).
    pub matches: Option<usize>,
    pub contacts: Vec<ContactCandidate>,
    pub case: CaseStatus,
    /// Set when no contact matched: the form to create it.
    pub new_contact: Option<NewContactPrompt>,
    pub inbound_email: Option<EmailSummary>,
}

/// What an agent types to create the missing contact.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContactInput {
    pub first_name: Option<String>,
    pub last_name: String,
    /// Defaults to the interaction's customer.
    pub email: Option<EmailAddress>,
}

/// Who speaks in an AI conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AiRole {
    #[serde(alias = "user")]
    Customer,
    Assistant,
    Agent,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiMessage {
    #[serde(alias = "at")]
    pub timestamp: DateTime<Utc>,
    pub role: AiRole,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSender {
    pub email: EmailAddress,
    pub name: Option<String>,
}

/// An AI assistant's handoff (`POST` by a caller with the `ai_assistant` role).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiHandoffRequest {
    pub idempotency_key: IdempotencyKey,
    pub sender: AiSender,
    pub messages: Vec<AiMessage>,
    pub classification: String,
    pub sentiment: Option<Sentiment>,
    pub summary: Option<String>,
    #[serde(default)]
    pub ticket_properties: BTreeMap<String, TicketPropertyInput>,
}

/// The answer to an AI handoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AiHandoffResult {
    pub incident_id: IncidentId,
    pub ticket_number: TicketNumber,
    pub contact_id: ContactId,
    pub contact_resolution: Option<ContactResolution>,
    /// Several contacts matched the sender; which one was used and why.
    pub ambiguity: Option<String>,
    /// The description was cut; the whole transcript is in the note "Full transcript".
    pub transcript_in_note: bool,
    /// True when this key was handed off before (nothing new was created).
    pub replayed: bool,
}

/// What a worker did with one queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkOutcome {
    /// Done (or nothing to do): delete it.
    Done,
    /// Worth another attempt, after `after` if Dynamics said.
    Retry { after: Option<Duration>, reason: String },
    /// Refused for good: parked on the dead-letter queue with `reason`; delete the original.
    Parked { reason: String },
}

const MAX_CONFLICTS: u32 = 20;

fn email_author(name: Option<&str>, address: &EmailAddress) -> String {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => format!("{n} <{address}>"),
        None => address.to_string(),
    }
}

fn email_entries(messages: &[StoredMessage]) -> Vec<TranscriptEntry> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut text = if i == 0 { m.text_body.trim().to_owned() } else { strip_quoted_reply(&m.text_body) };
            if m.body_truncated {
                text.push_str("\n[message shortened; the whole email is kept in Mailroom]");
            }
            if !m.attachments.is_empty() {
                let names: Vec<String> = m
                    .attachments
                    .iter()
                    .map(|a| a.file_name.clone().unwrap_or_else(|| a.content_type.clone()))
                    .collect();
                text.push_str(&format!("\n[attachments: {}]", names.join(", ")));
            }
            TranscriptEntry {
                // When the sender wrote it (Date), else when Mailroom received it.
                at: m.sent_at.unwrap_or(m.received_at),
                speaker: match m.direction {
                    Direction::Inbound => Speaker::Customer,
                    Direction::Outbound => Speaker::Agent,
                },
                author: email_author(m.from_name.as_deref(), &m.from),
                subject: Some(m.subject.clone()),
                text,
            }
        })
        .collect()
}

fn email_spec(interaction: &Interaction, messages: &[StoredMessage]) -> CaseSpec {
    CaseSpec {
        sender: interaction.customer.clone(),
        sender_name: interaction.customer_name.clone(),
        header: CaseHeader {
            channel: "email".into(),
            classification: interaction.category.to_string(),
            sentiment: Some(interaction.sentiment),
            summary: None,
        },
        entries: email_entries(messages),
        priority: Some(interaction.priority),
        properties: TicketProperties::default(),
        origin: CASE_ORIGIN_EMAIL,
    }
}

fn describe_ambiguity(matches: &[ContactMatch], email: &EmailAddress) -> String {
    let chosen = &matches[0];
    let why = match chosen.matched_on {
        1 => "it carries the address in emailaddress1",
        2 => "none carries it in emailaddress1 and it does in emailaddress2",
        _ => "the address is only in emailaddress3",
    };
    let others: Vec<&str> = matches[1..].iter().map(|m| m.contact.id.as_str()).collect();
    format!(
        "{} contacts carry {email}; used {} ({why}, oldest first); not used: {}",
        matches.len(),
        chosen.contact.id,
        others.join(", ")
    )
}

fn summary_of(m: &StoredMessage) -> EmailSummary {
    EmailSummary {
        from: m.from.clone(),
        from_name: m.from_name.clone(),
        subject: m.subject.clone(),
        received_at: m.received_at,
        text: m.text_body.clone(),
    }
}

impl HandoffService {
    async fn active(&self) -> Result<ActiveCrm, HandoffError> {
        Ok(self.runtime.active().await?)
    }

    async fn load_interaction(&self, id: &InteractionId) -> Result<(Interaction, Vec<StoredMessage>), HandoffError> {
        let interaction =
            self.interactions.interaction(id).await?.ok_or_else(|| HandoffError::InteractionNotFound(id.clone()))?;
        let messages = self.interactions.interaction_messages(id).await?;
        Ok((interaction, messages))
    }

    async fn record_for(&self, key: &HandoffKey, incident: IncidentId) -> Result<HandoffRecord, HandoffError> {
        Ok(match self.store.get(key).await? {
            Some(r) => r,
            None => HandoffRecord::new(key.clone(), incident, self.clock.now()),
        })
    }

    /// Writes the record; `None` when someone else wrote it first (the caller reloads and redoes
    /// its step, which is idempotent).
    async fn save(&self, record: &mut HandoffRecord, conflicts: &mut u32) -> Result<bool, HandoffError> {
        record.updated_at = self.clock.now();
        record.last_error = None;
        match self.store.put(record).await {
            Ok(stored) => {
                *record = stored;
                Ok(true)
            }
            Err(BackendError::Conflict { .. }) => {
                *conflicts += 1;
                if *conflicts > MAX_CONFLICTS {
                    return Err(HandoffError::Busy(record.key.clone()));
                }
                *record = self.record_for(&record.key, record.incident_id.clone()).await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a failure on the handoff (best effort: the failure itself matters more).
    async fn note_failure(&self, key: &HandoffKey, error: &HandoffError) {
        let Ok(Some(mut record)) = self.store.get(key).await else { return };
        record.last_error = Some(error_text(error));
        record.updated_at = self.clock.now();
        if let Err(e) = self.store.put(&record).await {
            warn!(handoff = %key, error = %e, "could not record the handoff failure");
        }
    }

    /// Brings the handoff as far as it can go: contact, incident, transcript note, queue, and
    /// (for email) every message of the interaction as an email activity with its attachments.
    async fn drive(
        &self,
        key: &HandoffKey,
        incident_id: IncidentId,
        spec: &CaseSpec,
        policy: ContactPolicy,
        interaction: Option<&InteractionId>,
        prepare: impl Fn(&mut HandoffRecord),
    ) -> Result<HandoffRecord, HandoffError> {
        let ActiveCrm { crm, settings } = self.active().await?;
        let mut record = self.record_for(key, incident_id).await?;
        let mut conflicts = 0;
        let mut contact_reset = false;
        if record.version == 0 {
            prepare(&mut record);
        }
        loop {
            // 1. The contact.
            if record.contact.is_none() {
                // Looked up again even when waiting for the agent: a contact created in Dynamics
                // meanwhile settles it.
                let found = crm.find_contacts_by_email(&spec.sender).await.map_err(crm_step("look up the contact"))?;
                let matches = rank_contacts(&spec.sender, found);
                record.candidates = matches.iter().map(ContactCandidate::from).collect();
                match (matches.len(), policy) {
                    (1, _) => {
                        record.contact = Some(matches[0].contact.id.clone());
                        record.contact_resolution = Some(ContactResolution::Matched);
                    }
                    (0, ContactPolicy::Automatic) => {
                        let name = split_name(spec.sender_name.as_deref(), &spec.sender);
                        let new = NewContact {
                            id: ContactId::for_sender(&spec.sender),
                            first_name: name.first,
                            last_name: name.last,
                            email: spec.sender.clone(),
                        };
                        let created = crm.create_contact(&new).await.map_err(crm_step("create the contact"))?;
                        record.contact = Some(created.id);
                        record.contact_resolution = Some(ContactResolution::CreatedFromSender);
                    }
                    (_, ContactPolicy::Automatic) => {
                        let ambiguity = describe_ambiguity(&matches, &spec.sender);
                        warn!(handoff = %key, matches = matches.len(), "several contacts share the sender's address; chose one by rule");
                        record.contact = Some(matches[0].contact.id.clone());
                        record.contact_resolution = Some(ContactResolution::MatchedAmbiguous);
                        record.ambiguity = Some(ambiguity);
                    }
                    (_, ContactPolicy::Agent) => {
                        record.stage = HandoffStage::AwaitingContact;
                        if self.save(&mut record, &mut conflicts).await? {
                            info!(handoff = %key, matches = matches.len(), "case waits for the agent to settle the contact");
                            return Ok(record);
                        }
                        continue;
                    }
                }
                // Settled: no longer waiting for the agent.
                record.stage = HandoffStage::Started;
                self.save(&mut record, &mut conflicts).await?;
                continue;
            }

            // 2. The incident.
            if !record.is_created() {
                let contact = record.contact.clone().expect("checked above");
                let description = case_description(&spec.header, &spec.entries, limits::DESCRIPTION);
                let priority = match spec.priority {
                    Some(p) if settings.map_mailroom_priority => prioritycode_for(p),
                    _ => settings.default_priority,
                };
                let incident = NewIncident {
                    id: record.incident_id.clone(),
                    title: case_title(&spec.header.classification, spec.sender_name.as_deref(), &spec.sender),
                    description: description.text,
                    customer: contact,
                    origin: spec.origin,
                    priority: Some(priority),
                    owner: settings.default_owner.clone(),
                    email: Some(spec.sender.clone()),
                    properties: settings.ticket_properties.merged_with(&spec.properties),
                };
                let created = match crm.create_incident(&incident).await {
                    Ok(created) => created,
                    // The contact chosen by an earlier attempt was deleted meanwhile: look again, once.
                    Err(CrmError::NotFound { .. })
                        if !contact_reset
                            && matches!(
                                record.contact_resolution,
                                Some(ContactResolution::Matched | ContactResolution::MatchedAmbiguous)
                            ) =>
                    {
                        contact_reset = true;
                        record.contact = None;
                        record.contact_resolution = None;
                        record.ambiguity = None;
                        continue;
                    }
                    Err(e) => return Err(crm_step("create the case")(e)),
                };
                record.ticket_number = Some(created.ticket_number);
                record.stage = HandoffStage::Created;
                record.description_truncated = description.truncated;
                if self.save(&mut record, &mut conflicts).await? {
                    info!(handoff = %key, incident_id = %record.incident_id, "case created");
                }
                continue;
            }

            // 3. The full transcript, when the description had to be cut.
            if record.description_truncated && !record.transcript_note_added {
                let full = crate::domain::crm::render_transcript(&spec.header, &spec.entries);
                let note = NewNote {
                    id: NoteId::for_transcript(&record.incident_id),
                    incident: record.incident_id.clone(),
                    subject: TRANSCRIPT_NOTE_SUBJECT.into(),
                    text: full.clone(),
                    attachment: Some(NoteAttachment {
                        file_name: "transcript.txt".into(),
                        mime_type: "text/plain".into(),
                        bytes: full.into_bytes(),
                    }),
                };
                crm.add_note(&note).await.map_err(crm_step("attach the full transcript"))?;
                record.transcript_note_added = true;
                self.save(&mut record, &mut conflicts).await?;
                continue;
            }

            // 4. The queue.
            if let Some(queue) = &settings.default_queue_id
                && record.queued_in.as_ref() != Some(queue)
            {
                crm.add_to_queue(queue, &record.incident_id)
                    .await
                    .map_err(crm_step("add the case to the default queue"))?;
                record.queued_in = Some(queue.clone());
                self.save(&mut record, &mut conflicts).await?;
                continue;
            }

            // 5. Every email of the interaction on the case's timeline, read now so that messages
            //    that arrived while the case was being created are included.
            let Some(interaction_id) = interaction else { return Ok(record) };
            let messages = self.interactions.interaction_messages(interaction_id).await?;
            let Some(next) = messages.iter().find(|m| !record.appended.contains(&m.fingerprint)) else {
                return Ok(record);
            };
            let outcomes = self.append_message(crm.as_ref(), &record, next).await?;
            record.appended.push(next.fingerprint.clone());
            record.attachments.retain(|a| a.message != next.fingerprint);
            record.attachments.extend(outcomes);
            self.save(&mut record, &mut conflicts).await?;
        }
    }

    /// One email as an activity on the case, and its attachments as notes.
    async fn append_message(
        &self,
        crm: &dyn Crm,
        record: &HandoffRecord,
        message: &StoredMessage,
    ) -> Result<Vec<AttachmentOutcome>, HandoffError> {
        let contact = record.contact.clone();
        let as_party = |address: &EmailAddress, is_customer: bool| match (&contact, is_customer) {
            (Some(id), true) => EmailParty::Contact(id.clone(), address.clone()),
            _ => EmailParty::Address(address.clone()),
        };
        let customer_side = message.direction == Direction::Inbound;
        let activity = NewEmailActivity {
            id: crate::domain::crm::ActivityId::for_message(&record.incident_id, &message.fingerprint),
            incident: record.incident_id.clone(),
            subject: message.subject.clone(),
            body: message.text_body.clone(),
            incoming: customer_side,
            from: as_party(&message.from, customer_side),
            to: message.to.iter().map(|a| as_party(a, !customer_side)).collect(),
            cc: message.cc.iter().map(|a| EmailParty::Address(a.clone())).collect(),
            sent_at: message.sent_at.unwrap_or(message.received_at),
        };
        crm.add_email_activity(&activity).await.map_err(crm_step("add the email to the case"))?;

        let Some(source) = &self.attachments else { return Ok(Vec::new()) };
        if message.attachments.is_empty() {
            return Ok(Vec::new());
        }
        let files = source.attachments(message).await?;
        let limit = crm.max_upload_bytes().await.map_err(crm_step("read the upload limit"))?;
        let mut outcomes = Vec::new();
        for (index, file) in files.into_iter().enumerate() {
            let size = file.bytes.len() as u64;
            let id = NoteId::for_attachment(&record.incident_id, &message.fingerprint, index);
            let mut added = base64_len(file.bytes.len()) <= limit;
            if added {
                let note = NewNote {
                    id: id.clone(),
                    incident: record.incident_id.clone(),
                    subject: format!("Attachment: {}", file.file_name),
                    text: format!(
                        "From the email \"{}\" received {}",
                        message.subject,
                        message.received_at.format("%Y-%m-%d %H:%M UTC")
                    ),
                    attachment: Some(NoteAttachment {
                        file_name: file.file_name.clone(),
                        mime_type: file.mime_type.clone(),
                        bytes: file.bytes,
                    }),
                };
                match crm.add_note(&note).await {
                    Ok(()) => {}
                    // The org's limit may be lower than it said a moment ago.
                    Err(CrmError::Rejected { code, .. }) if code.eq_ignore_ascii_case("0x80044a02") => added = false,
                    Err(e) => return Err(crm_step("attach a customer file")(e)),
                }
            }
            if !added {
                let note = NewNote {
                    id,
                    incident: record.incident_id.clone(),
                    subject: format!("Attachment not copied: {}", file.file_name),
                    text: format!(
                        "The customer's file \"{}\" ({size} bytes) is larger than the organization's upload limit ({limit} bytes as Base64). \
                         It is kept in Mailroom with the original email \"{}\".",
                        file.file_name, message.subject
                    ),
                    attachment: None,
                };
                crm.add_note(&note).await.map_err(crm_step("note a file that was too large"))?;
            }
            outcomes.push(AttachmentOutcome {
                message: message.fingerprint.clone(),
                index,
                file_name: file.file_name,
                size,
                added,
            });
        }
        Ok(outcomes)
    }

    /// Hands an interaction off: the worker's entry for `interaction` requests.
    #[instrument(skip_all, fields(interaction_id = %interaction_id))]
    pub async fn handoff_interaction(
        &self,
        interaction_id: &InteractionId,
        policy: ContactPolicy,
    ) -> Result<HandoffRecord, HandoffError> {
        let (interaction, messages) = self.load_interaction(interaction_id).await?;
        let spec = email_spec(&interaction, &messages);
        let key = HandoffKey::interaction(interaction_id);
        let result = self
            .drive(&key, IncidentId::for_interaction(interaction_id), &spec, policy, Some(interaction_id), |_| {})
            .await;
        if let Err(e) = &result {
            self.note_failure(&key, e).await;
        }
        result
    }

    /// A message joined an interaction: append it if the interaction has a case. Without a case
    /// there is nothing to do (the whole thread goes in when the case is created).
    #[instrument(skip_all, fields(interaction_id = %interaction_id))]
    pub async fn message_added(&self, interaction_id: &InteractionId) -> Result<Option<HandoffRecord>, HandoffError> {
        let key = HandoffKey::interaction(interaction_id);
        match self.store.get(&key).await? {
            Some(r) if r.is_created() => {
                self.handoff_interaction(interaction_id, ContactPolicy::Automatic).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Processes one request from the queue.
    pub async fn process(&self, request: &HandoffRequest) -> Result<(), HandoffError> {
        match request.unparked() {
            HandoffRequest::Interaction { interaction_id, contact_policy } => {
                self.handoff_interaction(interaction_id, *contact_policy).await.map(|_| ())
            }
            HandoffRequest::Message { interaction_id, .. } => self.message_added(interaction_id).await.map(|_| ()),
            HandoffRequest::Parked { reason, .. } => {
                Err(HandoffError::Invalid { field: "body".into(), problem: format!("unreadable work: {reason}") })
            }
        }
    }

    /// Handles one queue message: processes it, and parks what Dynamics refuses for good.
    pub async fn handle_work(&self, body: &str) -> WorkOutcome {
        let request = match HandoffRequest::from_body(body) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("not a handoff request: {e}");
                let parked = HandoffRequest::Parked {
                    request: None,
                    body: Some(body.to_owned()),
                    reason: reason.clone(),
                    parked_at: self.clock.now(),
                };
                return self.park_body(&parked.to_body(), reason).await;
            }
        };
        match self.process(&request).await {
            Ok(()) => WorkOutcome::Done,
            Err(e) if e.is_transient() => WorkOutcome::Retry { after: e.retry_after(), reason: error_text(&e) },
            Err(e) => {
                let reason = error_text(&e);
                let interaction_id = request.interaction_id().map(ToString::to_string).unwrap_or_default();
                warn!(interaction_id, reason = %reason, "handoff refused; parked on the dead-letter queue");
                let (inner, raw) = match request.unparked() {
                    HandoffRequest::Parked { body, .. } => (None, body.clone()),
                    other => (Some(Box::new(other.clone())), None),
                };
                let parked = HandoffRequest::Parked {
                    request: inner,
                    body: raw,
                    reason: reason.clone(),
                    parked_at: self.clock.now(),
                };
                self.park_body(&parked.to_body(), reason).await
            }
        }
    }

    async fn park_body(&self, body: &str, reason: String) -> WorkOutcome {
        match self.dead_letters.send(body, Duration::ZERO).await {
            Ok(()) => WorkOutcome::Parked { reason },
            Err(e) => WorkOutcome::Retry { after: None, reason: format!("{reason}; parking it failed too: {e}") },
        }
    }

    // ------------------------------------------------------------------------------ screen pop

    /// The screen pop on accept: how many customer records match the sender and which; with one,
    /// the case linked to it (and the inbound email on it); with none or several, the case waits
    /// for the agent. When Dynamics is busy the handoff continues on the queue (`Pending`).
    #[instrument(skip_all, fields(interaction_id = %interaction_id))]
    pub async fn screen_pop(&self, interaction_id: &InteractionId) -> Result<ScreenPop, HandoffError> {
        let (interaction, messages) = self.load_interaction(interaction_id).await?;
        let result = self.handoff_interaction(interaction_id, ContactPolicy::Agent).await;
        let incident_id = IncidentId::for_interaction(interaction_id);
        let key = HandoffKey::interaction(interaction_id);
        let record = self.store.get(&key).await?;
        let case = match (&result, &record) {
            (Ok(r), _) => status_of(r),
            (Err(HandoffError::InteractionNotFound(id)), _) => {
                return Err(HandoffError::InteractionNotFound(id.clone()));
            }
            (Err(e), _) if e.is_transient() => {
                let request = HandoffRequest::Interaction {
                    interaction_id: interaction_id.clone(),
                    contact_policy: ContactPolicy::Agent,
                };
                self.queue.send(&request.to_body(), e.retry_after().unwrap_or(Duration::ZERO)).await?;
                CaseStatus::Pending { incident_id: incident_id.clone(), reason: error_text(e) }
            }
            (Err(e), _) => {
                let reason = error_text(e);
                let parked = HandoffRequest::Parked {
                    request: Some(Box::new(HandoffRequest::Interaction {
                        interaction_id: interaction_id.clone(),
                        contact_policy: ContactPolicy::Agent,
                    })),
                    body: None,
                    reason: reason.clone(),
                    parked_at: self.clock.now(),
                };
                self.dead_letters.send(&parked.to_body(), Duration::ZERO).await?;
                CaseStatus::Failed { incident_id: incident_id.clone(), reason }
            }
        };
        let looked_up = record.as_ref().is_some_and(|r| r.contact.is_some() || r.stage != HandoffStage::Started);
        let contacts = record.as_ref().map(|r| r.candidates.clone()).unwrap_or_default();
        let new_contact = (looked_up
            && contacts.is_empty()
            && record.as_ref().is_some_and(|r| r.stage == HandoffStage::AwaitingContact))
        .then(|| {
            let name = split_name(interaction.customer_name.as_deref(), &interaction.customer);
            NewContactPrompt { first_name: name.first, last_name: name.last, email: interaction.customer.clone() }
        });
        let inbound_email = messages.iter().rev().find(|m| m.direction == Direction::Inbound).map(summary_of);
        Ok(ScreenPop {
            interaction_id: interaction_id.clone(),
            matches: looked_up.then_some(contacts.len()),
            contacts,
            case,
            new_contact,
            inbound_email,
        })
    }

    /// The agent picked the contact (several matched, or they found it themselves): the case is
    /// created and linked to it.
    #[instrument(skip_all, fields(interaction_id = %interaction_id))]
    pub async fn link_contact(
        &self,
        interaction_id: &InteractionId,
        contact_id: &ContactId,
    ) -> Result<HandoffRecord, HandoffError> {
        self.settle_contact(interaction_id, contact_id.clone(), ContactResolution::PickedByAgent, true).await
    }

    /// The agent created the missing contact: it is created in the CRM and the case linked to it.
    #[instrument(skip_all, fields(interaction_id = %interaction_id))]
    pub async fn create_contact_and_link(
        &self,
        interaction_id: &InteractionId,
        input: NewContactInput,
    ) -> Result<HandoffRecord, HandoffError> {
        let (interaction, _) = self.load_interaction(interaction_id).await?;
        let last = input.last_name.trim();
        if last.is_empty() {
            return Err(HandoffError::Invalid { field: "last_name".into(), problem: "is required".into() });
        }
        for (field, value) in [("first_name", input.first_name.as_deref().unwrap_or("")), ("last_name", last)] {
            if crate::domain::crm::dataverse_len(value.trim()) > limits::NAME_PART {
                return Err(HandoffError::Invalid {
                    field: field.into(),
                    problem: "is longer than 50 characters".into(),
                });
            }
        }
        let email = input.email.unwrap_or_else(|| interaction.customer.clone());
        let ActiveCrm { crm, .. } = self.active().await?;
        let created = crm
            .create_contact(&NewContact {
                id: ContactId::for_sender(&email),
                first_name: input.first_name.map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()),
                last_name: last.to_owned(),
                email,
            })
            .await
            .map_err(crm_step("create the contact"))?;
        self.settle_contact(interaction_id, created.id, ContactResolution::CreatedByAgent, false).await
    }

    async fn settle_contact(
        &self,
        interaction_id: &InteractionId,
        contact_id: ContactId,
        how: ContactResolution,
        verify: bool,
    ) -> Result<HandoffRecord, HandoffError> {
        let key = HandoffKey::interaction(interaction_id);
        let (interaction, messages) = self.load_interaction(interaction_id).await?;
        if verify {
            let ActiveCrm { crm, .. } = self.active().await?;
            if crm.contact(&contact_id).await.map_err(crm_step("read the contact"))?.is_none() {
                return Err(HandoffError::ContactNotFound(contact_id));
            }
        }
        let mut conflicts = 0;
        loop {
            let mut record = self.record_for(&key, IncidentId::for_interaction(interaction_id)).await?;
            match &record.contact {
                Some(existing) if *existing == contact_id => break,
                Some(existing) if record.is_created() => return Err(HandoffError::AlreadyLinked(existing.clone())),
                _ => {}
            }
            record.contact = Some(contact_id.clone());
            record.contact_resolution = Some(how);
            record.ambiguity = None;
            record.stage = HandoffStage::Started;
            if self.save(&mut record, &mut conflicts).await? {
                break;
            }
        }
        let spec = email_spec(&interaction, &messages);
        let result = self
            .drive(
                &key,
                IncidentId::for_interaction(interaction_id),
                &spec,
                ContactPolicy::Agent,
                Some(interaction_id),
                |_| {},
            )
            .await;
        if let Err(e) = &result {
            self.note_failure(&key, e).await;
            if e.is_transient() {
                let request = HandoffRequest::Interaction {
                    interaction_id: interaction_id.clone(),
                    contact_policy: ContactPolicy::Agent,
                };
                self.queue.send(&request.to_body(), e.retry_after().unwrap_or(Duration::ZERO)).await?;
            }
        }
        result
    }

    /// Before wrap-up: a case waiting for its contact must get one first (never a case left
    /// without its customer, never a placeholder contact). `Ok` when there is nothing to settle.
    pub async fn check_wrap_up(&self, interaction_id: &InteractionId) -> Result<Option<HandoffRecord>, HandoffError> {
        let record = self.store.get(&HandoffKey::interaction(interaction_id)).await?;
        match &record {
            Some(r)
                if r.stage == HandoffStage::AwaitingContact
                    || (r.contact.is_none() && r.stage != HandoffStage::Created) =>
            {
                Err(HandoffError::ContactRequired { candidates: r.candidates.clone() })
            }
            _ => Ok(record),
        }
    }

    /// The handoff record of an interaction (the API's "case" view).
    pub async fn case_for_interaction(
        &self,
        interaction_id: &InteractionId,
    ) -> Result<Option<HandoffRecord>, HandoffError> {
        Ok(self.store.get(&HandoffKey::interaction(interaction_id)).await?)
    }

    /// The most recently updated handoffs.
    pub async fn recent(&self, limit: usize) -> Result<Vec<HandoffRecord>, HandoffError> {
        Ok(self.store.recent(limit).await?)
    }

    // ------------------------------------------------------------------------------ AI handoff

    /// An AI assistant hands a conversation off: one incident per (assistant, idempotency key),
    /// with the same transcript rules as email. Repeating the call returns the same incident.
    #[instrument(skip_all, fields(agent_id = %client))]
    pub async fn ai_handoff(
        &self,
        client: &AgentId,
        request: AiHandoffRequest,
    ) -> Result<AiHandoffResult, HandoffError> {
        let invalid =
            |field: &str, problem: &str| HandoffError::Invalid { field: field.into(), problem: problem.into() };
        let classification = request.classification.trim();
        if classification.is_empty() || classification.chars().count() > 100 {
            return Err(invalid("classification", "must be 1 to 100 characters"));
        }
        if request.messages.is_empty() {
            return Err(invalid("messages", "must hold at least one message"));
        }
        if request.messages.len() > 1000 {
            return Err(invalid("messages", "must hold at most 1000 messages"));
        }
        for (i, m) in request.messages.iter().enumerate() {
            if m.text.trim().is_empty() {
                return Err(invalid(&format!("messages[{i}].text"), "is empty"));
            }
            if m.text.len() > 100_000 {
                return Err(invalid(&format!("messages[{i}].text"), "is longer than 100,000 bytes"));
            }
        }
        if request.summary.as_ref().is_some_and(|s| s.chars().count() > 1000) {
            return Err(invalid("summary", "must be at most 1000 characters"));
        }
        let digest = request_digest(&request);
        let key = HandoffKey::ai(client, &request.idempotency_key);
        let incident_id = IncidentId::for_ai_handoff(client, &request.idempotency_key);
        if let Some(existing) = self.store.get(&key).await? {
            // Records from before the summary and sentiment counted hold the older digest.
            let same = [digest.as_str(), legacy_request_digest(&request).as_str()]
                .contains(&existing.request_digest.as_deref().unwrap_or_default());
            if !same {
                return Err(HandoffError::IdempotencyKeyReused(request.idempotency_key.clone()));
            }
            if existing.is_created() && existing.last_error.is_none() {
                return ai_result(&existing, true);
            }
        }
        let ActiveCrm { crm, .. } = self.active().await?;
        let properties = if request.ticket_properties.is_empty() {
            TicketProperties::default()
        } else {
            let sets = crm.incident_option_sets().await.map_err(crm_step("read the option sets"))?;
            resolve_ticket_properties(&request.ticket_properties, &sets)
                .map_err(HandoffError::InvalidTicketProperties)?
        };
        let mut messages = request.messages.clone();
        messages.sort_by_key(|m| m.timestamp);
        let sender_author = email_author(request.sender.name.as_deref(), &request.sender.email);
        let spec = CaseSpec {
            sender: request.sender.email.clone(),
            sender_name: request.sender.name.clone(),
            header: CaseHeader {
                channel: "AI assistant".into(),
                classification: classification.to_owned(),
                sentiment: request.sentiment,
                summary: request.summary.clone(),
            },
            entries: messages
                .iter()
                .map(|m| TranscriptEntry {
                    at: m.timestamp,
                    speaker: match m.role {
                        AiRole::Customer => Speaker::Customer,
                        AiRole::Assistant => Speaker::Assistant,
                        AiRole::Agent => Speaker::Agent,
                    },
                    author: match m.role {
                        AiRole::Customer => sender_author.clone(),
                        AiRole::Assistant => format!("AI assistant {client}"),
                        AiRole::Agent => "agent".into(),
                    },
                    subject: None,
                    text: m.text.clone(),
                })
                .collect(),
            priority: None,
            properties,
            // The conversation happened on the web (chat), not in the mailbox.
            origin: CASE_ORIGIN_WEB,
        };
        let result = self
            .drive(&key, incident_id, &spec, ContactPolicy::Automatic, None, |r| {
                r.request_digest = Some(digest.clone())
            })
            .await;
        match result {
            Ok(record) => {
                info!(incident_id = %record.incident_id, "AI handoff done");
                ai_result(&record, false)
            }
            Err(e) => {
                self.note_failure(&key, &e).await;
                Err(e)
            }
        }
    }
}

fn status_of(record: &HandoffRecord) -> CaseStatus {
    match (&record.stage, &record.contact, &record.ticket_number) {
        (HandoffStage::Created, Some(contact), Some(ticket)) => CaseStatus::Created {
            incident_id: record.incident_id.clone(),
            ticket_number: ticket.clone(),
            contact_id: contact.clone(),
        },
        _ => CaseStatus::AwaitingContact { incident_id: record.incident_id.clone() },
    }
}

fn ai_result(record: &HandoffRecord, replayed: bool) -> Result<AiHandoffResult, HandoffError> {
    let (Some(ticket), Some(contact)) = (&record.ticket_number, &record.contact) else {
        return Err(HandoffError::Busy(record.key.clone()));
    };
    Ok(AiHandoffResult {
        incident_id: record.incident_id.clone(),
        ticket_number: ticket.clone(),
        contact_id: contact.clone(),
        contact_resolution: record.contact_resolution,
        ambiguity: record.ambiguity.clone(),
        transcript_in_note: record.description_truncated,
        replayed,
    })
}

/// A digest of what the request says (not of its JSON layout), to recognise a retry: the same
/// key with another summary or sentiment is a different request, not a retry.
fn request_digest(r: &AiHandoffRequest) -> String {
    let mut h = Sha256::new();
    h.update("v2");
    h.update([0]);
    h.update(legacy_request_digest(r));
    h.update([0]);
    h.update(r.summary.as_deref().map(str::trim).unwrap_or(""));
    h.update([0]);
    h.update(r.sentiment.map(|s| format!("{s:?}")).unwrap_or_default());
    hex::encode(h.finalize())
}

/// The digest records were written with before the summary and the sentiment counted.
fn legacy_request_digest(r: &AiHandoffRequest) -> String {
    let mut h = Sha256::new();
    h.update(r.sender.email.as_str());
    h.update([0]);
    h.update(r.sender.name.as_deref().unwrap_or(""));
    h.update([0]);
    h.update(r.classification.trim());
    h.update([0]);
    for m in &r.messages {
        h.update(m.timestamp.to_rfc3339());
        h.update([0]);
        h.update(format!("{:?}", m.role));
        h.update([0]);
        h.update(&m.text);
        h.update([0]);
    }
    h.update(serde_json::to_string(&r.ticket_properties).unwrap_or_default());
    hex::encode(h.finalize())
}

/// An error with its causes, on one line: what an operator reads in the dead-letter queue.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The handoff worker of `mailroom serve`: takes requests from the queue until `shutdown`
/// completes. Retries wait what Dynamics asked for (or back off with the receive count); the
/// embedded queue dead-letters what keeps failing after 5 receives.
pub async fn run_worker(service: Arc<HandoffService>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            processed = drain(&service, Duration::from_secs(5)) => {
                if let Err(e) = processed {
                    warn!(error = %e, "handoff queue unavailable; retrying shortly");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// Processes what the handoff queue holds (waiting up to `wait` for the first message) and
/// returns how many messages were handled. Tests and the CLI use it to run the worker once.
pub async fn drain(service: &HandoffService, wait: Duration) -> Result<usize, BackendError> {
    let batch = service.queue.receive(10, Duration::from_secs(120), wait).await?;
    let count = batch.len();
    for work in batch {
        match service.handle_work(&work.body).await {
            WorkOutcome::Done | WorkOutcome::Parked { .. } => service.queue.delete(&work.receipt).await?,
            WorkOutcome::Retry { after, reason } => {
                let backoff = Duration::from_secs(5u64.saturating_mul(1 << work.receive_count.min(6)));
                let delay = after.unwrap_or(backoff);
                warn!(receive_count = work.receive_count, delay_s = delay.as_secs(), reason = %reason, "handoff will be retried");
                service.queue.release(&work.receipt, delay).await?;
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unpark() {
        let id = InteractionId::parse("X7QS1J3FMJ7X").unwrap();
        let r = HandoffRequest::Interaction { interaction_id: id.clone(), contact_policy: ContactPolicy::Agent };
        assert_eq!(r.to_body(), r#"{"type":"interaction","interaction_id":"X7QS1J3FMJ7X","contact_policy":"agent"}"#);
        assert_eq!(HandoffRequest::from_body(&r.to_body()).unwrap(), r);
        let minimal = HandoffRequest::from_body(r#"{"type":"interaction","interaction_id":"X7QS1J3FMJ7X"}"#).unwrap();
        assert_eq!(
            minimal,
            HandoffRequest::Interaction { interaction_id: id.clone(), contact_policy: ContactPolicy::Automatic }
        );
        let parked = HandoffRequest::Parked {
            request: Some(Box::new(r.clone())),
            body: None,
            reason: "x".into(),
            parked_at: chrono::Utc::now(),
        };
        let again = HandoffRequest::from_body(&parked.to_body()).unwrap();
        assert_eq!(again.unparked(), &r);
        assert_eq!(again.interaction_id(), Some(&id));
        assert!(HandoffRequest::from_body(r#"{"type":"interaction"}"#).is_err());
    }

    #[test]
    fn error_text_keeps_the_cause_once() {
        let e = HandoffError::Crm {
            step: "create the case",
            source: CrmError::MissingPrivilege {
                operation: "create incident",
                privilege: "prvCreateIncident".into(),
                message: "Principal user is missing prvCreateIncident privilege".into(),
            },
        };
        let text = error_text(&e);
        assert!(
            text.starts_with("create the case: create incident: the application user lacks the prvCreateIncident"),
            "{text}"
        );
        assert_eq!(text.matches("lacks").count(), 1, "{text}");
    }
}
