//! Teams chat: the contacts directory with presence, connecting an agent's Microsoft account,
//! chats with Teams users, and the change notifications that bring their answers.
//!
//! - Directory: contact-centre agents (routing store), Teams users (synced from Graph `/users` by
//!   an admin or on a schedule) and the other directory (an admin's file), merged by address in
//!   `domain::teams`. Presence is read for the page being shown only: Teams presence in batches
//!   through `getPresencesByUserId`, cached for `presence_ttl`.
//! - Connecting: the authorization-code flow with PKCE. The `state` is stored hashed and works
//!   once; tokens go to the secret store (sealed), are refreshed five minutes before they expire,
//!   and a refused refresh turns the connection to `sign_in_failed` so the agent is told to sign in
//!   again.
//! - Chats: the agent writes first. The first message creates (or finds) the Graph 1:1 chat and
//!   subscribes to it before sending, so no answer can arrive unseen. Everything the agent reads is
//!   a `ChatEntry`: messages and, as entries of their own, reactions; edits and deletions change an
//!   entry in place with their time, and every change gets a new `seq` for polling.
//! - Notifications: the webhook checks each item's `clientState` against the subscription's
//!   stored hash ([`NotificationIntake`]), then [`TeamsService::process`] reads the message with the
//!   agent's token (basic notifications carry no content) and stores it. Lifecycle notifications
//!   re-authorize, re-create, and re-read the chat from where it was last read (a gap).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{Instrument, info, instrument, warn};

use crate::domain::agent::Role;
use crate::domain::ids::{AgentId, EmailAddress};
use crate::domain::mailbox::SecretName;
use crate::domain::teams::{
    Availability, ChangeKind, ChatEntry, ChatId, ChatNotification, ChatState, ChatSubscription, ConnectionStatus,
    Contact, ContactId, ContactPresence, ContactQuery, DelegatedTokens, GraphChatId, IdentityKind, OtherDirectoryEntry,
    PendingSignIn, PresenceInputs, RejectedRow, TeamsChat, TeamsConnection, TeamsMessage, TeamsUser, TeamsUserId,
    entries_for, hashes_equal, main_presence, merge_contacts, removed_reactions, secret_hash,
};
use crate::ports::identity::{AccessToken, TokenError};
use crate::ports::routing::RoutingStore;
use crate::ports::secrets::SecretStore;
use crate::ports::teams::{
    DirectorySources, GraphError, GraphPresence, SubscriptionRequest, TeamsChatStore, TeamsConnectionStore,
    TeamsDirectoryStore, TeamsGraph, TeamsSignIn, Upserted,
};
use crate::ports::{BackendError, Clock};

/// A token is refreshed this long before it expires.
const TOKEN_MARGIN: chrono::Duration = chrono::Duration::minutes(5);
/// A re-read starts this much before the last seen modification, in case of equal timestamps.
const RESYNC_OVERLAP: chrono::Duration = chrono::Duration::seconds(1);
/// At most this many presences are cached (a directory page asks for ~50).
const PRESENCE_CACHE_MAX: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum TeamsError {
    /// The agent's Teams account is not usable; the status says what to do.
    #[error("{}", .0.message())]
    NotConnected(ConnectionStatus),
    #[error("you are not a known agent")]
    UnknownAgent,
    #[error("there is no such contact")]
    UnknownContact,
    #[error("this person has no Microsoft Teams identity to chat with")]
    NoTeamsIdentity,
    #[error("there is no such chat")]
    UnknownChat,
    #[error("this sign-in has expired or was already used: start connecting Teams again")]
    UnknownSignIn,
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("the Microsoft sign-in service failed")]
    Token(#[source] TokenError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl TeamsError {
    /// Worth retrying later (a queue redelivery, a client retry).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Graph(e) => e.is_transient(),
            Self::Token(e) => e.is_transient(),
            Self::Backend(e) => e.is_transient(),
            _ => false,
        }
    }
}

pub type TeamsResult<T> = Result<T, TeamsError>;

/// How the service behaves; the URLs are where Graph reaches this deployment.
#[derive(Debug, Clone)]
pub struct TeamsSettings {
    /// Graph POSTs change notifications here (`/v1/teams/notifications` locally, the teams-webhook
    /// function's URL in AWS).
    pub notification_url: String,
    /// Graph POSTs lifecycle notifications here.
    pub lifecycle_url: String,
    /// A new or renewed subscription's lifetime (Graph allows up to 3 days for chat messages).
    pub subscription_lifetime: chrono::Duration,
    /// Subscriptions expiring within this are renewed by [`TeamsService::renew_subscriptions`].
    pub renew_before: chrono::Duration,
    /// How long a Teams presence is reused.
    pub presence_ttl: Duration,
    /// How long a started sign-in can be finished.
    pub sign_in_ttl: chrono::Duration,
    /// Refuse a Microsoft account whose mail or sign-in name is not the agent's email.
    pub require_matching_account: bool,
}

impl TeamsSettings {
    pub fn new(notification_url: impl Into<String>, lifecycle_url: impl Into<String>) -> Self {
        Self {
            notification_url: notification_url.into(),
            lifecycle_url: lifecycle_url.into(),
            // Just under Graph's 4,320-minute maximum for chat messages.
            subscription_lifetime: chrono::Duration::minutes(4_200),
            renew_before: chrono::Duration::hours(24),
            presence_ttl: Duration::from_secs(30),
            sign_in_ttl: chrono::Duration::minutes(10),
            require_matching_account: true,
        }
    }
}

/// The ports the service uses.
#[derive(Clone)]
pub struct TeamsPorts {
    pub directory: Arc<dyn TeamsDirectoryStore>,
    pub connections: Arc<dyn TeamsConnectionStore>,
    pub chats: Arc<dyn TeamsChatStore>,
    /// The contact-centre agents and their presence.
    pub agents: Arc<dyn RoutingStore>,
    pub graph: Arc<dyn TeamsGraph>,
    pub sign_in: Arc<dyn TeamsSignIn>,
    /// Where each agent's tokens are kept (sealed, see `adapters::graph::SealedSecretStore`).
    pub secrets: Arc<dyn SecretStore>,
    pub clock: Arc<dyn Clock>,
}

pub struct TeamsService {
    ports: TeamsPorts,
    settings: TeamsSettings,
    presence_cache: Mutex<HashMap<TeamsUserId, (Instant, Option<GraphPresence>)>>,
    /// One refresh per agent at a time within a process (refresh tokens may rotate).
    refresh_locks: Mutex<HashMap<AgentId, Arc<tokio::sync::Mutex<()>>>>,
}

// ------------------------------------------------------------------ views

/// A contact with its presence.
#[derive(Debug, Clone, Serialize)]
pub struct ContactView {
    #[serde(flatten)]
    pub contact: Contact,
    pub presence: ContactPresence,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContactPage {
    pub contacts: Vec<ContactView>,
    /// Contacts matching the query, on all pages.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub sources: DirectorySources,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SyncReport {
    pub users: usize,
    pub removed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub imported: usize,
    pub removed: usize,
    pub rejected: Vec<RejectedRow>,
}

/// Where an agent's connection stands, as the agent sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    pub agent_id: AgentId,
    pub status: &'static str,
    pub message: &'static str,
    /// `sign_in`, `contact_admin`, or none.
    pub action: Option<&'static str>,
    pub teams_user_id: Option<TeamsUserId>,
    pub teams_user_name: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub error_code: Option<String>,
}

impl ConnectionView {
    fn of(agent: &AgentId, connection: Option<&TeamsConnection>) -> Self {
        let status = connection.map(|c| c.status).unwrap_or(ConnectionStatus::NotConnected);
        Self {
            agent_id: agent.clone(),
            status: status.as_str(),
            message: status.message(),
            action: status.action(),
            teams_user_id: connection.and_then(|c| c.teams_user.clone()),
            teams_user_name: connection.and_then(|c| c.teams_user_name.clone()),
            updated_at: connection.map(|c| c.updated_at),
            error_code: connection.and_then(|c| c.error_code.clone()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SignInStart {
    /// Open this in the agent's browser; Microsoft sends it back to the callback.
    pub authorize_url: String,
    pub expires_at: DateTime<Utc>,
}

/// What Microsoft sent back to the callback.
#[derive(Debug, Clone)]
pub enum SignInOutcome {
    Code(SecretString),
    /// `error` (e.g. `access_denied`) and the AADSTS code from its description, if any.
    Refused {
        error: String,
        aadsts: Option<String>,
    },
}

/// Whom to chat with.
#[derive(Debug, Clone)]
pub enum ChatTarget {
    Contact(ContactId),
    TeamsUser(TeamsUserId),
    Email(EmailAddress),
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatView {
    pub chat_id: ChatId,
    pub state: &'static str,
    pub peer: TeamsUserId,
    pub peer_name: String,
    pub created_at: DateTime<Utc>,
    pub opened_at: Option<DateTime<Utc>>,
    pub last_activity_at: DateTime<Utc>,
}

impl From<&TeamsChat> for ChatView {
    fn from(c: &TeamsChat) -> Self {
        Self {
            chat_id: c.id.clone(),
            state: c.state.as_str(),
            peer: c.peer.clone(),
            peer_name: c.peer_name.clone(),
            created_at: c.created_at,
            opened_at: c.opened_at,
            last_activity_at: c.last_activity_at,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RenewReport {
    pub renewed: usize,
    pub recreated: usize,
    /// The agent's Teams account is not connected: left to expire.
    pub skipped: usize,
    pub failed: usize,
}

/// The result of checking a notification batch.
#[derive(Debug, Default)]
pub struct Accepted {
    pub notifications: Vec<ChatNotification>,
    /// Items with an unknown subscription or a wrong `clientState`: dropped.
    pub rejected: usize,
}

// ------------------------------------------------------------------ the webhook's check

/// The webhook's part: checks each item's `clientState` against the stored hash of its
/// subscription. Needs only the chat store, so the webhook function reads nothing else.
#[derive(Clone)]
pub struct NotificationIntake {
    pub chats: Arc<dyn TeamsChatStore>,
}

impl NotificationIntake {
    pub async fn accept(&self, items: Vec<ChatNotification>) -> TeamsResult<Accepted> {
        let mut accepted = Accepted::default();
        for item in items {
            let ok = match (&item.client_state_hash, self.chats.subscription(&item.subscription).await?) {
                (Some(hash), Some(sub)) => hashes_equal(hash, &sub.client_state_hash),
                _ => false,
            };
            if ok {
                accepted.notifications.push(item);
            } else {
                accepted.rejected += 1;
            }
        }
        if accepted.rejected > 0 {
            warn!(rejected = accepted.rejected, "dropped notifications with an unknown subscription or clientState");
        }
        Ok(accepted)
    }
}

/// Everything the directory is made of, read once per request.
struct Directory {
    contacts: Vec<Contact>,
    /// Contact-centre presence by agent.
    presence: HashMap<AgentId, crate::domain::presence::Presence>,
    other: Vec<OtherDirectoryEntry>,
}

fn random_token() -> String {
    let bytes: Vec<u8> = (0..2).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn tokens_secret(agent: &AgentId) -> SecretName {
    SecretName::parse(&format!("teams/{agent}/tokens")).expect("agent ids are valid in secret names")
}

impl TeamsService {
    pub fn new(ports: TeamsPorts, settings: TeamsSettings) -> Self {
        Self { ports, settings, presence_cache: Mutex::default(), refresh_locks: Mutex::default() }
    }

    pub fn settings(&self) -> &TeamsSettings {
        &self.settings
    }

    pub fn intake(&self) -> NotificationIntake {
        NotificationIntake { chats: self.ports.chats.clone() }
    }

    fn now(&self) -> DateTime<Utc> {
        self.ports.clock.now()
    }

    // -------------------------------------------------------------- directory

    async fn all_contacts(&self) -> TeamsResult<Directory> {
        let records = self.ports.agents.agents().await?;
        // AI assistants are not people to chat with.
        let records: Vec<_> = records.into_iter().filter(|r| r.agent.role != Role::AiAssistant).collect();
        let agents: Vec<_> = records.iter().map(|r| r.agent.clone()).collect();
        let presence = records.iter().map(|r| (r.agent.id.clone(), r.state.presence)).collect();
        let teams = self.ports.directory.teams_users().await?;
        let other = self.ports.directory.other_directory().await?;
        Ok(Directory { contacts: merge_contacts(&agents, &teams, &other), presence, other })
    }

    /// A page of the directory, in its order, with each contact's presence.
    #[instrument(skip_all)]
    pub async fn contacts(&self, query: &ContactQuery, offset: usize, limit: usize) -> TeamsResult<ContactPage> {
        let directory = self.all_contacts().await?;
        let matching: Vec<Contact> = directory.contacts.iter().filter(|c| query.matches(c)).cloned().collect();
        let total = matching.len();
        let page: Vec<Contact> = matching.into_iter().skip(offset).take(limit).collect();
        let sources = self.ports.directory.sources().await?;
        let contacts = self.with_presence(page, &directory, &sources).await;
        Ok(ContactPage { contacts, total, offset, limit, sources })
    }

    pub async fn contact(&self, id: &ContactId) -> TeamsResult<ContactView> {
        let directory = self.all_contacts().await?;
        let contact = directory.contacts.iter().find(|c| &c.id == id).cloned().ok_or(TeamsError::UnknownContact)?;
        let sources = self.ports.directory.sources().await?;
        Ok(self.with_presence(vec![contact], &directory, &sources).await.remove(0))
    }

    async fn with_presence(
        &self,
        page: Vec<Contact>,
        directory: &Directory,
        sources: &DirectorySources,
    ) -> Vec<ContactView> {
        let (cc, other) = (&directory.presence, &directory.other);
        // Teams presence only where the contact centre does not already decide it.
        let wanted: Vec<TeamsUserId> = page
            .iter()
            .filter(|c| !c.has(IdentityKind::ContactCentre))
            .filter_map(|c| c.identity(IdentityKind::Teams))
            .filter_map(|i| TeamsUserId::parse(&i.id).ok())
            .collect();
        let teams = self.teams_presences(&wanted).await;
        page.into_iter()
            .map(|contact| {
                let contact_centre = contact
                    .identity(IdentityKind::ContactCentre)
                    .and_then(|i| AgentId::parse(&i.id).ok())
                    .and_then(|id| cc.get(&id))
                    .map(|p| ContactPresence {
                        availability: Availability::from_contact_centre(*p),
                        source: Some(IdentityKind::ContactCentre),
                        detail: Some(p.as_str().to_owned()),
                        as_of: None,
                    });
                let teams = contact.identity(IdentityKind::Teams).and_then(|i| teams.get(i.id.as_str())).map(|p| {
                    ContactPresence {
                        availability: Availability::from_graph(&p.availability),
                        source: Some(IdentityKind::Teams),
                        detail: Some(format!("{}/{}", p.availability, p.activity)),
                        as_of: None,
                    }
                });
                let other_directory = contact
                    .identity(IdentityKind::OtherDirectory)
                    .and_then(|i| other.iter().find(|e| e.id.as_str() == i.id))
                    .and_then(|e| e.presence)
                    .map(|a| ContactPresence {
                        availability: a,
                        source: Some(IdentityKind::OtherDirectory),
                        detail: Some(a.as_str().to_owned()),
                        as_of: sources.other_imported_at,
                    });
                let presence = main_presence(&contact, PresenceInputs { contact_centre, teams, other_directory });
                ContactView { contact, presence }
            })
            .collect()
    }

    /// Teams presence, from the cache when fresh; the rest in one batched Graph call. A Graph
    /// failure leaves those presences unknown rather than failing the directory.
    async fn teams_presences(&self, users: &[TeamsUserId]) -> HashMap<String, GraphPresence> {
        let ttl = self.settings.presence_ttl;
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.presence_cache.lock().unwrap_or_else(|p| p.into_inner());
            for u in users {
                match cache.get(u) {
                    Some((at, p)) if at.elapsed() < ttl => {
                        if let Some(p) = p {
                            found.insert(u.to_string(), p.clone());
                        }
                    }
                    _ => missing.push(u.clone()),
                }
            }
        }
        if missing.is_empty() {
            return found;
        }
        match self.ports.graph.presences(&missing).await {
            Ok(presences) => {
                let mut cache = self.presence_cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() > PRESENCE_CACHE_MAX {
                    cache.clear();
                }
                let now = Instant::now();
                let by_user: HashMap<TeamsUserId, GraphPresence> =
                    presences.into_iter().map(|p| (p.user.clone(), p)).collect();
                for u in missing {
                    let p = by_user.get(&u).cloned();
                    if let Some(p) = &p {
                        found.insert(u.to_string(), p.clone());
                    }
                    cache.insert(u, (now, p));
                }
            }
            Err(e) => warn!(error = %e, users = missing.len(), "Teams presence is unavailable"),
        }
        found
    }

    /// Imports every Teams user of the tenant (admin-triggered or scheduled).
    #[instrument(skip_all)]
    pub async fn sync_teams_directory(&self) -> TeamsResult<SyncReport> {
        let users = self.ports.graph.users().await?;
        let replaced = self.ports.directory.replace_teams_users(&users, self.now()).await?;
        info!(users = replaced.stored, removed = replaced.removed, "Teams directory synced");
        Ok(SyncReport { users: replaced.stored, removed: replaced.removed })
    }

    /// Replaces the other directory with a file's entries (rows already parsed and checked).
    #[instrument(skip_all)]
    pub async fn import_other_directory(
        &self,
        entries: Vec<OtherDirectoryEntry>,
        rejected: Vec<RejectedRow>,
    ) -> TeamsResult<ImportReport> {
        let replaced = self.ports.directory.replace_other_directory(&entries, self.now()).await?;
        info!(
            imported = replaced.stored,
            removed = replaced.removed,
            rejected = rejected.len(),
            "other directory imported"
        );
        Ok(ImportReport { imported: replaced.stored, removed: replaced.removed, rejected })
    }

    // -------------------------------------------------------------- connecting Teams

    pub async fn connection(&self, agent: &AgentId) -> TeamsResult<ConnectionView> {
        let connection = self.ports.connections.connection(agent).await?;
        Ok(ConnectionView::of(agent, connection.as_ref()))
    }

    /// Starts the authorization-code flow for `agent`: where to send their browser.
    #[instrument(skip_all, fields(agent_id = %agent))]
    pub async fn start_sign_in(&self, agent: &AgentId) -> TeamsResult<SignInStart> {
        let record = self.ports.agents.agent(agent).await?.ok_or(TeamsError::UnknownAgent)?;
        let state = random_token();
        let verifier = random_token();
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let expires_at = self.now() + self.settings.sign_in_ttl;
        self.ports
            .connections
            .put_pending_sign_in(&PendingSignIn {
                state_hash: secret_hash(&state),
                agent: agent.clone(),
                code_verifier: verifier,
                expires_at,
            })
            .await?;
        let current = self.ports.connections.connection(agent).await?;
        // A connected agent stays connected until the new sign-in succeeds.
        if current.as_ref().is_none_or(|c| c.status != ConnectionStatus::Connected) {
            let mut c =
                current.unwrap_or_else(|| TeamsConnection::new(agent.clone(), ConnectionStatus::Pending, self.now()));
            c.status = ConnectionStatus::Pending;
            c.updated_at = self.now();
            c.error_code = None;
            self.ports.connections.put_connection(&c).await?;
        }
        let url = self.ports.sign_in.authorize_url(&state, &challenge, Some(record.agent.email.as_str()));
        info!("Teams sign-in started");
        Ok(SignInStart { authorize_url: url, expires_at })
    }

    /// Finishes a sign-in from Microsoft's redirect: exchanges the code, checks the account and
    /// its Teams license, and stores the tokens.
    pub async fn finish_sign_in(&self, state: &str, outcome: SignInOutcome) -> TeamsResult<ConnectionView> {
        let pending = self.ports.connections.take_pending_sign_in(&secret_hash(state)).await?;
        let pending = match pending {
            Some(p) if p.expires_at > self.now() => p,
            _ => return Err(TeamsError::UnknownSignIn),
        };
        let agent = pending.agent.clone();
        let span = tracing::info_span!("teams_sign_in", agent_id = %agent);
        self.finish_pending(pending, outcome).instrument(span).await
    }

    async fn finish_pending(&self, pending: PendingSignIn, outcome: SignInOutcome) -> TeamsResult<ConnectionView> {
        let agent = pending.agent.clone();
        let code = match outcome {
            SignInOutcome::Code(code) => code,
            SignInOutcome::Refused { error, aadsts } => {
                warn!(error_code = %aadsts.as_deref().unwrap_or(&error), "Microsoft sign-in refused");
                return self
                    .set_status(&agent, ConnectionStatus::SignInFailed, Some(aadsts.unwrap_or(error)), None)
                    .await;
            }
        };
        let tokens = match self.ports.sign_in.exchange_code(code.expose_secret(), &pending.code_verifier).await {
            Ok(t) => t,
            Err(TokenError::Refused { code, .. }) => {
                warn!(error_code = %code, "the sign-in code was refused");
                return self.set_status(&agent, ConnectionStatus::SignInFailed, Some(code), None).await;
            }
            Err(e) => return Err(TeamsError::Token(e)),
        };
        let token = AccessToken::new(tokens.access_token.clone(), tokens.expires_at);
        let me = self.ports.graph.me(&token).await?;
        if self.settings.require_matching_account {
            let record = self.ports.agents.agent(&agent).await?.ok_or(TeamsError::UnknownAgent)?;
            if !me.emails().contains(&record.agent.email) {
                warn!("the Microsoft account signed in is not the agent's");
                self.ports.secrets.delete(&tokens_secret(&agent)).await?;
                return self.set_status(&agent, ConnectionStatus::WrongAccount, None, None).await;
            }
        }
        if !self.ports.graph.has_teams_license(&token).await? {
            warn!("the Microsoft account has no Teams license");
            self.ports.secrets.delete(&tokens_secret(&agent)).await?;
            return self.set_status(&agent, ConnectionStatus::NoTeamsLicense, None, Some(&me)).await;
        }
        self.ports.secrets.put(&tokens_secret(&agent), &tokens.to_secret()).await?;
        info!("Teams account connected");
        self.set_status(&agent, ConnectionStatus::Connected, None, Some(&me)).await
    }

    async fn set_status(
        &self,
        agent: &AgentId,
        status: ConnectionStatus,
        error_code: Option<String>,
        user: Option<&TeamsUser>,
    ) -> TeamsResult<ConnectionView> {
        let mut c = self
            .ports
            .connections
            .connection(agent)
            .await?
            .unwrap_or_else(|| TeamsConnection::new(agent.clone(), status, self.now()));
        c.status = status;
        c.updated_at = self.now();
        // Only Microsoft's error code is kept: descriptions can carry an account name.
        c.error_code = error_code
            .map(|code| code.chars().filter(|ch| ch.is_ascii_alphanumeric() || *ch == '_').take(64).collect());
        if let Some(u) = user {
            c.teams_user = Some(u.id.clone());
            c.teams_user_name = Some(u.display_name.clone());
        }
        self.ports.connections.put_connection(&c).await?;
        Ok(ConnectionView::of(agent, Some(&c)))
    }

    /// Disconnects an agent's Teams account (the API allows admins only): their subscriptions
    /// are deleted while the token still works, then the tokens.
    #[instrument(skip_all, fields(agent_id = %agent, by = %by))]
    pub async fn disconnect(&self, agent: &AgentId, by: &AgentId) -> TeamsResult<ConnectionView> {
        if let Ok((token, _)) = self.delegated_token(agent).await {
            for mut chat in self.ports.chats.agent_chats(agent).await? {
                if let Some(id) = chat.subscription.take() {
                    if let Err(e) = self.ports.graph.delete_subscription(&token, &id).await {
                        warn!(error = %e, subscription_id = %id, "could not delete a subscription; it will expire");
                    }
                    self.ports.chats.delete_subscription(&id).await?;
                    self.ports.chats.put_chat(&chat).await?;
                }
            }
        }
        self.ports.secrets.delete(&tokens_secret(agent)).await?;
        info!("Teams account disconnected by an admin");
        let mut c = self
            .ports
            .connections
            .connection(agent)
            .await?
            .unwrap_or_else(|| TeamsConnection::new(agent.clone(), ConnectionStatus::NotConnected, self.now()));
        c.status = ConnectionStatus::NotConnected;
        c.updated_at = self.now();
        c.error_code = None;
        self.ports.connections.put_connection(&c).await?;
        Ok(ConnectionView::of(agent, Some(&c)))
    }

    fn refresh_lock(&self, agent: &AgentId) -> Arc<tokio::sync::Mutex<()>> {
        self.refresh_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(agent.clone()).or_default().clone()
    }

    /// The agent's delegated token and Teams user, refreshed when it nears expiry. A refused
    /// refresh marks the connection `sign_in_failed`.
    pub async fn delegated_token(&self, agent: &AgentId) -> TeamsResult<(AccessToken, TeamsUserId)> {
        self.token(agent, false).await
    }

    async fn token(&self, agent: &AgentId, force_refresh: bool) -> TeamsResult<(AccessToken, TeamsUserId)> {
        let connection = self.ports.connections.connection(agent).await?;
        let (Some(connection), true) =
            (connection.as_ref(), connection.as_ref().is_some_and(|c| c.status == ConnectionStatus::Connected))
        else {
            return Err(TeamsError::NotConnected(
                connection.map(|c| c.status).unwrap_or(ConnectionStatus::NotConnected),
            ));
        };
        let user = connection.teams_user.clone().ok_or(TeamsError::NotConnected(ConnectionStatus::SignInFailed))?;
        let lock = self.refresh_lock(agent);
        let _guard = lock.lock().await;
        let name = tokens_secret(agent);
        let Some(secret) = self.ports.secrets.get(&name).await? else {
            self.set_status(agent, ConnectionStatus::SignInFailed, Some("tokens_missing".into()), None).await?;
            return Err(TeamsError::NotConnected(ConnectionStatus::SignInFailed));
        };
        let tokens = DelegatedTokens::from_secret(&secret)
            .map_err(|e| BackendError::permanent("read stored Teams tokens", e))?;
        if !force_refresh && tokens.fresh(self.now(), TOKEN_MARGIN) {
            return Ok((AccessToken::new(tokens.access_token, tokens.expires_at), user));
        }
        let Some(refresh) = tokens.refresh_token.as_ref() else {
            self.set_status(agent, ConnectionStatus::SignInFailed, Some("no_refresh_token".into()), None).await?;
            return Err(TeamsError::NotConnected(ConnectionStatus::SignInFailed));
        };
        match self.ports.sign_in.refresh(refresh).await {
            Ok(mut fresh) => {
                // Microsoft may or may not rotate the refresh token; keep the old one if not.
                if fresh.refresh_token.is_none() {
                    fresh.refresh_token = tokens.refresh_token.clone();
                }
                self.ports.secrets.put(&name, &fresh.to_secret()).await?;
                info!(agent_id = %agent, "Teams token refreshed");
                Ok((AccessToken::new(fresh.access_token, fresh.expires_at), user))
            }
            Err(TokenError::Refused { code, .. }) => {
                warn!(agent_id = %agent, error_code = %code, "Teams token refresh refused: the agent must sign in again");
                self.set_status(agent, ConnectionStatus::SignInFailed, Some(code), None).await?;
                Err(TeamsError::NotConnected(ConnectionStatus::SignInFailed))
            }
            Err(e) => Err(TeamsError::Token(e)),
        }
    }

    // -------------------------------------------------------------- chats

    /// The Teams user to chat with: from the synced directory, or asked of Graph (a colleague who
    /// joined since the last sync).
    async fn resolve_target(&self, target: &ChatTarget) -> TeamsResult<TeamsUser> {
        let users = self.ports.directory.teams_users().await?;
        match target {
            ChatTarget::TeamsUser(id) => match users.into_iter().find(|u| &u.id == id) {
                Some(u) => Ok(u),
                None => self.ports.graph.user(id.as_str()).await?.ok_or(TeamsError::NoTeamsIdentity),
            },
            ChatTarget::Email(email) => match users.into_iter().find(|u| u.emails().contains(email)) {
                Some(u) => Ok(u),
                None => self.ports.graph.user(email.as_str()).await?.ok_or(TeamsError::NoTeamsIdentity),
            },
            ChatTarget::Contact(id) => {
                let directory = self.all_contacts().await?;
                let contact = directory.contacts.into_iter().find(|c| &c.id == id).ok_or(TeamsError::UnknownContact)?;
                let teams = contact.identity(IdentityKind::Teams).ok_or(TeamsError::NoTeamsIdentity)?;
                users.into_iter().find(|u| u.id.as_str() == teams.id).ok_or(TeamsError::NoTeamsIdentity)
            }
        }
    }

    /// Starts (or returns) the agent's chat with a Teams user: a contact's Teams identity, a Teams
    /// user, or whoever has that address in Teams. Nothing reaches Teams until the agent's first
    /// message. Returns the chat and whether it is new.
    #[instrument(skip_all, fields(agent_id = %agent))]
    pub async fn start_chat(&self, agent: &AgentId, target: &ChatTarget) -> TeamsResult<(ChatView, bool)> {
        let connection = self.ports.connections.connection(agent).await?;
        let me = match connection {
            Some(c) if c.status == ConnectionStatus::Connected => c.teams_user,
            other => {
                return Err(TeamsError::NotConnected(
                    other.map(|c| c.status).unwrap_or(ConnectionStatus::NotConnected),
                ));
            }
        };
        let peer = self.resolve_target(target).await?;
        if me.as_ref() == Some(&peer.id) {
            return Err(TeamsError::Invalid {
                field: "teams_user_id",
                message: "you cannot chat with yourself".into(),
            });
        }
        let id = ChatId::for_pair(agent, &peer.id);
        if let Some(existing) = self.ports.chats.chat(&id).await? {
            return Ok((ChatView::from(&existing), false));
        }
        let chat = TeamsChat::new(agent.clone(), peer.id.clone(), peer.display_name.clone(), self.now());
        self.ports.chats.put_chat(&chat).await?;
        info!(chat_id = %chat.id, "Teams chat started");
        Ok((ChatView::from(&chat), true))
    }

    async fn own_chat(&self, agent: &AgentId, id: &ChatId) -> TeamsResult<TeamsChat> {
        match self.ports.chats.chat(id).await? {
            Some(c) if &c.agent == agent => Ok(c),
            _ => Err(TeamsError::UnknownChat),
        }
    }

    pub async fn chats(&self, agent: &AgentId) -> TeamsResult<Vec<ChatView>> {
        let mut chats = self.ports.chats.agent_chats(agent).await?;
        chats.sort_by_key(|c| std::cmp::Reverse(c.last_activity_at));
        Ok(chats.iter().map(ChatView::from).collect())
    }

    /// A chat and its newest `limit` entries (oldest first).
    pub async fn chat(&self, agent: &AgentId, id: &ChatId, limit: usize) -> TeamsResult<(ChatView, Vec<ChatEntry>)> {
        let chat = self.own_chat(agent, id).await?;
        let entries = self.ports.chats.chat_entries(id, limit).await?;
        Ok((ChatView::from(&chat), entries))
    }

    /// Entries changed after `after` (new messages, reactions, edits, deletions), in change
    /// order; waits up to `wait` for the first one (long polling).
    pub async fn changes(
        &self,
        agent: &AgentId,
        chat: Option<&ChatId>,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> TeamsResult<Vec<ChatEntry>> {
        if let Some(id) = chat {
            self.own_chat(agent, id).await?;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let entries = self.ports.chats.changes(agent, chat, after, limit).await?;
            if !entries.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(entries);
            }
            tokio::time::sleep(Duration::from_millis(200).min(deadline - tokio::time::Instant::now())).await;
        }
    }

    /// Sends the agent's message. The first one creates (or finds) the Teams chat and subscribes
    /// to it first, so the answer cannot be missed.
    #[instrument(skip_all, fields(agent_id = %agent, chat_id = %id))]
    pub async fn send(&self, agent: &AgentId, id: &ChatId, text: &str) -> TeamsResult<ChatEntry> {
        let text = crate::domain::teams::check_message_text(text)
            .map_err(|m| TeamsError::Invalid { field: "text", message: m.into() })?;
        let chat = self.own_chat(agent, id).await?;
        let (mut token, me) = self.delegated_token(agent).await?;
        let mut retried = false;
        let sent = loop {
            match self.send_with(&token, &me, chat.clone(), text).await {
                Err(TeamsError::Graph(GraphError::Unauthorized { .. })) if !retried => {
                    // Revoked or expired early: one refresh, then report what the refresh says.
                    retried = true;
                    token = self.token(agent, true).await?.0;
                }
                other => break other?,
            }
        };
        info!("Teams message sent");
        Ok(sent)
    }

    async fn send_with(
        &self,
        token: &AccessToken,
        me: &TeamsUserId,
        mut chat: TeamsChat,
        text: &str,
    ) -> TeamsResult<ChatEntry> {
        let graph_chat = match &chat.graph_chat {
            Some(g) => g.clone(),
            None => {
                let g = self.ports.graph.one_on_one_chat(token, me, &chat.peer).await?;
                chat = self.update_chat(&chat.id, |c| c.graph_chat = Some(g.clone())).await?;
                g
            }
        };
        if chat.subscription.is_none() {
            chat = self.subscribe(token, &chat, &graph_chat).await?;
        }
        let message = self.ports.graph.send_message(token, &graph_chat, text).await?;
        let now = self.now();
        let chat = self
            .update_chat(&chat.id, |c| {
                c.open(message.created_at);
                c.synced(message.last_modified_at);
                c.last_activity_at = c.last_activity_at.max(now);
            })
            .await?;
        let entries = entries_for(&chat, me, &message)
            .map_err(|_| TeamsError::Invalid { field: "text", message: "Teams did not store the message".into() })?;
        let entry = entries.into_iter().next().expect("a message gives its own entry first");
        match self.ports.chats.upsert_entry(&entry).await? {
            Upserted::Changed(stored) => Ok(*stored),
            // A notification stored it first.
            Upserted::Unchanged => Ok(self
                .ports
                .chats
                .message_entries(&chat.id, &entry.message_id)
                .await?
                .into_iter()
                .find(|e| e.key == entry.key)
                .unwrap_or(entry)),
        }
    }

    /// Re-reads the chat, applies `change`, writes it: the read is fresh so a concurrent change of
    /// another field is not undone.
    async fn update_chat(&self, id: &ChatId, change: impl FnOnce(&mut TeamsChat)) -> TeamsResult<TeamsChat> {
        let mut chat = self.ports.chats.chat(id).await?.ok_or(TeamsError::UnknownChat)?;
        change(&mut chat);
        self.ports.chats.put_chat(&chat).await?;
        Ok(chat)
    }

    /// Subscribes to the chat's messages, replacing a subscription of ours that Graph still has
    /// (after a crash, Graph allows one per chat and application).
    async fn subscribe(
        &self,
        token: &AccessToken,
        chat: &TeamsChat,
        graph_chat: &GraphChatId,
    ) -> TeamsResult<TeamsChat> {
        let client_state = random_token();
        let request = SubscriptionRequest {
            chat: graph_chat.clone(),
            notification_url: self.settings.notification_url.clone(),
            lifecycle_url: self.settings.lifecycle_url.clone(),
            client_state: SecretString::from(client_state.clone()),
            expires_at: self.now() + self.settings.subscription_lifetime,
        };
        let created = match self.ports.graph.create_subscription(token, &request).await {
            Err(GraphError::Conflict { .. }) => {
                let resource = format!("/chats/{graph_chat}/messages");
                for old in self.ports.graph.subscriptions(token).await? {
                    if old.resource.trim_start_matches('/') == resource.trim_start_matches('/') {
                        self.ports.graph.delete_subscription(token, &old.id).await?;
                        self.ports.chats.delete_subscription(&old.id).await?;
                    }
                }
                self.ports.graph.create_subscription(token, &request).await?
            }
            other => other?,
        };
        self.ports
            .chats
            .put_subscription(&ChatSubscription {
                id: created.id.clone(),
                chat: chat.id.clone(),
                agent: chat.agent.clone(),
                client_state_hash: secret_hash(&client_state),
                expires_at: created.expires_at,
            })
            .await?;
        info!(chat_id = %chat.id, subscription_id = %created.id, "subscribed to the chat's messages");
        let id = created.id.clone();
        self.update_chat(&chat.id, |c| c.subscription = Some(id)).await
    }

    /// Stores what a Teams message means for the chat; returns how many entries changed.
    async fn apply(&self, chat: &TeamsChat, me: &TeamsUserId, message: &TeamsMessage) -> TeamsResult<usize> {
        let entries = match entries_for(chat, me, message) {
            Ok(entries) => entries,
            Err(_) => return Ok(0),
        };
        let stored = self.ports.chats.message_entries(&chat.id, &message.id).await?;
        let mut changed = 0;
        for entry in removed_reactions(&stored, &entries, message.last_modified_at).iter().chain(entries.iter()) {
            if matches!(self.ports.chats.upsert_entry(entry).await?, Upserted::Changed(_)) {
                changed += 1;
            }
        }
        let now = self.now();
        self.update_chat(&chat.id, |c| {
            c.synced(message.last_modified_at);
            if changed > 0 {
                c.last_activity_at = c.last_activity_at.max(now);
            }
        })
        .await?;
        Ok(changed)
    }

    /// Acts on one accepted notification (the SQS worker in AWS, a task locally). An error that
    /// is not transient is logged and dropped by the caller: a later re-read catches up.
    #[instrument(skip_all, fields(subscription_id = %n.subscription, change = n.kind.as_str()))]
    pub async fn process(&self, n: &ChatNotification) -> TeamsResult<()> {
        let Some(sub) = self.ports.chats.subscription(&n.subscription).await? else {
            return Ok(());
        };
        let Some(chat) = self.ports.chats.chat(&sub.chat).await? else {
            return Ok(());
        };
        let span = tracing::info_span!("chat", agent_id = %chat.agent, chat_id = %chat.id);
        self.process_for(n, sub, chat).instrument(span).await
    }

    async fn process_for(&self, n: &ChatNotification, sub: ChatSubscription, chat: TeamsChat) -> TeamsResult<()> {
        let (token, me) = match self.delegated_token(&chat.agent).await {
            Ok(t) => t,
            Err(TeamsError::NotConnected(status)) => {
                warn!(status = status.as_str(), "notification for an agent whose Teams account is not connected");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(graph_chat) = chat.graph_chat.clone() else {
            return Ok(());
        };
        match n.kind {
            ChangeKind::Created | ChangeKind::Updated | ChangeKind::Deleted => {
                let Some(id) = &n.message else { return Ok(()) };
                match self.ports.graph.message(&token, &graph_chat, id).await? {
                    Some(message) => {
                        self.apply(&chat, &me, &message).await?;
                    }
                    None if n.kind == ChangeKind::Deleted => {
                        // Gone entirely: mark what we hold as deleted now.
                        let now = self.now();
                        for e in self.ports.chats.message_entries(&chat.id, id).await? {
                            if e.deleted_at.is_none() {
                                let deleted = ChatEntry {
                                    deleted_at: Some(now),
                                    content: String::new(),
                                    source_modified_at: now,
                                    ..e
                                };
                                self.ports.chats.upsert_entry(&deleted).await?;
                            }
                        }
                    }
                    None => {}
                }
            }
            ChangeKind::ReauthorizationRequired => {
                match self.ports.graph.reauthorize_subscription(&token, &sub.id).await {
                    Ok(()) => {}
                    Err(GraphError::NotFound { .. }) => {
                        self.resubscribe(&token, &sub.id, &chat, &graph_chat).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
                self.resync(&chat.id, &token, &me).await?;
            }
            ChangeKind::SubscriptionRemoved => {
                self.resubscribe(&token, &sub.id, &chat, &graph_chat).await?;
                self.resync(&chat.id, &token, &me).await?;
            }
            ChangeKind::Missed => {
                self.resync(&chat.id, &token, &me).await?;
            }
        }
        Ok(())
    }

    async fn resubscribe(
        &self,
        token: &AccessToken,
        old: &crate::domain::teams::SubscriptionId,
        chat: &TeamsChat,
        graph_chat: &GraphChatId,
    ) -> TeamsResult<TeamsChat> {
        self.ports.chats.delete_subscription(old).await?;
        let chat = self.update_chat(&chat.id, |c| c.subscription = None).await?;
        self.subscribe(token, &chat, graph_chat).await
    }

    /// Re-reads a chat's messages modified since it was last read (after a gap: a lost
    /// subscription, missed notifications, downtime). Returns how many entries changed.
    #[instrument(skip_all, fields(chat_id = %id))]
    pub async fn resync(&self, id: &ChatId, token: &AccessToken, me: &TeamsUserId) -> TeamsResult<usize> {
        let chat = self.ports.chats.chat(id).await?.ok_or(TeamsError::UnknownChat)?;
        let (Some(graph_chat), ChatState::Open) = (chat.graph_chat.clone(), chat.state) else {
            return Ok(0);
        };
        let since = chat.synced_until.or(chat.opened_at).map(|t| t - RESYNC_OVERLAP);
        let mut messages = self.ports.graph.messages_since(token, &graph_chat, since).await?;
        messages.sort_by_key(|m| m.last_modified_at);
        let mut changed = 0;
        for m in &messages {
            let fresh = self.ports.chats.chat(id).await?.ok_or(TeamsError::UnknownChat)?;
            changed += self.apply(&fresh, me, m).await?;
        }
        info!(read = messages.len(), changed, "chat re-read");
        Ok(changed)
    }

    /// Re-reads one of the agent's chats now (e.g. after the service was down).
    pub async fn resync_chat(&self, agent: &AgentId, id: &ChatId) -> TeamsResult<usize> {
        self.own_chat(agent, id).await?;
        let (token, me) = self.delegated_token(agent).await?;
        self.resync(id, &token, &me).await
    }

    /// Renews subscriptions that expire within `renew_before`; one Graph removed (or that expired)
    /// is created again and its chat re-read. Run it at least every few hours.
    #[instrument(skip_all)]
    pub async fn renew_subscriptions(&self) -> TeamsResult<RenewReport> {
        let mut report = RenewReport::default();
        let due = self.ports.chats.subscriptions_expiring(self.now() + self.settings.renew_before, 1000).await?;
        let mut seen = HashSet::new();
        for sub in due {
            if !seen.insert(sub.id.clone()) {
                continue;
            }
            let (token, me) = match self.delegated_token(&sub.agent).await {
                Ok(t) => t,
                Err(TeamsError::NotConnected(_)) => {
                    report.skipped += 1;
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, subscription_id = %sub.id, "cannot renew a subscription now");
                    report.failed += 1;
                    continue;
                }
            };
            let expires_at = self.now() + self.settings.subscription_lifetime;
            match self.ports.graph.renew_subscription(&token, &sub.id, expires_at).await {
                Ok(at) => {
                    self.ports.chats.put_subscription(&ChatSubscription { expires_at: at, ..sub.clone() }).await?;
                    report.renewed += 1;
                }
                Err(GraphError::NotFound { .. }) => {
                    let Some(chat) = self.ports.chats.chat(&sub.chat).await? else {
                        self.ports.chats.delete_subscription(&sub.id).await?;
                        continue;
                    };
                    let Some(graph_chat) = chat.graph_chat.clone() else { continue };
                    match self.resubscribe(&token, &sub.id, &chat, &graph_chat).await {
                        Ok(_) => {
                            report.recreated += 1;
                            if let Err(e) = self.resync(&chat.id, &token, &me).await {
                                warn!(error = %e, chat_id = %chat.id, "re-read after re-subscribing failed");
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, chat_id = %chat.id, "could not subscribe again");
                            report.failed += 1;
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, subscription_id = %sub.id, "subscription renewal failed");
                    report.failed += 1;
                }
            }
        }
        info!(renewed = report.renewed, recreated = report.recreated, failed = report.failed, "subscriptions renewed");
        Ok(report)
    }

    /// Re-reads every chat that has a subscription: what arrived while this process was down
    /// (and Graph gave up delivering) shows up. Returns how many entries changed.
    pub async fn resync_all(&self) -> TeamsResult<usize> {
        let subs = self.ports.chats.subscriptions_expiring(self.now() + chrono::Duration::days(3650), 100_000).await?;
        let mut seen = HashSet::new();
        let mut changed = 0;
        for sub in subs {
            if !seen.insert(sub.chat.clone()) {
                continue;
            }
            let (token, me) = match self.delegated_token(&sub.agent).await {
                Ok(t) => t,
                Err(TeamsError::NotConnected(_)) => continue,
                Err(e) => {
                    warn!(error = %e, chat_id = %sub.chat, "cannot re-read a chat now");
                    continue;
                }
            };
            match self.resync(&sub.chat, &token, &me).await {
                Ok(n) => changed += n,
                Err(e) => warn!(error = %e, chat_id = %sub.chat, "re-reading a chat failed"),
            }
        }
        Ok(changed)
    }

    /// The periodic work of `mailroom serve` (a schedule in AWS): re-read the chats once at start
    /// (a gap while the server was down), then renew subscriptions every `renew_every` and sync
    /// the Teams directory every `sync_every` (none: only on demand), until `shutdown` turns true.
    pub async fn run_maintenance(
        self: Arc<Self>,
        renew_every: Duration,
        sync_every: Option<Duration>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut renew = tokio::time::interval(renew_every);
        let mut sync = tokio::time::interval(sync_every.unwrap_or(Duration::from_secs(86_400 * 365)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Err(e) = self.resync_all().await {
            warn!(error = %e, "re-reading chats at start failed");
        }
        // The watch guard is dropped inside, so the task stays `Send`.
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = renew.tick() => {
                    if let Err(e) = self.renew_subscriptions().await {
                        warn!(error = %e, "subscription renewal failed");
                    }
                }
                _ = sync.tick(), if sync_every.is_some() => {
                    if let Err(e) = self.sync_teams_directory().await {
                        warn!(error = %e, "scheduled Teams directory sync failed");
                    }
                }
            }
        }
    }
}
