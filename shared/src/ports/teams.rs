//! What Teams chat needs from the outside world: Microsoft Graph (app-only for the directory and
//! presence, delegated for everything an agent does), Microsoft's sign-in (the authorization-code
//! flow), and storage for the directory, the connections and the chats.
//!
//! The stores are three traits so each front door (and each Lambda's IAM policy) gets only what
//! it uses: the webhook only reads subscriptions, for instance.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::BackendResult;
use super::identity::{AccessToken, TokenError};
use crate::domain::ids::AgentId;
use crate::domain::teams::{
    ChatEntry, ChatId, ChatSubscription, DelegatedTokens, GraphChatId, GraphMessageId, OtherDirectoryEntry,
    PendingSignIn, SubscriptionId, TeamsChat, TeamsConnection, TeamsMessage, TeamsUser, TeamsUserId,
};

/// A failed Graph call.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// 429 (or 503 with Retry-After) beyond what the client waits for itself.
    #[error("Microsoft Graph is throttling requests; retry after {retry_after:?}")]
    Throttled { retry_after: std::time::Duration },
    /// The token was refused (expired, revoked) even after a fresh one.
    #[error("Microsoft Graph refused the token: {code}")]
    Unauthorized { code: String, message: String },
    /// Not allowed: a missing permission or license, not a member of the chat.
    #[error("Microsoft Graph refused the request: {code}")]
    Forbidden { code: String, message: String },
    #[error("Microsoft Graph has no such resource: {code}")]
    NotFound { code: String },
    /// 409: e.g. a subscription for this chat already exists.
    #[error("Microsoft Graph reports a conflict: {code}")]
    Conflict { code: String, message: String },
    /// 400 and other client errors: a bug or a limit on our side.
    #[error("Microsoft Graph rejected the request ({status}): {code}")]
    Rejected { status: u16, code: String, message: String },
    /// Unreachable, a time-out, a 5xx, an unreadable answer.
    #[error("Microsoft Graph is unavailable")]
    Unavailable {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The app-only token could not be had.
    #[error("no token for Microsoft Graph")]
    Token(#[source] TokenError),
}

impl GraphError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Throttled { .. } | Self::Unavailable { .. } => true,
            Self::Token(e) => e.is_transient(),
            _ => false,
        }
    }
}

pub type GraphResult<T> = Result<T, GraphError>;

/// A presence as Graph reports it (`availability`, `activity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphPresence {
    pub user: TeamsUserId,
    pub availability: String,
    pub activity: String,
}

/// What to subscribe to: one chat's messages.
#[derive(Debug, Clone)]
pub struct SubscriptionRequest {
    pub chat: GraphChatId,
    pub notification_url: String,
    pub lifecycle_url: String,
    /// Echoed by Graph in every notification; checked by the webhook. At most 128 characters.
    pub client_state: secrecy::SecretString,
    pub expires_at: DateTime<Utc>,
}

/// A subscription as Graph holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSubscription {
    pub id: SubscriptionId,
    /// e.g. `/chats/19:...@unq.gbl.spaces/messages`.
    pub resource: String,
    pub expires_at: DateTime<Utc>,
}

/// Microsoft Graph. App-only calls use the application's own token; the others act as the agent
/// with their delegated token (Graph refuses an application's chat message unless it is a
/// migration, so sending needs the agent's sign-in).
#[async_trait]
pub trait TeamsGraph: Send + Sync {
    // -------- app-only
    /// Every enabled user of the tenant (all pages).
    async fn users(&self) -> GraphResult<Vec<TeamsUser>>;
    /// One user by object id or sign-in name (`None` if Graph has no such user, or it is disabled).
    async fn user(&self, reference: &str) -> GraphResult<Option<TeamsUser>>;
    /// Presence of these users, in as few calls as Graph allows (650 ids per call).
    async fn presences(&self, users: &[TeamsUserId]) -> GraphResult<Vec<GraphPresence>>;

    // -------- delegated (as the agent)
    /// The signed-in user.
    async fn me(&self, token: &AccessToken) -> GraphResult<TeamsUser>;
    /// Whether the signed-in user has a working Microsoft Teams service plan.
    async fn has_teams_license(&self, token: &AccessToken) -> GraphResult<bool>;
    /// The 1:1 chat of the two users (Graph returns the existing one if there is one).
    async fn one_on_one_chat(
        &self,
        token: &AccessToken,
        me: &TeamsUserId,
        other: &TeamsUserId,
    ) -> GraphResult<GraphChatId>;
    async fn send_message(&self, token: &AccessToken, chat: &GraphChatId, text: &str) -> GraphResult<TeamsMessage>;
    /// One message (deleted ones too, with `deleted_at`); `None` if Graph has no such message.
    async fn message(
        &self,
        token: &AccessToken,
        chat: &GraphChatId,
        id: &GraphMessageId,
    ) -> GraphResult<Option<TeamsMessage>>;
    /// Messages modified after `since` (all, when `None`), every page, newest first.
    async fn messages_since(
        &self,
        token: &AccessToken,
        chat: &GraphChatId,
        since: Option<DateTime<Utc>>,
    ) -> GraphResult<Vec<TeamsMessage>>;
    async fn create_subscription(
        &self,
        token: &AccessToken,
        request: &SubscriptionRequest,
    ) -> GraphResult<GraphSubscription>;
    /// This application's subscriptions (to find one left behind by a crash).
    async fn subscriptions(&self, token: &AccessToken) -> GraphResult<Vec<GraphSubscription>>;
    /// Extends a subscription; `NotFound` once it has expired or been removed.
    async fn renew_subscription(
        &self,
        token: &AccessToken,
        id: &SubscriptionId,
        expires_at: DateTime<Utc>,
    ) -> GraphResult<DateTime<Utc>>;
    /// Answers a `reauthorizationRequired` lifecycle notification.
    async fn reauthorize_subscription(&self, token: &AccessToken, id: &SubscriptionId) -> GraphResult<()>;
    async fn delete_subscription(&self, token: &AccessToken, id: &SubscriptionId) -> GraphResult<()>;
}

/// Microsoft's sign-in for the delegated authorization-code flow (with PKCE).
#[async_trait]
pub trait TeamsSignIn: Send + Sync {
    /// Where to send the agent's browser. Microsoft redirects it back with `code` and `state`.
    fn authorize_url(&self, state: &str, code_challenge: &str, login_hint: Option<&str>) -> String;
    async fn exchange_code(&self, code: &str, code_verifier: &str) -> Result<DelegatedTokens, TokenError>;
    async fn refresh(&self, refresh_token: &secrecy::SecretString) -> Result<DelegatedTokens, TokenError>;
}

/// What a sync or an import changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Replaced {
    pub stored: usize,
    pub removed: usize,
}

/// When each imported source was last refreshed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirectorySources {
    pub teams_synced_at: Option<DateTime<Utc>>,
    pub teams_count: usize,
    pub other_imported_at: Option<DateTime<Utc>>,
    pub other_count: usize,
}

/// The imported identities: Teams users (from Graph) and the other directory (from a file).
/// Contact-centre agents come from the routing store.
#[async_trait]
pub trait TeamsDirectoryStore: Send + Sync {
    /// Replaces the Teams users with `users` (a full sync: users gone from the tenant go).
    async fn replace_teams_users(&self, users: &[TeamsUser], at: DateTime<Utc>) -> BackendResult<Replaced>;
    async fn teams_users(&self) -> BackendResult<Vec<TeamsUser>>;
    async fn teams_user(&self, id: &TeamsUserId) -> BackendResult<Option<TeamsUser>>;
    /// Replaces the other directory with the file's entries.
    async fn replace_other_directory(
        &self,
        entries: &[OtherDirectoryEntry],
        at: DateTime<Utc>,
    ) -> BackendResult<Replaced>;
    async fn other_directory(&self) -> BackendResult<Vec<OtherDirectoryEntry>>;
    async fn sources(&self) -> BackendResult<DirectorySources>;
}

/// Agents' Teams account connections and the sign-ins in progress. Tokens are not here: they go
/// to the secret store.
#[async_trait]
pub trait TeamsConnectionStore: Send + Sync {
    async fn connection(&self, agent: &AgentId) -> BackendResult<Option<TeamsConnection>>;
    async fn put_connection(&self, connection: &TeamsConnection) -> BackendResult<()>;
    async fn put_pending_sign_in(&self, pending: &PendingSignIn) -> BackendResult<()>;
    /// Removes and returns the sign-in with this state hash: a state works once.
    async fn take_pending_sign_in(&self, state_hash: &str) -> BackendResult<Option<PendingSignIn>>;
}

/// The result of storing a chat entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Upserted {
    /// New or changed: stored with a new `seq`.
    Changed(Box<ChatEntry>),
    /// Identical to what is stored, or older than it: nothing written.
    Unchanged,
}

/// Chats, their subscriptions and their entries.
#[async_trait]
pub trait TeamsChatStore: Send + Sync {
    async fn chat(&self, id: &ChatId) -> BackendResult<Option<TeamsChat>>;
    async fn agent_chats(&self, agent: &AgentId) -> BackendResult<Vec<TeamsChat>>;
    async fn put_chat(&self, chat: &TeamsChat) -> BackendResult<()>;

    async fn subscription(&self, id: &SubscriptionId) -> BackendResult<Option<ChatSubscription>>;
    async fn put_subscription(&self, subscription: &ChatSubscription) -> BackendResult<()>;
    async fn delete_subscription(&self, id: &SubscriptionId) -> BackendResult<()>;
    /// Subscriptions that expire before `before`, soonest first.
    async fn subscriptions_expiring(&self, before: DateTime<Utc>, limit: usize)
    -> BackendResult<Vec<ChatSubscription>>;

    /// Stores an entry unless it is identical to the stored one or read from an older version of
    /// its message (`source_modified_at`), so concurrent and repeated notifications converge.
    /// A change gets the next `seq` of its agent, in commit order.
    async fn upsert_entry(&self, entry: &ChatEntry) -> BackendResult<Upserted>;
    /// The entries read from one Graph message (the message and its reactions).
    async fn message_entries(&self, chat: &ChatId, message: &GraphMessageId) -> BackendResult<Vec<ChatEntry>>;
    /// A chat's newest `limit` entries, oldest first (by creation time in Teams).
    async fn chat_entries(&self, chat: &ChatId, limit: usize) -> BackendResult<Vec<ChatEntry>>;
    /// An agent's entries changed after `after_seq` (optionally in one chat), in `seq` order.
    async fn changes(
        &self,
        agent: &AgentId,
        chat: Option<&ChatId>,
        after_seq: u64,
        limit: usize,
    ) -> BackendResult<Vec<ChatEntry>>;
}
