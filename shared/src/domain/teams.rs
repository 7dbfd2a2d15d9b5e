//! Teams chat and the contacts directory: identities merged into contacts, their order and
//! presence, a Teams account connection's status, chats (the agent writes first) and the entries
//! agents read (messages, and each reaction as its own entry).
//!
//! Pure values and rules: the Graph adapter turns Graph's JSON into these types, the use case
//! (`usecases::teams`) decides with them, the stores keep them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::agent::Agent;
use super::ids::{AgentId, EmailAddress, InvalidValue};
use super::presence::Presence;

fn invalid(kind: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { kind, reason }
}

fn short_hash(input: &str) -> String {
    hex::encode(&Sha256::digest(input.as_bytes())[..8])
}

macro_rules! graph_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                let raw = raw.trim();
                if raw.is_empty() {
                    return Err(invalid($kind, "it is empty"));
                }
                if raw.len() > $max {
                    return Err(invalid($kind, "it is too long"));
                }
                let allowed: fn(char) -> bool = $allowed;
                if !raw.chars().all(allowed) {
                    return Err(invalid($kind, "it has characters Graph ids do not have"));
                }
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

graph_id!(
    /// A Microsoft Entra user's object id (a GUID in practice).
    TeamsUserId,
    "Teams user id",
    64,
    |c| c.is_ascii_alphanumeric() || c == '-'
);
graph_id!(
    /// A Graph chat id, e.g. `19:<a>_<b>@unq.gbl.spaces` or `19:<hex>@thread.v2`.
    GraphChatId,
    "Graph chat id",
    256,
    |c| c.is_ascii_alphanumeric() || matches!(c, ':' | '@' | '.' | '_' | '-')
);
graph_id!(
    /// A chat message id (epoch milliseconds as digits, in practice).
    GraphMessageId,
    "Graph message id",
    64,
    |c| c.is_ascii_alphanumeric()
);
graph_id!(
    /// A change-notification subscription's id (a GUID).
    SubscriptionId,
    "subscription id",
    64,
    |c| c.is_ascii_alphanumeric() || c == '-'
);
graph_id!(
    /// A person's id in the organisation's other directory (the phone system's), from its file.
    OtherDirectoryId,
    "other directory id",
    64,
    |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
);
graph_id!(
    /// A contact of the directory: derived from the person's identities (see [`merge_contacts`]).
    ContactId,
    "contact id",
    32,
    |c| c.is_ascii_alphanumeric() || c == '-'
);
graph_id!(
    /// Our id of an agent's chat with one Teams user (one per pair, as Teams has one 1:1 chat per
    /// pair): safe in URLs, unlike Graph's.
    ChatId,
    "chat id",
    32,
    |c| c.is_ascii_alphanumeric() || c == '-'
);

impl ChatId {
    pub fn for_pair(agent: &AgentId, peer: &TeamsUserId) -> Self {
        Self(format!("chat-{}", short_hash(&format!("{agent}\u{0}{peer}"))))
    }
}

// ------------------------------------------------------------------ identities and contacts

/// Where an identity comes from. The order is the priority of presence (and of a contact's name
/// and job title): the contact centre first, then Teams, then the other directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    ContactCentre,
    Teams,
    OtherDirectory,
}

impl IdentityKind {
    pub const ALL: [IdentityKind; 3] = [Self::ContactCentre, Self::Teams, Self::OtherDirectory];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContactCentre => "contact_centre",
            Self::Teams => "teams",
            Self::OtherDirectory => "other_directory",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

/// A user of the organisation's Microsoft 365 tenant, as imported from Graph `/users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamsUser {
    pub id: TeamsUserId,
    pub display_name: String,
    pub mail: Option<EmailAddress>,
    /// The sign-in name; usually an address too.
    pub user_principal_name: String,
    pub job_title: Option<String>,
    pub department: Option<String>,
}

impl TeamsUser {
    /// Every address the person can be matched by: `mail` and the UPN when it is an address.
    pub fn emails(&self) -> Vec<EmailAddress> {
        let mut out: Vec<EmailAddress> = self.mail.iter().cloned().collect();
        if let Ok(upn) = EmailAddress::parse(&self.user_principal_name)
            && !out.contains(&upn)
        {
            out.push(upn);
        }
        out
    }
}

/// Presence as the other directory's file states it (as of the import).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    Available,
    Busy,
    Away,
    DoNotDisturb,
    Offline,
    Unknown,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Busy => "busy",
            Self::Away => "away",
            Self::DoNotDisturb => "do_not_disturb",
            Self::Offline => "offline",
            Self::Unknown => "unknown",
        }
    }

    /// Graph's `availability` (Available, AvailableIdle, Away, BeRightBack, Busy, BusyIdle,
    /// DoNotDisturb, Offline, PresenceUnknown).
    pub fn from_graph(availability: &str) -> Self {
        match availability {
            "Available" | "AvailableIdle" => Self::Available,
            "Busy" | "BusyIdle" => Self::Busy,
            "Away" | "BeRightBack" => Self::Away,
            "DoNotDisturb" => Self::DoNotDisturb,
            "Offline" => Self::Offline,
            _ => Self::Unknown,
        }
    }

    /// The contact-centre presence: `reserved` (an offer pending) counts as busy, and an agent
    /// working offline takes no work but is at their desk, so away.
    pub fn from_contact_centre(presence: Presence) -> Self {
        match presence {
            Presence::Available => Self::Available,
            Presence::Busy | Presence::Reserved => Self::Busy,
            Presence::WorkingOffline => Self::Away,
        }
    }

    /// The other directory's words, leniently (`available`, `busy`, `away`, `dnd`, `offline`...).
    pub fn from_directory(raw: &str) -> Self {
        match raw.trim().to_ascii_lowercase().replace([' ', '-'], "_").as_str() {
            "available" | "online" | "free" | "idle" => Self::Available,
            "busy" | "on_call" | "in_a_call" | "oncall" | "in_call" | "ringing" => Self::Busy,
            "away" | "be_right_back" | "brb" | "out" => Self::Away,
            "do_not_disturb" | "dnd" => Self::DoNotDisturb,
            "offline" | "unavailable" | "logged_out" => Self::Offline,
            _ => Self::Unknown,
        }
    }
}

/// A person of the organisation's other directory, as imported from the admin's file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtherDirectoryEntry {
    pub id: OtherDirectoryId,
    pub name: String,
    pub email: Option<EmailAddress>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub phone: Option<String>,
    /// The presence the file gave, if any (stale by nature: as of the import).
    pub presence: Option<Availability>,
}

/// One identity of a contact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    pub kind: IdentityKind,
    /// The id within its kind: agent id, Teams user id, other-directory id.
    pub id: String,
    pub name: String,
    pub emails: Vec<EmailAddress>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub phone: Option<String>,
}

/// A person, with every identity they have (at most one contact per address).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contact {
    pub id: ContactId,
    pub name: String,
    pub job_title: Option<String>,
    pub emails: Vec<EmailAddress>,
    /// In priority order: contact centre, Teams, other directory (and by id within a kind).
    pub identities: Vec<Identity>,
}

impl Contact {
    pub fn has(&self, kind: IdentityKind) -> bool {
        self.identities.iter().any(|i| i.kind == kind)
    }

    pub fn kinds(&self) -> Vec<IdentityKind> {
        let mut kinds: Vec<_> = self.identities.iter().map(|i| i.kind).collect();
        kinds.dedup();
        kinds
    }

    pub fn identity(&self, kind: IdentityKind) -> Option<&Identity> {
        self.identities.iter().find(|i| i.kind == kind)
    }

    /// The directory's groups, in list order: 0 contact-centre agents (alone or with other
    /// identities), 1 only the other directory, 2 only Teams, 3 Teams and the other directory.
    pub fn group(&self) -> u8 {
        let (cc, teams, other) = (
            self.has(IdentityKind::ContactCentre),
            self.has(IdentityKind::Teams),
            self.has(IdentityKind::OtherDirectory),
        );
        match (cc, teams, other) {
            (true, _, _) => 0,
            (false, false, true) => 1,
            (false, true, false) => 2,
            (false, true, true) => 3,
            // Unreachable: a contact has at least one identity.
            (false, false, false) => 4,
        }
    }

    /// Whether `needle` (already lower-cased, trimmed) is in the name of the contact or of any of
    /// its identities.
    pub fn name_matches(&self, needle: &str) -> bool {
        needle.is_empty()
            || fold(&self.name).contains(needle)
            || self.identities.iter().any(|i| fold(&i.name).contains(needle))
    }
}

/// Case- and accent-insensitive form for search and ordering ("Zoë" sorts and matches as "zoe").
pub fn fold(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    text.nfd().filter(|c| !unicode_normalization::char::is_combining_mark(*c)).collect::<String>().to_lowercase()
}

fn clean(text: &Option<String>) -> Option<String> {
    text.as_ref().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

fn identities(agents: &[Agent], teams: &[TeamsUser], other: &[OtherDirectoryEntry]) -> Vec<Identity> {
    let mut out = Vec::with_capacity(agents.len() + teams.len() + other.len());
    out.extend(agents.iter().map(|a| Identity {
        kind: IdentityKind::ContactCentre,
        id: a.id.to_string(),
        name: a.name.trim().to_owned(),
        emails: vec![a.email.clone()],
        job_title: None,
        department: None,
        phone: None,
    }));
    out.extend(teams.iter().map(|u| Identity {
        kind: IdentityKind::Teams,
        id: u.id.to_string(),
        name: u.display_name.trim().to_owned(),
        emails: u.emails(),
        job_title: clean(&u.job_title),
        department: clean(&u.department),
        phone: None,
    }));
    out.extend(other.iter().map(|e| Identity {
        kind: IdentityKind::OtherDirectory,
        id: e.id.to_string(),
        name: e.name.trim().to_owned(),
        emails: e.email.iter().cloned().collect(),
        job_title: clean(&e.job_title),
        department: clean(&e.department),
        phone: clean(&e.phone),
    }));
    out
}

/// Merges every identity into contacts: identities sharing an address (transitively: a Teams user's
/// `mail` and UPN both count) are one person, so no one appears twice. Identities without an
/// address stay people of their own. The result is in the directory's order ([`sort_contacts`]).
///
/// A contact's id is derived from its smallest address (or, with none, from its identity), so it
/// stays the same across syncs as long as that address does.
pub fn merge_contacts(agents: &[Agent], teams: &[TeamsUser], other: &[OtherDirectoryEntry]) -> Vec<Contact> {
    let all = identities(agents, teams, other);
    // Union-find over identities, joined through the addresses they share.
    let mut parent: Vec<usize> = (0..all.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut by_email: HashMap<&EmailAddress, usize> = HashMap::new();
    for (i, identity) in all.iter().enumerate() {
        for email in &identity.emails {
            match by_email.get(email) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    if a != b {
                        parent[a.max(b)] = a.min(b);
                    }
                }
                None => {
                    by_email.insert(email, i);
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<Identity>> = BTreeMap::new();
    for (i, identity) in all.into_iter().enumerate() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(identity);
    }
    let mut contacts: Vec<Contact> = groups.into_values().map(contact_of).collect();
    sort_contacts(&mut contacts);
    contacts
}

fn contact_of(mut identities: Vec<Identity>) -> Contact {
    identities.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.id.cmp(&b.id)));
    let mut emails: Vec<EmailAddress> = identities.iter().flat_map(|i| i.emails.iter().cloned()).collect();
    emails.sort();
    emails.dedup();
    let seed = match emails.first() {
        Some(e) => format!("email:{e}"),
        None => format!("{}:{}", identities[0].kind.as_str(), identities[0].id),
    };
    let name = identities.iter().map(|i| i.name.as_str()).find(|n| !n.is_empty()).unwrap_or_default().to_owned();
    let job_title = identities.iter().find_map(|i| i.job_title.clone());
    Contact { id: ContactId(format!("c-{}", short_hash(&seed))), name, job_title, emails, identities }
}

/// The directory's order: contact-centre agents (with or without other identities) first, then
/// people with only the other-directory identity, then only Teams, then Teams and the other
/// directory; alphabetically (ignoring case and accents) within each group.
pub fn sort_contacts(contacts: &mut [Contact]) {
    contacts.sort_by_cached_key(|c| (c.group(), fold(&c.name), c.id.clone()));
}

/// What an agent asked the directory for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactQuery {
    /// Part of a name, any case or accents.
    pub search: Option<String>,
    /// Only people who have this identity.
    pub identity: Option<IdentityKind>,
}

impl ContactQuery {
    pub fn matches(&self, contact: &Contact) -> bool {
        let needle = self.search.as_deref().map(|s| fold(s.trim())).unwrap_or_default();
        contact.name_matches(&needle) && self.identity.is_none_or(|k| contact.has(k))
    }
}

// ------------------------------------------------------------------ presence

/// A contact's presence, from their main identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactPresence {
    pub availability: Availability,
    /// The identity it comes from (`None` when nothing is known).
    pub source: Option<IdentityKind>,
    /// The source's own words: `working_offline`, `Busy/InAMeeting`, the file's value.
    pub detail: Option<String>,
    /// For the other directory: the import it is from.
    pub as_of: Option<DateTime<Utc>>,
}

impl ContactPresence {
    pub fn unknown() -> Self {
        Self { availability: Availability::Unknown, source: None, detail: None, as_of: None }
    }
}

/// The presence each kind of identity reported for one contact (`None`: no such identity, or
/// nothing known, e.g. Graph could not be reached).
#[derive(Debug, Clone, Default)]
pub struct PresenceInputs {
    pub contact_centre: Option<ContactPresence>,
    pub teams: Option<ContactPresence>,
    pub other_directory: Option<ContactPresence>,
}

/// The main identity's presence: the contact centre's if the person is an agent, else Teams',
/// else the other directory's. A source that knows nothing (`Unknown`) gives way to the next, so
/// an unreachable Graph or an unlicensed user shows the other directory's presence rather than
/// nothing.
pub fn main_presence(contact: &Contact, inputs: PresenceInputs) -> ContactPresence {
    let candidates = [
        (IdentityKind::ContactCentre, inputs.contact_centre),
        (IdentityKind::Teams, inputs.teams),
        (IdentityKind::OtherDirectory, inputs.other_directory),
    ];
    let mut fallback = None;
    for (kind, presence) in candidates {
        if !contact.has(kind) {
            continue;
        }
        match presence {
            Some(p) if p.availability != Availability::Unknown => return p,
            Some(p) => {
                fallback.get_or_insert(p);
            }
            None => {
                fallback.get_or_insert(ContactPresence { source: Some(kind), ..ContactPresence::unknown() });
            }
        }
    }
    fallback.unwrap_or_else(ContactPresence::unknown)
}

// ------------------------------------------------------------------ Teams account connection

/// Where an agent's Teams account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Never connected, or disconnected by an admin.
    NotConnected,
    /// A sign-in was started and not finished.
    Pending,
    Connected,
    /// The sign-in failed, was cancelled, or Microsoft no longer accepts the stored sign-in
    /// (password reset, revoked, expired): the agent signs in again.
    SignInFailed,
    /// The account has no Microsoft Teams license: only an admin can fix that.
    NoTeamsLicense,
    /// The agent signed in with a Microsoft account that is not theirs.
    WrongAccount,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::Pending => "pending",
            Self::Connected => "connected",
            Self::SignInFailed => "sign_in_failed",
            Self::NoTeamsLicense => "no_teams_license",
            Self::WrongAccount => "wrong_account",
        }
    }

    /// What the agent should do next.
    pub fn action(self) -> Option<&'static str> {
        match self {
            Self::NotConnected | Self::Pending | Self::SignInFailed | Self::WrongAccount => Some("sign_in"),
            Self::NoTeamsLicense => Some("contact_admin"),
            Self::Connected => None,
        }
    }

    /// The message shown to the agent.
    pub fn message(self) -> &'static str {
        match self {
            Self::NotConnected => "Your Microsoft Teams account is not connected. Connect it to chat with Teams users.",
            Self::Pending => "The sign-in to Microsoft has not been finished. Sign in again to connect Teams.",
            Self::Connected => "Your Microsoft Teams account is connected.",
            Self::SignInFailed => {
                "The sign-in to Microsoft failed or has expired. Sign in to Microsoft again to reconnect Teams."
            }
            Self::NoTeamsLicense => {
                "Your Microsoft account has no Microsoft Teams license. Contact your admin to get one, then sign in again."
            }
            Self::WrongAccount => {
                "You signed in with a Microsoft account that does not match your contact-centre email. Sign in again with your own account."
            }
        }
    }
}

/// An agent's Teams account connection (no secrets: the tokens are kept in the secret store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamsConnection {
    pub agent: AgentId,
    pub status: ConnectionStatus,
    /// The connected (or last connected) Microsoft account.
    pub teams_user: Option<TeamsUserId>,
    pub teams_user_name: Option<String>,
    /// When the status last changed.
    pub updated_at: DateTime<Utc>,
    /// Microsoft's error code for a failed sign-in (`invalid_grant`, `AADSTS50126`...), never a
    /// token or a description that could carry personal data.
    pub error_code: Option<String>,
}

impl TeamsConnection {
    pub fn new(agent: AgentId, status: ConnectionStatus, now: DateTime<Utc>) -> Self {
        Self { agent, status, teams_user: None, teams_user_name: None, updated_at: now, error_code: None }
    }
}

/// A sign-in started by an agent: found again by the hash of the `state` Microsoft sends back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingSignIn {
    /// SHA-256 (hex) of the `state`: the state itself is only in the agent's browser.
    pub state_hash: String,
    pub agent: AgentId,
    /// The PKCE verifier. Useless without the one-time code, which only the agent's browser gets.
    pub code_verifier: String,
    pub expires_at: DateTime<Utc>,
}

/// The hex SHA-256 of a secret that only has to be compared (a `state`, a `clientState`).
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two hashes in time independent of where they differ.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An agent's delegated Microsoft tokens.
#[derive(Clone)]
pub struct DelegatedTokens {
    pub access_token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub refresh_token: Option<SecretString>,
}

impl fmt::Debug for DelegatedTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegatedTokens").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredTokens {
    access_token: String,
    expires_at: DateTime<Utc>,
    refresh_token: Option<String>,
}

impl DelegatedTokens {
    /// The form kept in the secret store (one secret per agent).
    pub fn to_secret(&self) -> SecretString {
        let stored = StoredTokens {
            access_token: self.access_token.expose_secret().to_owned(),
            expires_at: self.expires_at,
            refresh_token: self.refresh_token.as_ref().map(|t| t.expose_secret().to_owned()),
        };
        SecretString::from(serde_json::to_string(&stored).expect("plain strings serialize"))
    }

    pub fn from_secret(secret: &SecretString) -> Result<Self, InvalidValue> {
        let stored: StoredTokens = serde_json::from_str(secret.expose_secret())
            .map_err(|_| invalid("stored Teams tokens", "they are not in the expected form"))?;
        Ok(Self {
            access_token: SecretString::from(stored.access_token),
            expires_at: stored.expires_at,
            refresh_token: stored.refresh_token.map(SecretString::from),
        })
    }

    /// Still good for `margin` at least.
    pub fn fresh(&self, now: DateTime<Utc>, margin: chrono::Duration) -> bool {
        self.expires_at - margin > now
    }
}

// ------------------------------------------------------------------ chats

/// A chat's life: the agent writes first; until then there is no Teams chat for the other side to
/// answer in, and nothing of an earlier conversation between the two is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatState {
    AwaitingFirstMessage,
    Open,
}

impl ChatState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingFirstMessage => "awaiting_first_message",
            Self::Open => "open",
        }
    }
}

/// An agent's 1:1 chat with a Teams user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamsChat {
    pub id: ChatId,
    pub agent: AgentId,
    pub peer: TeamsUserId,
    pub peer_name: String,
    pub state: ChatState,
    /// Graph's chat, once the first message created (or found) it.
    pub graph_chat: Option<GraphChatId>,
    /// When the agent's first message was created in Teams: anything older is not this chat's.
    pub opened_at: Option<DateTime<Utc>>,
    /// The newest `lastModifiedDateTime` seen: a re-read after a gap starts here.
    pub synced_until: Option<DateTime<Utc>>,
    pub subscription: Option<SubscriptionId>,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
}

impl TeamsChat {
    pub fn new(agent: AgentId, peer: TeamsUserId, peer_name: String, now: DateTime<Utc>) -> Self {
        Self {
            id: ChatId::for_pair(&agent, &peer),
            agent,
            peer,
            peer_name,
            state: ChatState::AwaitingFirstMessage,
            graph_chat: None,
            opened_at: None,
            synced_until: None,
            subscription: None,
            created_at: now,
            last_activity_at: now,
        }
    }

    /// Records the agent's first message: the chat is open from its creation time on.
    pub fn open(&mut self, first_message_at: DateTime<Utc>) {
        if self.state == ChatState::AwaitingFirstMessage {
            self.state = ChatState::Open;
            self.opened_at = Some(first_message_at);
        }
    }

    /// Moves the re-read point forward (never back).
    pub fn synced(&mut self, last_modified: DateTime<Utc>) {
        if self.synced_until.is_none_or(|t| t < last_modified) {
            self.synced_until = Some(last_modified);
        }
    }
}

/// A change-notification subscription on one chat's messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSubscription {
    pub id: SubscriptionId,
    pub chat: ChatId,
    pub agent: AgentId,
    /// SHA-256 (hex) of the `clientState` Graph echoes in every notification.
    pub client_state_hash: String,
    pub expires_at: DateTime<Utc>,
}

/// Graph's kinds of chat messages; only `Message` reaches agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphMessageType {
    Message,
    /// System events (members added, chat renamed...), typing, and future values.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    Text,
    Html,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamsReaction {
    /// A Unicode emoji, `custom`, or a legacy name (`like`, `heart`...).
    pub reaction_type: String,
    pub user: Option<TeamsUserId>,
    pub created_at: DateTime<Utc>,
}

/// A chat message as Graph returns it, in our terms. Content is already safe HTML or text.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamsMessage {
    pub id: GraphMessageId,
    pub message_type: GraphMessageType,
    pub from: Option<TeamsUserId>,
    pub from_name: Option<String>,
    pub content_type: ContentType,
    pub content: String,
    pub created_at: DateTime<Utc>,
    pub last_modified_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub reactions: Vec<TeamsReaction>,
}

/// Who wrote an entry, from the agent's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The agent (through Mailroom or their own Teams client).
    Outbound,
    /// The Teams user.
    Inbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Message,
    /// A reaction to `reacts_to`, shown as a message of its own.
    Reaction,
}

/// One line of a chat as agents read it. Entries change in place (an edit, a deletion); every
/// change gets a new `seq`, so "what changed since N" is one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatEntry {
    pub chat: ChatId,
    pub agent: AgentId,
    /// Unique within the chat: the Graph message id, or `<message id>/<user>/<reaction>`.
    pub key: String,
    pub kind: EntryKind,
    pub message_id: GraphMessageId,
    /// For a reaction: the message reacted to (same as `message_id`).
    pub reacts_to: Option<GraphMessageId>,
    pub reaction: Option<String>,
    pub direction: Direction,
    pub from: Option<TeamsUserId>,
    pub from_name: Option<String>,
    pub content_type: ContentType,
    pub content: String,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Graph's `lastModifiedDateTime` of the message this entry was read from: an older read never
    /// overwrites a newer one.
    pub source_modified_at: DateTime<Utc>,
    /// Assigned by the store on every change.
    #[serde(default)]
    pub seq: u64,
}

impl ChatEntry {
    /// Whether what an agent sees differs (the bookkeeping fields aside).
    pub fn differs_from(&self, other: &ChatEntry) -> bool {
        self.content != other.content
            || self.content_type != other.content_type
            || self.edited_at != other.edited_at
            || self.deleted_at != other.deleted_at
            || self.from_name != other.from_name
    }
}

/// Why a Teams message does not become chat entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// A system event (members added...), not something a person wrote.
    SystemEvent,
    /// Older than the agent's first message: from before this chat, not shown.
    BeforeFirstMessage,
    /// The chat is still waiting for the agent's first message.
    NotOpen,
}

/// The entries a Teams message gives an agent's chat: the message itself, and one entry per
/// reaction on it. Reactions are kept as entries of their own so an agent sees "👍 from Alex"
/// arrive like a message.
pub fn entries_for(chat: &TeamsChat, agent_user: &TeamsUserId, m: &TeamsMessage) -> Result<Vec<ChatEntry>, Skipped> {
    if m.message_type != GraphMessageType::Message {
        return Err(Skipped::SystemEvent);
    }
    let opened = match (chat.state, chat.opened_at) {
        (ChatState::Open, Some(t)) => t,
        _ => return Err(Skipped::NotOpen),
    };
    if m.created_at < opened {
        return Err(Skipped::BeforeFirstMessage);
    }
    let direction_of = |user: &Option<TeamsUserId>| {
        if user.as_ref() == Some(agent_user) { Direction::Outbound } else { Direction::Inbound }
    };
    let mut out = vec![ChatEntry {
        chat: chat.id.clone(),
        agent: chat.agent.clone(),
        key: m.id.to_string(),
        kind: EntryKind::Message,
        message_id: m.id.clone(),
        reacts_to: None,
        reaction: None,
        direction: direction_of(&m.from),
        from: m.from.clone(),
        from_name: m.from_name.clone(),
        content_type: if m.deleted_at.is_some() { ContentType::Text } else { m.content_type },
        // A deleted message shows as deleted, with nothing of what it said.
        content: if m.deleted_at.is_some() { String::new() } else { m.content.clone() },
        created_at: m.created_at,
        edited_at: m.edited_at,
        deleted_at: m.deleted_at,
        source_modified_at: m.last_modified_at,
        seq: 0,
    }];
    for r in &m.reactions {
        let user = r.user.as_ref().map(|u| u.as_str()).unwrap_or("unknown");
        let from_name = if r.user.as_ref() == Some(&chat.peer) { Some(chat.peer_name.clone()) } else { None };
        out.push(ChatEntry {
            chat: chat.id.clone(),
            agent: chat.agent.clone(),
            key: reaction_key(&m.id, user, &r.reaction_type),
            kind: EntryKind::Reaction,
            message_id: m.id.clone(),
            reacts_to: Some(m.id.clone()),
            reaction: Some(r.reaction_type.clone()),
            direction: direction_of(&r.user),
            from: r.user.clone(),
            from_name,
            content_type: ContentType::Text,
            content: r.reaction_type.clone(),
            created_at: r.created_at,
            edited_at: None,
            deleted_at: None,
            source_modified_at: m.last_modified_at,
            seq: 0,
        });
    }
    Ok(out)
}

pub fn reaction_key(message: &GraphMessageId, user: &str, reaction: &str) -> String {
    format!("{message}/{user}/{reaction}")
}

/// Reaction entries that are no longer on the message: each is marked removed at `at` (the
/// message's `lastModifiedDateTime`), so agents see it go.
pub fn removed_reactions(stored: &[ChatEntry], current: &[ChatEntry], at: DateTime<Utc>) -> Vec<ChatEntry> {
    stored
        .iter()
        .filter(|e| e.kind == EntryKind::Reaction && e.deleted_at.is_none())
        .filter(|e| !current.iter().any(|c| c.key == e.key))
        .map(|e| ChatEntry { deleted_at: Some(at), source_modified_at: at, ..e.clone() })
        .collect()
}

/// Checks an agent's chat message before it is sent.
pub fn check_message_text(text: &str) -> Result<&str, &'static str> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the message is empty");
    }
    // Teams refuses messages over about 28 KB.
    if trimmed.len() > 28_000 {
        return Err("the message is longer than 28,000 bytes");
    }
    Ok(trimmed)
}

// ------------------------------------------------------------------ change notifications

/// What a Graph change notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A message was posted.
    Created,
    /// A message was edited, or a reaction added or removed.
    Updated,
    /// A message was (soft) deleted.
    Deleted,
    /// Lifecycle: the subscription needs a fresh authorization.
    ReauthorizationRequired,
    /// Lifecycle: Graph removed the subscription; it must be created again and the chat re-read.
    SubscriptionRemoved,
    /// Lifecycle: notifications were lost; the chat must be re-read.
    Missed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::ReauthorizationRequired => "reauthorization_required",
            Self::SubscriptionRemoved => "subscription_removed",
            Self::Missed => "missed",
        }
    }

    pub fn is_lifecycle(self) -> bool {
        matches!(self, Self::ReauthorizationRequired | Self::SubscriptionRemoved | Self::Missed)
    }
}

/// One notification item, in our terms. The `clientState` it carried is kept only as its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatNotification {
    pub subscription: SubscriptionId,
    pub kind: ChangeKind,
    /// The message, for message changes.
    pub message: Option<GraphMessageId>,
    /// SHA-256 (hex) of the `clientState` it carried; not serialized (checked before queueing).
    #[serde(skip)]
    pub client_state_hash: Option<String>,
}

// ------------------------------------------------------------------ the other directory's file

/// A row of the other directory's file that could not be imported, with its line number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRow {
    pub line: usize,
    pub reason: String,
}

/// Reads the other directory's CSV export: a header row naming the columns (`id`, `name`,
/// `email`, `job_title`, `department`, `phone`, `presence`; `id` and `name` required, others
/// optional, any order, case-insensitive), then one person per row. RFC 4180 quoting. Rows with a
/// problem are reported and skipped; the rest are imported. A repeated id keeps the first row.
pub fn parse_directory_csv(text: &str) -> Result<(Vec<OtherDirectoryEntry>, Vec<RejectedRow>), String> {
    let rows = csv_rows(text.trim_start_matches('\u{feff}'))?;
    let mut rows = rows.into_iter().filter(|(_, r)| !(r.len() == 1 && r[0].trim().is_empty()));
    let Some((_, header)) = rows.next() else {
        return Err("the file is empty: the first line must name the columns (id,name,email,...)".into());
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_ascii_lowercase().replace([' ', '-'], "_")).collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(id_col), Some(name_col)) = (col("id"), col("name")) else {
        return Err("the first line must name the columns, with at least id and name".into());
    };
    let (email_col, title_col, dept_col, phone_col, presence_col) =
        (col("email"), col("job_title"), col("department"), col("phone"), col("presence"));
    let mut entries: Vec<OtherDirectoryEntry> = Vec::new();
    let mut rejected = Vec::new();
    for (line, row) in rows {
        let cell = |c: Option<usize>| c.and_then(|c| row.get(c)).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let id = match cell(Some(id_col)).map(|v| OtherDirectoryId::parse(&v)) {
            Some(Ok(id)) => id,
            Some(Err(e)) => {
                rejected.push(RejectedRow { line, reason: e.to_string() });
                continue;
            }
            None => {
                rejected.push(RejectedRow { line, reason: "id is empty".into() });
                continue;
            }
        };
        let Some(name) = cell(Some(name_col)) else {
            rejected.push(RejectedRow { line, reason: "name is empty".into() });
            continue;
        };
        let email = match cell(email_col).map(|v| EmailAddress::parse(&v)) {
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => {
                rejected.push(RejectedRow { line, reason: e.to_string() });
                continue;
            }
            None => None,
        };
        if entries.iter().any(|e| e.id == id) {
            rejected.push(RejectedRow { line, reason: format!("id {id} appears on an earlier line") });
            continue;
        }
        entries.push(OtherDirectoryEntry {
            id,
            name,
            email,
            job_title: cell(title_col),
            department: cell(dept_col),
            phone: cell(phone_col),
            presence: cell(presence_col).map(|p| Availability::from_directory(&p)),
        });
    }
    Ok((entries, rejected))
}

/// RFC 4180 rows with the line each starts on.
fn csv_rows(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut row_line = 1;
    let mut chars = text.chars().peekable();
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                row.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push((row_line, std::mem::take(&mut row)));
                line += 1;
                row_line = line;
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(format!("line {row_line}: a quoted field is not closed"));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::agent::Role;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn agent(id: &str, name: &str, email: &str) -> Agent {
        Agent {
            id: AgentId::parse(id).unwrap(),
            name: name.into(),
            email: EmailAddress::parse(email).unwrap(),
            queues: vec![],
            capacity: 1,
            role: Role::Agent,
        }
    }

    fn teams(id: &str, name: &str, mail: Option<&str>, upn: &str, title: Option<&str>) -> TeamsUser {
        TeamsUser {
            id: TeamsUserId::parse(id).unwrap(),
            display_name: name.into(),
            mail: mail.map(|m| EmailAddress::parse(m).unwrap()),
            user_principal_name: upn.into(),
            job_title: title.map(Into::into),
            department: None,
        }
    }

    fn other(id: &str, name: &str, email: Option<&str>, presence: Option<Availability>) -> OtherDirectoryEntry {
        OtherDirectoryEntry {
            id: OtherDirectoryId::parse(id).unwrap(),
            name: name.into(),
            email: email.map(|m| EmailAddress::parse(m).unwrap()),
            job_title: Some("Phone title".into()),
            department: None,
            phone: Some("+1 555 0100".into()),
            presence,
        }
    }

    #[test]
    fn identities_of_one_person_merge_by_email_and_never_duplicate() {
        let agents = [agent("ana", "Ana Agent", "ana@example.com")];
        let teams = [
            teams("t-ana", "Ana A.", Some("Ana@Example.com"), "ana@example.com", Some("Agent")),
            // Matched through the UPN only, and joining the directory entry through its mail.
            teams("t-alex", "Alex Weber", Some("alex.weber@example.com"), "alex@corp.example", Some("Claims")),
            teams("t-zoe", "Zoë Martin", None, "zoe@example.com", None),
        ];
        let other = [
            other("p1", "Alex W", Some("alex@corp.example"), Some(Availability::Busy)),
            other("p2", "Nadia Noemail", None, None),
            other("p3", "Ana on the phone", Some("ana@example.com"), None),
        ];
        let contacts = merge_contacts(&agents, &teams, &other);
        assert_eq!(contacts.len(), 4, "{contacts:#?}");
        let ana = contacts.iter().find(|c| c.name == "Ana Agent").unwrap();
        assert_eq!(ana.kinds(), vec![IdentityKind::ContactCentre, IdentityKind::Teams, IdentityKind::OtherDirectory]);
        assert_eq!(ana.job_title.as_deref(), Some("Agent"), "the first identity with a title gives it");
        let alex = contacts.iter().find(|c| c.name == "Alex Weber").unwrap();
        assert_eq!(alex.kinds(), vec![IdentityKind::Teams, IdentityKind::OtherDirectory]);
        assert_eq!(alex.emails.len(), 2);
        // Every identity appears exactly once.
        let total: usize = contacts.iter().map(|c| c.identities.len()).sum();
        assert_eq!(total, 7);
        // Ids are stable and derived from the smallest address.
        let again = merge_contacts(&agents, &teams, &other);
        assert_eq!(contacts.iter().map(|c| &c.id).collect::<Vec<_>>(), again.iter().map(|c| &c.id).collect::<Vec<_>>());
    }

    #[test]
    fn the_directory_order_is_agents_then_other_only_then_teams_only_then_teams_and_other() {
        let agents = [agent("ben", "Ben", "ben@example.com"), agent("ana", "ana", "ana@example.com")];
        let teams = [
            teams("t1", "Yann Teams", Some("yann@example.com"), "yann@example.com", None),
            teams("t2", "Bob Teams", Some("bob@example.com"), "bob@example.com", None),
            teams("t3", "Carl Both", Some("carl@example.com"), "carl@example.com", None),
            teams("t4", "Ben", Some("ben@example.com"), "ben@example.com", None),
            teams("t5", "Adam Both", Some("adam@example.com"), "adam@example.com", None),
        ];
        let other = [
            other("p1", "Zed Phone", None, None),
            other("p2", "Carl", Some("carl@example.com"), None),
            other("p3", "Émile Phone", None, None),
            other("p4", "Adam", Some("adam@example.com"), None),
        ];
        let names: Vec<String> = merge_contacts(&agents, &teams, &other).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            ["ana", "Ben", "Émile Phone", "Zed Phone", "Bob Teams", "Yann Teams", "Adam Both", "Carl Both"],
        );
    }

    #[test]
    fn search_by_name_ignores_case_and_accents_and_filter_by_identity() {
        let contacts = merge_contacts(
            &[agent("ana", "Ana Agent", "ana@example.com")],
            &[teams("t", "Zoë Martin", None, "zoe@example.com", None)],
            &[other("p", "Zoe Phone", None, None)],
        );
        let q = |search: &str, identity: Option<IdentityKind>| {
            let query = ContactQuery { search: Some(search.into()), identity };
            contacts.iter().filter(|c| query.matches(c)).map(|c| c.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(q("ZOE", None), ["Zoe Phone", "Zoë Martin"]);
        assert_eq!(q("zoë", Some(IdentityKind::Teams)), ["Zoë Martin"]);
        assert_eq!(q("", Some(IdentityKind::ContactCentre)), ["Ana Agent"]);
        assert!(q("nobody", None).is_empty());
    }

    #[test]
    fn presence_comes_from_the_main_identity_in_priority_order() {
        let contacts = merge_contacts(
            &[agent("ana", "Ana", "ana@example.com")],
            &[
                teams("t-ana", "Ana", Some("ana@example.com"), "ana@example.com", None),
                teams("t-alex", "Alex", Some("alex@example.com"), "alex@example.com", None),
            ],
            &[other("p-alex", "Alex", Some("alex@example.com"), Some(Availability::Busy))],
        );
        let ana = &contacts[0];
        let alex = &contacts[1];
        let p = |a: Availability, k: IdentityKind| {
            Some(ContactPresence { availability: a, source: Some(k), detail: None, as_of: None })
        };
        // An agent: the contact centre wins over Teams.
        let got = main_presence(
            ana,
            PresenceInputs {
                contact_centre: p(Availability::Away, IdentityKind::ContactCentre),
                teams: p(Availability::Available, IdentityKind::Teams),
                other_directory: None,
            },
        );
        assert_eq!((got.availability, got.source), (Availability::Away, Some(IdentityKind::ContactCentre)));
        // Not an agent: Teams wins over the other directory...
        let got = main_presence(
            alex,
            PresenceInputs {
                contact_centre: p(Availability::Available, IdentityKind::ContactCentre),
                teams: p(Availability::DoNotDisturb, IdentityKind::Teams),
                other_directory: p(Availability::Busy, IdentityKind::OtherDirectory),
            },
        );
        assert_eq!((got.availability, got.source), (Availability::DoNotDisturb, Some(IdentityKind::Teams)));
        // ...unless Teams knows nothing.
        let got = main_presence(
            alex,
            PresenceInputs {
                contact_centre: None,
                teams: p(Availability::Unknown, IdentityKind::Teams),
                other_directory: p(Availability::Busy, IdentityKind::OtherDirectory),
            },
        );
        assert_eq!((got.availability, got.source), (Availability::Busy, Some(IdentityKind::OtherDirectory)));
        let got = main_presence(alex, PresenceInputs::default());
        assert_eq!((got.availability, got.source), (Availability::Unknown, Some(IdentityKind::Teams)));
    }

    #[test]
    fn presence_words_map_to_availability() {
        assert_eq!(Availability::from_graph("BeRightBack"), Availability::Away);
        assert_eq!(Availability::from_graph("BusyIdle"), Availability::Busy);
        assert_eq!(Availability::from_graph("PresenceUnknown"), Availability::Unknown);
        assert_eq!(Availability::from_contact_centre(Presence::Reserved), Availability::Busy);
        assert_eq!(Availability::from_directory(" On Call "), Availability::Busy);
        assert_eq!(Availability::from_directory("DND"), Availability::DoNotDisturb);
    }

    fn chat() -> TeamsChat {
        let mut c = TeamsChat::new(
            AgentId::parse("ana").unwrap(),
            TeamsUserId::parse("alex").unwrap(),
            "Alex".into(),
            t("2026-01-01T10:00:00Z"),
        );
        c.graph_chat = Some(GraphChatId::parse("19:a_b@unq.gbl.spaces").unwrap());
        c
    }

    fn message(id: &str, from: &str, created: &str) -> TeamsMessage {
        TeamsMessage {
            id: GraphMessageId::parse(id).unwrap(),
            message_type: GraphMessageType::Message,
            from: Some(TeamsUserId::parse(from).unwrap()),
            from_name: Some(from.into()),
            content_type: ContentType::Html,
            content: "<p>hi</p>".into(),
            created_at: t(created),
            last_modified_at: t(created),
            edited_at: None,
            deleted_at: None,
            reactions: vec![],
        }
    }

    #[test]
    fn the_agent_writes_first_and_nothing_older_is_shown() {
        let me = TeamsUserId::parse("me").unwrap();
        let mut c = chat();
        let reply = message("2", "alex", "2026-01-01T10:05:00Z");
        assert_eq!(entries_for(&c, &me, &reply), Err(Skipped::NotOpen));
        c.open(t("2026-01-01T10:01:00Z"));
        assert_eq!(c.state, ChatState::Open);
        let old = message("1", "alex", "2025-12-31T09:00:00Z");
        assert_eq!(entries_for(&c, &me, &old), Err(Skipped::BeforeFirstMessage));
        let entries = entries_for(&c, &me, &reply).unwrap();
        assert_eq!(entries[0].direction, Direction::Inbound);
        let mine = message("3", "me", "2026-01-01T10:06:00Z");
        assert_eq!(entries_for(&c, &me, &mine).unwrap()[0].direction, Direction::Outbound);
        let mut system = message("4", "alex", "2026-01-01T10:07:00Z");
        system.message_type = GraphMessageType::Other;
        assert_eq!(entries_for(&c, &me, &system), Err(Skipped::SystemEvent));
        // Opening again keeps the first time.
        c.open(t("2026-01-02T00:00:00Z"));
        assert_eq!(c.opened_at, Some(t("2026-01-01T10:01:00Z")));
    }

    #[test]
    fn reactions_become_entries_and_deletions_empty_the_content() {
        let me = TeamsUserId::parse("me").unwrap();
        let mut c = chat();
        c.open(t("2026-01-01T10:00:00Z"));
        let mut m = message("5", "me", "2026-01-01T10:05:00Z");
        m.reactions.push(TeamsReaction {
            reaction_type: "👍".into(),
            user: Some(TeamsUserId::parse("alex").unwrap()),
            created_at: t("2026-01-01T10:06:00Z"),
        });
        m.last_modified_at = t("2026-01-01T10:06:00Z");
        let entries = entries_for(&c, &me, &m).unwrap();
        assert_eq!(entries.len(), 2);
        let reaction = &entries[1];
        assert_eq!((reaction.kind, reaction.direction), (EntryKind::Reaction, Direction::Inbound));
        assert_eq!(reaction.reaction.as_deref(), Some("👍"));
        assert_eq!(reaction.from_name.as_deref(), Some("Alex"));
        assert_eq!(reaction.key, "5/alex/👍");
        // The reaction is taken back.
        m.reactions.clear();
        let now = entries_for(&c, &me, &m).unwrap();
        let removed = removed_reactions(&entries, &now, t("2026-01-01T10:07:00Z"));
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].deleted_at, Some(t("2026-01-01T10:07:00Z")));
        // A deleted message keeps its times, not its text.
        m.deleted_at = Some(t("2026-01-01T10:08:00Z"));
        let deleted = &entries_for(&c, &me, &m).unwrap()[0];
        assert!(deleted.content.is_empty());
        assert!(deleted.differs_from(&entries[0]));
    }

    #[test]
    fn tokens_round_trip_through_the_secret_form_and_hide_in_debug() {
        let tokens = DelegatedTokens {
            access_token: SecretString::from("at-123"),
            expires_at: t("2026-01-01T10:00:00Z"),
            refresh_token: Some(SecretString::from("rt-456")),
        };
        let back = DelegatedTokens::from_secret(&tokens.to_secret()).unwrap();
        assert_eq!(back.access_token.expose_secret(), "at-123");
        assert_eq!(back.refresh_token.unwrap().expose_secret(), "rt-456");
        assert!(!format!("{tokens:?}").contains("at-123"));
        assert!(tokens.fresh(t("2026-01-01T09:00:00Z"), chrono::Duration::minutes(5)));
        assert!(!tokens.fresh(t("2026-01-01T09:56:00Z"), chrono::Duration::minutes(5)));
    }

    #[test]
    fn the_directory_file_is_read_with_quotes_and_bad_rows_reported() {
        let csv = "\u{feff}ID,Name,Email,Job Title,Presence\r\n\
                   p1,\"Weber, Alex\",alex@example.com,Claims,busy\r\n\
                   p2,Nadia,,\"Sales \"\"EMEA\"\"\",\r\n\
                   p3,,x@example.com,,\r\n\
                   p4,Bad Mail,not-an-address,,\r\n\
                   p1,Again,,,\r\n\
                   \r\n\
                   p5,\"Multi\nline\",,,away";
        let (entries, rejected) = parse_directory_csv(csv).unwrap();
        assert_eq!(entries.len(), 3, "{entries:#?}");
        assert_eq!(entries[0].name, "Weber, Alex");
        assert_eq!(entries[0].presence, Some(Availability::Busy));
        assert_eq!(entries[1].job_title.as_deref(), Some("Sales \"EMEA\""));
        assert_eq!(entries[1].email, None);
        assert_eq!(entries[2].name, "Multi\nline");
        assert_eq!(rejected.iter().map(|r| r.line).collect::<Vec<_>>(), [4, 5, 6]);
        assert!(parse_directory_csv("name,email\nA,a@example.com").is_err());
        assert!(parse_directory_csv("id,name\n\"open").is_err());
    }

    #[test]
    fn ids_are_validated() {
        assert!(GraphChatId::parse("19:a_b@unq.gbl.spaces").is_ok());
        assert!(GraphChatId::parse("19:a b").is_err());
        assert!(GraphMessageId::parse("1616991463150").is_ok());
        assert!(GraphMessageId::parse("../x").is_err());
        let a = ChatId::for_pair(&AgentId::parse("ana").unwrap(), &TeamsUserId::parse("u1").unwrap());
        assert!(ChatId::parse(a.as_str()).is_ok());
        assert_ne!(a, ChatId::for_pair(&AgentId::parse("ben").unwrap(), &TeamsUserId::parse("u1").unwrap()));
        assert!(hashes_equal(&secret_hash("x"), &secret_hash("x")));
        assert!(!hashes_equal(&secret_hash("x"), &secret_hash("y")));
    }
}
