//! Composing outbound mail for agents: reply, reply-all, forward, a new email, a follow-up.
//!
//! Each action composes the message (threading headers, subject token, our own Message-ID,
//! Thread-Index, signature, quote, attachments), checks that the sending account may send it
//! (From alignment) *before* anything is queued, renders it once, keeps the bytes in the raw mail
//! store, records it in the interaction's transcript and as a delivery record (`queued`), and puts
//! a send job on the send queue. The send worker ([`super::send_mail`]) delivers it.
//!
//! Everything is idempotent under a request's idempotency key: the same key composes the same
//! Message-ID, and every write is keyed by it, so a retried API call records and sends once.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, instrument};

use crate::domain::agent::Agent;
use crate::domain::email::AttachmentInfo;
use crate::domain::ids::{
    AgentId, Category, ChannelName, EmailAddress, Fingerprint, InteractionId, InvalidValue, MessageId,
};
use crate::domain::interaction::{
    Direction, Interaction, InteractionState, Priority, STORED_BODY_LIMIT, Sentiment, StoredMessage,
};
use crate::domain::journal::Disposition;
use crate::domain::outbound::{
    self, AgentIdentity, AttachmentError, AttachmentLimits, DeliveryState, FileName, ForwardedOriginal, HeaderText,
    MediaType, OutboundAttachment, OutboundEmail, OutboundKind, OutboundMailbox, OutboundRecord, Quoted, RouteError,
    SendAccount, SendAs, SendJob, SendingChannel, ServerReply, ThreadIndex,
};
use crate::domain::profile::{AgentProfile, SanitizedHtml, Signature, SignatureName};
use crate::ports::outbound::{ChannelDirectory, MessageRenderer, OutboundStore, ProfileStore, RenderError, Route};
use crate::ports::secrets::SecretStore;
use crate::ports::{BackendError, Clock, IngestStore, RawMailStore, WorkQueue};

/// The name of the queue that carries send jobs (the SQS `SendQueue` in AWS).
pub const SEND_QUEUE: &str = "send";

/// How an outbound error should be answered: the API maps these to HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 404
    NotFound,
    /// 403
    Forbidden,
    /// 422, with the field named
    Invalid,
    /// 413, field `attachments`
    TooLarge,
    /// 503: try again
    Unavailable,
    /// 500
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("no such interaction")]
    NotFound,
    #[error("the interaction is not assigned to you")]
    NotAssigned,
    #[error("{field}: {problem}")]
    Invalid { field: &'static str, problem: String },
    #[error("{0}")]
    Route(#[from] RouteError),
    #[error("{0}")]
    Attachments(#[from] AttachmentError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("the message could not be recorded")]
    Backend(#[from] BackendError),
}

impl OutboundError {
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid { field, problem: problem.into() }
    }

    fn value(field: &'static str, e: InvalidValue) -> Self {
        Self::invalid(field, e.to_string())
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound => ErrorKind::NotFound,
            Self::NotAssigned => ErrorKind::Forbidden,
            Self::Invalid { .. } | Self::Route(_) => ErrorKind::Invalid,
            Self::Attachments(_) => ErrorKind::TooLarge,
            Self::Render(_) => ErrorKind::Internal,
            Self::Backend(e) if e.is_transient() => ErrorKind::Unavailable,
            Self::Backend(_) => ErrorKind::Internal,
        }
    }

    /// The request field the error is about, for the API's error body.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::Route(RouteError::FromMismatch { .. }) => Some("from"),
            Self::Route(RouteError::NoWorkplaceEmail) => Some("workplace_email"),
            Self::Route(RouteError::NoSmtpLogin) => Some("smtp_user_id"),
            Self::Route(RouteError::AgentAccountsNotAllowed(_)) => Some("send_as"),
            Self::Attachments(_) => Some("attachments"),
            _ => None,
        }
    }
}

/// Which signature goes under the message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SignatureChoice {
    /// The profile's default signature (none if it has none).
    #[default]
    Default,
    None,
    Named(SignatureName),
}

/// What the agent wrote, common to every action.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub text: String,
    /// A rich version of the text; sanitized with the signature allow-list.
    pub html: Option<String>,
    pub cc: Vec<OutboundMailbox>,
    pub bcc: Vec<EmailAddress>,
    pub attachments: Vec<OutboundAttachment>,
    /// Whose address to send from; the profile's default when `None`.
    pub send_as: Option<SendAs>,
    /// An explicit From. It must be the address of the account that sends, or it is refused.
    pub from: Option<EmailAddress>,
    pub signature: SignatureChoice,
    /// The client's idempotency key: the same key composes the same message, recorded once.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ReplyRequest {
    pub draft: Draft,
    /// Reply-all: the other recipients of the message answered are copied.
    pub all: bool,
    /// The message answered; the newest customer message when `None`.
    pub in_reply_to: Option<MessageId>,
}

#[derive(Debug, Clone)]
pub struct ForwardRequest {
    pub draft: Draft,
    pub to: Vec<OutboundMailbox>,
    /// The message forwarded; the newest customer message when `None`.
    pub message: Option<MessageId>,
}

#[derive(Debug, Clone)]
pub struct NewEmailRequest {
    pub draft: Draft,
    pub channel: ChannelName,
    pub to: Vec<OutboundMailbox>,
    pub subject: HeaderText,
}

#[derive(Debug, Clone, Default)]
pub struct FollowUpRequest {
    pub draft: Draft,
    /// The follow-up's own subject (e.g. "Reminder: invoice 1234 is overdue"); the interaction's
    /// subject when `None`. The reference token is added either way.
    pub subject: Option<HeaderText>,
}

/// A message accepted for sending.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Queued {
    pub interaction_id: InteractionId,
    pub message_id: MessageId,
    pub kind: OutboundKind,
    pub state: DeliveryState,
    /// True when this request repeated an earlier one (same idempotency key): nothing new was sent.
    pub repeated: bool,
}

/// One message of a transcript, as the agent desktop shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TranscriptEntry {
    pub direction: Direction,
    pub message_id: Option<MessageId>,
    pub from: EmailAddress,
    pub from_name: Option<String>,
    pub to: Vec<EmailAddress>,
    pub cc: Vec<EmailAddress>,
    pub subject: String,
    pub at: DateTime<Utc>,
    /// `at` in the reader's date format.
    pub date: String,
    pub text: String,
    pub attachments: Vec<AttachmentInfo>,
    /// For messages we sent: how delivery went.
    pub delivery: Option<DeliveryView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryView {
    pub kind: OutboundKind,
    pub agent: AgentId,
    pub state: DeliveryState,
    pub attempts: u32,
    /// The server's words when it failed (`550 5.1.1 …`).
    pub error: Option<String>,
    /// The server's acceptance.
    pub accepted: Option<String>,
}

/// Everything the compose actions need, built once per process.
#[derive(Clone)]
pub struct OutboundService {
    pub store: Arc<dyn IngestStore>,
    pub raw_store: Arc<dyn RawMailStore>,
    pub outbound: Arc<dyn OutboundStore>,
    pub profiles: Arc<dyn ProfileStore>,
    pub channels: Arc<dyn ChannelDirectory>,
    pub renderer: Arc<dyn MessageRenderer>,
    pub send_queue: Arc<dyn WorkQueue>,
    pub clock: Arc<dyn Clock>,
    pub limits: AttachmentLimits,
}

/// The profile, created from the agent record (workplace email) on first use so the send worker
/// finds it.
pub(crate) async fn ensure_profile(
    profiles: &dyn ProfileStore,
    agent: &Agent,
    now: DateTime<Utc>,
) -> Result<AgentProfile, BackendError> {
    if let Some(p) = profiles.profile(&agent.id).await? {
        return Ok(p);
    }
    let profile = AgentProfile::new(agent.id.clone(), Some(agent.email.clone()), now);
    profiles.put_profile(&profile).await?;
    Ok(profile)
}

pub(crate) fn identity(profile: &AgentProfile) -> AgentIdentity {
    AgentIdentity {
        id: profile.agent_id.clone(),
        workplace_email: profile.workplace_email.clone(),
        smtp_login: profile.smtp_login.clone(),
    }
}

/// Why a message cannot go out through an account right now.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteProblem {
    #[error("{0}")]
    Route(#[from] RouteError),
    #[error("{0}")]
    NoPassword(String),
    #[error("channel {0} is not configured")]
    UnknownChannel(ChannelName),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl RouteProblem {
    pub(crate) fn reply(&self) -> ServerReply {
        ServerReply { code: None, text: self.to_string() }
    }
}

/// The route (server, login, password) for an account, with the password from the secret store.
pub(crate) async fn route_for(secrets: &dyn SecretStore, account: &SendAccount) -> Result<Route, RouteProblem> {
    match &account.server {
        outbound::AccountServer::Ses => Ok(Route::Ses),
        outbound::AccountServer::Smtp { server, login, password } => {
            let Some(secret) = secrets.get(&password.secret_name()).await? else {
                let whose = match password {
                    outbound::SecretKey::AgentSmtpPassword(_) => {
                        "no email password is set for your account: set it in your profile".to_string()
                    }
                    outbound::SecretKey::ChannelSmtpPassword(c) => {
                        format!("no SMTP password is set for channel {c}: an admin must set it")
                    }
                };
                return Err(RouteProblem::NoPassword(whose));
            };
            Ok(Route::Smtp { server: server.clone(), login: login.clone(), password: secret })
        }
    }
}

/// A seed for ids when the client gave no idempotency key.
fn fresh_seed() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn outbound_fingerprint(message_id: &MessageId) -> Fingerprint {
    Fingerprint::from_digest(Sha256::digest(format!("outbound:{message_id}")))
}

fn clip(text: &str) -> (String, bool) {
    if text.len() <= STORED_BODY_LIMIT {
        return (text.to_owned(), false);
    }
    let mut end = STORED_BODY_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

fn push_unique(list: &mut Vec<OutboundMailbox>, m: OutboundMailbox) {
    if !list.iter().any(|x| x.address == m.address) {
        list.push(m);
    }
}

/// The parts of a message each action decides; the rest is common.
struct Composition {
    kind: OutboundKind,
    interaction: Interaction,
    channel: SendingChannel,
    to: Vec<OutboundMailbox>,
    cc: Vec<OutboundMailbox>,
    subject: HeaderText,
    in_reply_to: Option<MessageId>,
    references: Vec<MessageId>,
    /// The conversation root to continue, if the thread has one.
    thread_root: Option<[u8; ThreadIndex::ROOT_LEN]>,
    quoted: Option<Quoted>,
    forwarded: Option<ForwardedOriginal>,
    /// Who may write into the interaction because of this message.
    new_participants: Vec<EmailAddress>,
    /// For a new email: the interaction does not exist yet.
    creates_interaction: bool,
}

impl OutboundService {
    /// Reply (or reply-all) to the customer on an interaction the agent holds.
    #[instrument(skip_all, fields(agent_id = %agent.id, interaction_id = %interaction_id, message_id))]
    pub async fn reply(
        &self,
        agent: &Agent,
        interaction_id: &InteractionId,
        request: ReplyRequest,
    ) -> Result<Queued, OutboundError> {
        let interaction = self.held(agent, interaction_id).await?;
        let messages = self.store.interaction_messages(interaction_id).await?;
        let parent = pick_message(&messages, request.in_reply_to.as_ref(), "in_reply_to")?;
        let channel = self.channel(&interaction.channel).await?;
        let own = self.channels.own_addresses().await?;
        let profile = ensure_profile(self.profiles.as_ref(), agent, self.clock.now()).await?;

        let (to, original_subject) = match parent {
            Some(p) if p.direction == Direction::Inbound => {
                (OutboundMailbox::new(p.from.clone(), p.from_name.as_deref().map(HeaderText::lossy)), p.subject.clone())
            }
            Some(p) => (customer(&interaction), p.subject.clone()),
            None => (customer(&interaction), interaction.subject.clone()),
        };
        let mut cc = Vec::new();
        if request.all
            && let Some(p) = parent
        {
            for a in p.to.iter().chain(p.cc.iter()) {
                let mine = own.contains(a) || profile.workplace_email.as_ref() == Some(a);
                if !mine && *a != to.address {
                    push_unique(&mut cc, OutboundMailbox::bare(a.clone()));
                }
            }
        }
        for m in &request.draft.cc {
            push_unique(&mut cc, m.clone());
        }
        let quoted = parent.map(|p| Quoted::Reply {
            author: p.from_name.clone().unwrap_or_else(|| p.from.to_string()),
            date: profile.date_format.format(p.sent_at.unwrap_or(p.received_at)),
            text: p.text_body.clone(),
        });
        let new_participants = cc.iter().map(|m| m.address.clone()).collect();
        let composition = Composition {
            kind: if request.all { OutboundKind::ReplyAll } else { OutboundKind::Reply },
            subject: outbound::reply_subject(&original_subject, interaction_id),
            in_reply_to: parent.and_then(|p| p.message_id.clone()),
            references: thread_ids(&messages, parent),
            thread_root: thread_root(&messages),
            to: vec![to],
            cc,
            quoted,
            forwarded: None,
            new_participants,
            creates_interaction: false,
            interaction,
            channel,
        };
        self.compose_and_queue(agent, &profile, composition, request.draft, &own).await
    }

    /// Forward a message of the interaction to someone outside it (e.g. a claims department),
    /// with the original included. The recipient does not join the conversation: if they answer,
    /// their mail starts a new interaction instead of reaching the customer's.
    #[instrument(skip_all, fields(agent_id = %agent.id, interaction_id = %interaction_id, message_id))]
    pub async fn forward(
        &self,
        agent: &Agent,
        interaction_id: &InteractionId,
        request: ForwardRequest,
    ) -> Result<Queued, OutboundError> {
        if request.to.is_empty() {
            return Err(OutboundError::invalid("to", "a forward needs at least one recipient"));
        }
        let interaction = self.held(agent, interaction_id).await?;
        let messages = self.store.interaction_messages(interaction_id).await?;
        let original = pick_message(&messages, request.message.as_ref(), "message_id")?
            .ok_or_else(|| OutboundError::invalid("message_id", "the interaction has no message to forward"))?;
        let raw = self
            .raw_store
            .get(&original.raw_key)
            .await?
            .ok_or_else(|| OutboundError::invalid("message_id", "the original message is no longer stored"))?;
        let channel = self.channel(&interaction.channel).await?;
        let own = self.channels.own_addresses().await?;
        let profile = ensure_profile(self.profiles.as_ref(), agent, self.clock.now()).await?;
        let date = profile.date_format.format(original.sent_at.unwrap_or(original.received_at));
        let from = match &original.from_name {
            Some(name) => format!("{name} <{}>", original.from),
            None => original.from.to_string(),
        };
        let to_list = original.to.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
        let mut headers = vec![("From", from), ("Date", date), ("Subject", original.subject.clone()), ("To", to_list)];
        if !original.cc.is_empty() {
            headers.push(("Cc", original.cc.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")));
        }
        let composition = Composition {
            kind: OutboundKind::Forward,
            subject: outbound::forward_subject(&original.subject, interaction_id),
            in_reply_to: None,
            references: Vec::new(),
            thread_root: None,
            to: request.to,
            cc: request.draft.cc.clone(),
            quoted: Some(Quoted::Forward { headers, text: original.text_body.clone() }),
            forwarded: Some(ForwardedOriginal {
                file_name: FileName::parse("original-message.eml").expect("static name"),
                raw,
            }),
            // The forward's recipients stay outside the conversation.
            new_participants: Vec::new(),
            creates_interaction: false,
            interaction,
            channel,
        };
        self.compose_and_queue(agent, &profile, composition, request.draft, &own).await
    }

    /// A new email (not a reply): it opens a new interaction, assigned to the agent who wrote it,
    /// so the customer's answer threads back to it.
    #[instrument(skip_all, fields(agent_id = %agent.id, interaction_id, message_id))]
    pub async fn new_email(&self, agent: &Agent, request: NewEmailRequest) -> Result<Queued, OutboundError> {
        let Some(first) = request.to.first().cloned() else {
            return Err(OutboundError::invalid("to", "a new email needs at least one recipient"));
        };
        if request.subject.is_empty() {
            return Err(OutboundError::invalid("subject", "a new email needs a subject"));
        }
        let channel = self.channel(&request.channel).await?;
        if !channel.enabled {
            // Its answer would be quarantined: a disabled channel takes no mail. Replies and
            // follow-ups on its existing interactions still go out.
            return Err(OutboundError::invalid(
                "channel",
                format!("channel {} is disabled: enable it to start new conversations on it", channel.name),
            ));
        }
        let own = self.channels.own_addresses().await?;
        let profile = ensure_profile(self.profiles.as_ref(), agent, self.clock.now()).await?;
        let mut draft = request.draft;
        let seed = draft.idempotency_key.clone().unwrap_or_else(fresh_seed);
        draft.idempotency_key = Some(seed.clone());
        let id = InteractionId::from_seed(&format!("new-email:{}:{seed}", agent.id));
        tracing::Span::current().record("interaction_id", id.as_str());
        let now = self.clock.now();
        let mut participants: Vec<EmailAddress> = Vec::new();
        for m in request.to.iter().skip(1).chain(draft.cc.iter()) {
            if m.address != first.address && !participants.contains(&m.address) {
                participants.push(m.address.clone());
            }
        }
        let interaction = Interaction {
            id: id.clone(),
            channel: channel.name.clone(),
            customer: first.address.clone(),
            customer_name: first.name.as_ref().map(|n| n.to_string()),
            subject: request.subject.to_string(),
            queue: channel.default_queue.clone(),
            priority: Priority::NORMAL,
            state: InteractionState::Assigned,
            category: Category::parse("general").expect("static category"),
            sentiment: Sentiment::Neutral,
            participants: participants.clone(),
            // Replaced by the first message's fingerprint in `compose_and_queue`.
            origin: Fingerprint::from_digest([0u8; 32]),
            message_count: 1,
            created_at: now,
            updated_at: now,
            queued_at: None,
            routing: crate::domain::presence::RoutingState { agent: Some(agent.id.clone()), ..Default::default() },
        };
        let composition = Composition {
            kind: OutboundKind::NewEmail,
            subject: outbound::tagged_subject(request.subject.as_str(), &id),
            in_reply_to: None,
            references: Vec::new(),
            thread_root: None,
            to: request.to,
            cc: draft.cc.clone(),
            quoted: None,
            forwarded: None,
            new_participants: participants,
            creates_interaction: true,
            interaction,
            channel,
        };
        self.compose_and_queue(agent, &profile, composition, draft, &own).await
    }

    /// A follow-up on an existing interaction (an overdue-invoice reminder, a promised call-back),
    /// recorded with the original conversation. The interaction need not be assigned to the agent
    /// and may have ended; it is not re-queued (the customer's answer re-queues it).
    #[instrument(skip_all, fields(agent_id = %agent.id, interaction_id = %interaction_id, message_id))]
    pub async fn follow_up(
        &self,
        agent: &Agent,
        interaction_id: &InteractionId,
        request: FollowUpRequest,
    ) -> Result<Queued, OutboundError> {
        let interaction = self.store.interaction(interaction_id).await?.ok_or(OutboundError::NotFound)?;
        let messages = self.store.interaction_messages(interaction_id).await?;
        let channel = self.channel(&interaction.channel).await?;
        let own = self.channels.own_addresses().await?;
        let profile = ensure_profile(self.profiles.as_ref(), agent, self.clock.now()).await?;
        let subject = request.subject.as_ref().map(|s| s.to_string()).unwrap_or_else(|| interaction.subject.clone());
        let cc = request.draft.cc.clone();
        let composition = Composition {
            kind: OutboundKind::FollowUp,
            subject: outbound::tagged_subject(&subject, interaction_id),
            in_reply_to: None,
            // References tie it to the conversation in the customer's mail client too.
            references: thread_ids(&messages, None),
            thread_root: thread_root(&messages),
            to: vec![customer(&interaction)],
            new_participants: cc.iter().map(|m| m.address.clone()).collect(),
            cc,
            quoted: None,
            forwarded: None,
            creates_interaction: false,
            interaction,
            channel,
        };
        self.compose_and_queue(agent, &profile, composition, request.draft, &own).await
    }

    /// The interaction's messages, inbound and outbound, with each sent message's delivery state
    /// and dates in `date_format` (the reader's profile setting).
    pub async fn transcript(
        &self,
        interaction_id: &InteractionId,
        date_format: &crate::domain::profile::DateFormat,
    ) -> Result<Vec<TranscriptEntry>, OutboundError> {
        if self.store.interaction(interaction_id).await?.is_none() {
            return Err(OutboundError::NotFound);
        }
        let messages = self.store.interaction_messages(interaction_id).await?;
        let records = self.outbound.records_of(interaction_id).await?;
        Ok(messages
            .into_iter()
            .map(|m| {
                let record = m.message_id.as_ref().and_then(|id| records.iter().find(|r| &r.message_id == id));
                let at = m.sent_at.unwrap_or(m.received_at);
                TranscriptEntry {
                    direction: m.direction,
                    message_id: m.message_id.clone(),
                    from: m.from,
                    from_name: m.from_name,
                    to: m.to,
                    cc: m.cc,
                    subject: m.subject,
                    at,
                    date: date_format.format(at),
                    text: m.text_body,
                    attachments: m.attachments,
                    delivery: record.map(|r| DeliveryView {
                        kind: r.kind,
                        agent: r.agent.clone(),
                        state: r.state,
                        attempts: r.attempts,
                        error: r.last_error.as_ref().map(|e| e.to_string()),
                        accepted: r.accepted.clone(),
                    }),
                }
            })
            .collect())
    }

    /// An interaction the agent holds (assigned to them).
    async fn held(&self, agent: &Agent, id: &InteractionId) -> Result<Interaction, OutboundError> {
        let interaction = self.store.interaction(id).await?.ok_or(OutboundError::NotFound)?;
        let theirs =
            interaction.state == InteractionState::Assigned && interaction.routing.agent.as_ref() == Some(&agent.id);
        if theirs { Ok(interaction) } else { Err(OutboundError::NotAssigned) }
    }

    async fn channel(&self, name: &ChannelName) -> Result<SendingChannel, OutboundError> {
        self.channels
            .sending_channel(name)
            .await?
            .ok_or_else(|| OutboundError::invalid("channel", format!("no channel {name} is configured")))
    }

    async fn compose_and_queue(
        &self,
        agent: &Agent,
        profile: &AgentProfile,
        mut c: Composition,
        draft: Draft,
        own: &[EmailAddress],
    ) -> Result<Queued, OutboundError> {
        // Our own addresses never receive our mail: that is how loops start.
        for (field, list) in [("to", &c.to), ("cc", &c.cc)] {
            if list.iter().any(|m| own.contains(&m.address)) {
                return Err(OutboundError::invalid(
                    field,
                    "mail to a channel address of ours is refused (it would loop)",
                ));
            }
        }
        if draft.bcc.iter().any(|a| own.contains(a)) {
            return Err(OutboundError::invalid("bcc", "mail to a channel address of ours is refused (it would loop)"));
        }
        let send_as = draft.send_as.unwrap_or(profile.default_send_as);
        let account = outbound::resolve_account(&c.channel, send_as, &identity(profile))?;
        let from_address = draft.from.clone().unwrap_or_else(|| account.address.clone());
        // Refused here, before anything is queued; the worker checks again before sending.
        outbound::check_from(&from_address, &account)?;
        let from_name = match send_as {
            SendAs::Channel => c.channel.display_name.clone(),
            SendAs::Agent => profile.display_name.clone().or_else(|| HeaderText::parse(&agent.name).ok()),
        };
        let from = OutboundMailbox::new(from_address, from_name);

        let signature = match &draft.signature {
            SignatureChoice::Default => profile.default_signature(),
            SignatureChoice::None => None,
            SignatureChoice::Named(name) => Some(profile.signature(name).ok_or_else(|| {
                OutboundError::invalid("signature", format!("you have no signature {:?}", name.as_str()))
            })?),
        }
        .map(|s: &Signature| s.html.clone());
        let html = draft
            .html
            .as_deref()
            .map(SanitizedHtml::sanitize)
            .transpose()
            .map_err(|e| OutboundError::value("html", e))?;
        self.limits.check(&draft.attachments, c.forwarded.as_ref().map_or(0, |f| f.raw.len()))?;

        let seed = draft.idempotency_key.clone().unwrap_or_else(fresh_seed);
        let message_id = outbound::outbound_message_id(&c.interaction.id, &seed, c.channel.address.domain());
        tracing::Span::current().record("message_id", message_id.as_str());
        let fingerprint = outbound_fingerprint(&message_id);
        if c.creates_interaction {
            c.interaction.origin = fingerprint.clone();
        }
        // A repeated request: the first one's record stands; finish what it may have left undone.
        if let Some(existing) = self.outbound.record(&c.interaction.id, &message_id).await? {
            return self.requeue_existing(existing).await;
        }

        let now = self.clock.now();
        let thread_index = match c.thread_root {
            Some(root) => ThreadIndex::reply(&root, now, message_id.as_str()),
            None => ThreadIndex::new_conversation(now, message_id.as_str()),
        };
        let (text_body, html_body) = outbound::compose_bodies(
            &draft.text,
            html.as_ref().map(|h| h.as_str()),
            signature.as_ref(),
            c.quoted.as_ref(),
        );
        let thread_topic = HeaderText::lossy(&outbound::strip_tokens(outbound::strip_prefixes(c.subject.as_str())));
        let email = OutboundEmail {
            kind: c.kind,
            interaction_id: Some(c.interaction.id.clone()),
            message_id: message_id.clone(),
            date: now,
            from: from.clone(),
            to: c.to.clone(),
            cc: c.cc.clone(),
            bcc: draft.bcc.clone(),
            subject: c.subject.clone(),
            in_reply_to: c.in_reply_to.clone(),
            references: c.references.clone(),
            thread_index: thread_index.clone(),
            thread_topic,
            text_body: text_body.clone(),
            html_body: Some(html_body),
            attachments: draft.attachments.clone(),
            forwarded: c.forwarded.clone(),
        };
        let raw = self.renderer.render(&email)?;
        let raw_key = self.raw_store.put(&raw).await?;

        let record = OutboundRecord {
            message_id: message_id.clone(),
            interaction_id: c.interaction.id.clone(),
            channel: c.channel.name.clone(),
            agent: agent.id.clone(),
            kind: c.kind,
            send_as,
            from: from.address.clone(),
            recipients: email.envelope_recipients(),
            raw_key: raw_key.clone(),
            size: raw.len(),
            state: DeliveryState::Queued,
            attempts: 0,
            version: 1,
            lease_until: None,
            last_error: None,
            accepted: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
        };
        let record = self.outbound.create_record(&record).await?;

        let (body, truncated) = clip(&text_body);
        let mut attachments: Vec<AttachmentInfo> = email
            .attachments
            .iter()
            .map(|a| AttachmentInfo {
                file_name: Some(a.file_name.to_string()),
                content_type: a.content_type.as_str().to_owned(),
                size: a.data.len(),
            })
            .collect();
        if let Some(f) = &email.forwarded {
            attachments.push(AttachmentInfo {
                file_name: Some(f.file_name.to_string()),
                content_type: "message/rfc822".into(),
                size: f.raw.len(),
            });
        }
        let stored = StoredMessage {
            fingerprint,
            interaction_id: c.interaction.id.clone(),
            raw_key,
            direction: Direction::Outbound,
            message_id: Some(message_id.clone()),
            conversation_key: Some(thread_index.conversation_key()),
            from: from.address.clone(),
            from_name: from.name.as_ref().map(|n| n.to_string()),
            to: c.to.iter().map(|m| m.address.clone()).collect(),
            cc: c.cc.iter().map(|m| m.address.clone()).collect(),
            subject: c.subject.to_string(),
            sent_at: Some(now),
            received_at: now,
            text_body: body,
            body_truncated: truncated,
            attachments,
            degraded: Vec::new(),
            disposition: if c.creates_interaction { Disposition::New } else { Disposition::Threaded },
            reason: format!("{} sent by agent {} as {}", c.kind, agent.id, send_as.as_str()),
            category: c.interaction.category.clone(),
            sentiment: c.interaction.sentiment,
        };
        if c.creates_interaction {
            self.store.create_interaction(&c.interaction, &stored).await?;
        } else {
            self.store.append_message(&stored, &c.new_participants, false).await?;
        }
        self.send_queue
            .send(
                &SendJob { interaction_id: record.interaction_id.clone(), message_id: record.message_id.clone() }
                    .to_body(),
                Duration::ZERO,
            )
            .await?;
        info!(kind = c.kind.as_str(), size = raw.len(), "outbound message queued");
        Ok(Queued {
            interaction_id: record.interaction_id,
            message_id: record.message_id,
            kind: record.kind,
            state: record.state,
            repeated: false,
        })
    }

    async fn requeue_existing(&self, existing: OutboundRecord) -> Result<Queued, OutboundError> {
        // The earlier request may have stopped before its job was queued; a second job is harmless.
        if matches!(existing.state, DeliveryState::Queued | DeliveryState::Retrying) {
            let job =
                SendJob { interaction_id: existing.interaction_id.clone(), message_id: existing.message_id.clone() };
            self.send_queue.send(&job.to_body(), Duration::ZERO).await?;
        }
        info!("repeated request: the message was recorded before");
        Ok(Queued {
            interaction_id: existing.interaction_id,
            message_id: existing.message_id,
            kind: existing.kind,
            state: existing.state,
            repeated: true,
        })
    }
}

fn customer(interaction: &Interaction) -> OutboundMailbox {
    OutboundMailbox::new(interaction.customer.clone(), interaction.customer_name.as_deref().map(HeaderText::lossy))
}

/// The message named by `id`, or the newest inbound one (the newest of any when none is inbound).
fn pick_message<'a>(
    messages: &'a [StoredMessage],
    id: Option<&MessageId>,
    field: &'static str,
) -> Result<Option<&'a StoredMessage>, OutboundError> {
    match id {
        Some(id) => messages
            .iter()
            .find(|m| m.message_id.as_ref() == Some(id))
            .map(Some)
            .ok_or_else(|| OutboundError::invalid(field, "no message with this Message-ID in the interaction")),
        None => Ok(messages.iter().rev().find(|m| m.direction == Direction::Inbound).or(messages.last())),
    }
}

/// `References` for a message answering `parent`: the thread's ids up to and including it.
fn thread_ids(messages: &[StoredMessage], parent: Option<&StoredMessage>) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for m in messages {
        if let Some(id) = &m.message_id {
            ids.push(id.clone());
        }
        if parent.is_some_and(|p| p.fingerprint == m.fingerprint) {
            break;
        }
    }
    outbound::references(&ids)
}

/// The Outlook conversation of the thread, from its newest message that has one.
fn thread_root(messages: &[StoredMessage]) -> Option<[u8; ThreadIndex::ROOT_LEN]> {
    messages.iter().rev().find_map(|m| m.conversation_key.as_ref().and_then(ThreadIndex::root_of_key))
}

// ------------------------------------------------------------------ API input

/// The JSON an API client sends for any action: strings, checked here with the failing field
/// named, so the endpoints stay thin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftInput {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub cc: Vec<MailboxInput>,
    #[serde(default)]
    pub bcc: Vec<String>,
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    /// `channel` or `agent`.
    #[serde(default)]
    pub send_as: Option<SendAs>,
    #[serde(default)]
    pub from: Option<String>,
    /// A signature name, `"none"`, or absent for the default.
    #[serde(default)]
    pub signature: Option<String>,
}

/// `"ana@example.com"` or `{"address": "...", "name": "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MailboxInput {
    Address(String),
    Named { address: String, name: Option<String> },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    pub file_name: String,
    #[serde(default)]
    pub content_type: Option<String>,
    /// The file's bytes, base64.
    pub content_base64: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyInput {
    #[serde(flatten)]
    pub draft: DraftInput,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub in_reply_to: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardInput {
    #[serde(flatten)]
    pub draft: DraftInput,
    pub to: Vec<MailboxInput>,
    #[serde(default)]
    pub message_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEmailInput {
    #[serde(flatten)]
    pub draft: DraftInput,
    pub channel: String,
    pub to: Vec<MailboxInput>,
    pub subject: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpInput {
    #[serde(flatten)]
    pub draft: DraftInput,
    #[serde(default)]
    pub subject: Option<String>,
}

fn mailbox(field: &'static str, input: &MailboxInput) -> Result<OutboundMailbox, OutboundError> {
    let (address, name) = match input {
        MailboxInput::Address(a) => (a.as_str(), None),
        MailboxInput::Named { address, name } => (address.as_str(), name.as_deref()),
    };
    let address = EmailAddress::parse(address).map_err(|e| OutboundError::value(field, e))?;
    let name = name
        .map(|n| HeaderText::parse_as("display name", n))
        .transpose()
        .map_err(|e| OutboundError::value(field, e))?;
    Ok(OutboundMailbox::new(address, name))
}

fn mailboxes(field: &'static str, input: &[MailboxInput]) -> Result<Vec<OutboundMailbox>, OutboundError> {
    const MAX_RECIPIENTS: usize = 50;
    if input.len() > MAX_RECIPIENTS {
        return Err(OutboundError::invalid(field, format!("at most {MAX_RECIPIENTS} recipients")));
    }
    input.iter().map(|m| mailbox(field, m)).collect()
}

impl DraftInput {
    /// Checks every field; `idempotency_key` comes from the request's `Idempotency-Key` header.
    pub fn into_draft(self, idempotency_key: Option<String>) -> Result<Draft, OutboundError> {
        if self.text.len() > 1024 * 1024 {
            return Err(OutboundError::invalid("text", "the text is longer than 1 MB"));
        }
        let bcc = self
            .bcc
            .iter()
            .map(|a| EmailAddress::parse(a).map_err(|e| OutboundError::value("bcc", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let attachments = self
            .attachments
            .into_iter()
            .map(|a| {
                let file_name = FileName::parse(&a.file_name).map_err(|e| OutboundError::value("attachments", e))?;
                let content_type = match a.content_type.as_deref() {
                    Some(ct) => MediaType::parse(ct).map_err(|e| OutboundError::value("attachments", e))?,
                    None => MediaType::octet_stream(),
                };
                let data = base64::engine::general_purpose::STANDARD
                    .decode(a.content_base64.trim())
                    .map_err(|_| OutboundError::invalid("attachments", format!("{} is not valid base64", file_name)))?;
                Ok(OutboundAttachment { file_name, content_type, data })
            })
            .collect::<Result<Vec<_>, OutboundError>>()?;
        let from =
            self.from.as_deref().map(EmailAddress::parse).transpose().map_err(|e| OutboundError::value("from", e))?;
        let signature = match self.signature.as_deref().map(str::trim) {
            None | Some("") | Some("default") => SignatureChoice::Default,
            Some("none") => SignatureChoice::None,
            Some(name) => {
                SignatureChoice::Named(SignatureName::parse(name).map_err(|e| OutboundError::value("signature", e))?)
            }
        };
        let idempotency_key = idempotency_key.map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
        if idempotency_key.as_ref().is_some_and(|k| k.len() > 200) {
            return Err(OutboundError::invalid("idempotency_key", "at most 200 characters"));
        }
        Ok(Draft {
            text: self.text,
            html: self.html,
            cc: mailboxes("cc", &self.cc)?,
            bcc,
            attachments,
            send_as: self.send_as,
            from,
            signature,
            idempotency_key,
        })
    }
}

impl ReplyInput {
    pub fn into_request(self, idempotency_key: Option<String>) -> Result<ReplyRequest, OutboundError> {
        Ok(ReplyRequest {
            in_reply_to: self
                .in_reply_to
                .as_deref()
                .map(MessageId::parse)
                .transpose()
                .map_err(|e| OutboundError::value("in_reply_to", e))?,
            all: self.all,
            draft: self.draft.into_draft(idempotency_key)?,
        })
    }
}

impl ForwardInput {
    pub fn into_request(self, idempotency_key: Option<String>) -> Result<ForwardRequest, OutboundError> {
        Ok(ForwardRequest {
            to: mailboxes("to", &self.to)?,
            message: self
                .message_id
                .as_deref()
                .map(MessageId::parse)
                .transpose()
                .map_err(|e| OutboundError::value("message_id", e))?,
            draft: self.draft.into_draft(idempotency_key)?,
        })
    }
}

impl NewEmailInput {
    pub fn into_request(self, idempotency_key: Option<String>) -> Result<NewEmailRequest, OutboundError> {
        Ok(NewEmailRequest {
            channel: ChannelName::parse(&self.channel).map_err(|e| OutboundError::value("channel", e))?,
            to: mailboxes("to", &self.to)?,
            subject: HeaderText::parse_as("subject", &self.subject).map_err(|e| OutboundError::value("subject", e))?,
            draft: self.draft.into_draft(idempotency_key)?,
        })
    }
}

impl FollowUpInput {
    pub fn into_request(self, idempotency_key: Option<String>) -> Result<FollowUpRequest, OutboundError> {
        Ok(FollowUpRequest {
            subject: self
                .subject
                .as_deref()
                .map(|s| HeaderText::parse_as("subject", s))
                .transpose()
                .map_err(|e| OutboundError::value("subject", e))?,
            draft: self.draft.into_draft(idempotency_key)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_through_api_input_is_refused_with_the_field() {
        let input: NewEmailInput = serde_json::from_value(serde_json::json!({
            "channel": "support", "to": ["alice@example.org"], "subject": "Hello\r\nBcc: victim@example.net", "text": "hi"
        }))
        .unwrap();
        let err = input.into_request(None).unwrap_err();
        assert_eq!(err.field(), Some("subject"));
        assert_eq!(err.kind(), ErrorKind::Invalid);

        let input: ReplyInput = serde_json::from_value(serde_json::json!({
            "text": "hi", "cc": [{"address": "bob@example.org", "name": "Bob\nBcc: victim@example.net"}]
        }))
        .unwrap();
        assert_eq!(input.into_request(None).unwrap_err().field(), Some("cc"));

        let input: ReplyInput = serde_json::from_value(serde_json::json!({
            "text": "hi", "bcc": ["x@example.org\r\nSubject: hacked"]
        }))
        .unwrap();
        assert_eq!(input.into_request(None).unwrap_err().field(), Some("bcc"));

        let input: ReplyInput = serde_json::from_value(serde_json::json!({
            "text": "hi", "attachments": [{"file_name": "a\r\nContent-Type: text/html", "content_base64": "AA=="}]
        }))
        .unwrap();
        assert_eq!(input.into_request(None).unwrap_err().field(), Some("attachments"));
    }
}

/// The answer to an admin's "test connection" for a channel's outgoing server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionReport {
    pub ok: bool,
    /// `Amazon SES` or `host:port (STARTTLS)`.
    pub server: String,
    /// What answered, or the exact failure (`535 5.7.8 …`, `no SMTP password is set …`).
    pub detail: String,
}

/// "Test connection" for a channel's outgoing side: connects, secures and signs in with the
/// channel's account, sending nothing. Failures are reported, not errors.
#[instrument(skip_all, fields(channel_id = %channel))]
pub async fn check_channel_connection(
    channels: &dyn ChannelDirectory,
    secrets: &dyn SecretStore,
    sender: &dyn crate::ports::outbound::MailSender,
    channel: &ChannelName,
) -> Result<ConnectionReport, OutboundError> {
    let sending = channels
        .sending_channel(channel)
        .await?
        .ok_or_else(|| OutboundError::invalid("channel", format!("no channel {channel} is configured")))?;
    let nobody =
        AgentIdentity { id: AgentId::parse("admin").expect("static id"), workplace_email: None, smtp_login: None };
    let account = outbound::resolve_account(&sending, SendAs::Channel, &nobody)?;
    let server = account.describe_server();
    let route = match route_for(secrets, &account).await {
        Ok(route) => route,
        Err(RouteProblem::Backend(e)) => return Err(e.into()),
        Err(problem) => return Ok(ConnectionReport { ok: false, server, detail: problem.to_string() }),
    };
    Ok(match sender.check(&route).await {
        Ok(detail) => ConnectionReport { ok: true, server, detail },
        Err(e) => ConnectionReport { ok: false, server, detail: e.reply().to_string() },
    })
}
