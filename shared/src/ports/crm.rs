//! The CRM port (Dynamics 365 through the Dataverse Web API, or the Local CRM) and the stores the
//! handoff keeps its own state in.
//!
//! Every create is idempotent on the id the caller chose (see `domain::crm` for how ids are
//! derived): creating a record that exists already returns it instead of failing or duplicating,
//! which is what makes a redelivered handoff converge on one incident.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{BackendError, BackendResult};
use crate::domain::crm::{
    ActivityId, ContactId, ContactRecord, CrmPrincipalId, CrmQueueId, HandoffKey, HandoffRecord, IncidentId, NoteId,
    OptionSet, OwnerRef, TicketNumber, TicketProperties,
};
use crate::domain::ids::EmailAddress;
use crate::domain::interaction::StoredMessage;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure talking to the CRM. Each variant says whether a retry can help and carries the CRM's
/// own words, so an admin reading a parked handoff knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// Throttled (429), a 5xx, a time-out or a dropped connection, after the client's own retries.
    #[error("{operation}: Dynamics is unavailable for now")]
    Unavailable {
        operation: &'static str,
        /// What the service asked for (`Retry-After`), when it said.
        retry_after: Option<Duration>,
        #[source]
        source: BoxError,
    },
    /// The token endpoint refused the credentials (wrong secret, unknown client or tenant).
    #[error("{operation}: sign-in refused: {code}: {description}")]
    SignInRefused { operation: &'static str, code: String, description: String },
    /// Dataverse refused a fresh token too (401 twice): usually no application user exists for
    /// the client id in this environment, or the environment URL is wrong.
    #[error(
        "{operation}: Dynamics refused the access token ({message}); check that an application user exists for the client id in this environment"
    )]
    Unauthorized { operation: &'static str, message: String },
    /// A 403 naming a missing privilege (`prvCreateIncident` ...).
    #[error("{operation}: the application user lacks the {privilege} privilege: {message}")]
    MissingPrivilege { operation: &'static str, privilege: String, message: String },
    /// Another 403.
    #[error("{operation}: access denied ({code}): {message}")]
    AccessDenied { operation: &'static str, code: String, message: String },
    /// A 400 about one property, with Dataverse's own words.
    #[error("{operation}: Dynamics rejected {property}: {message}")]
    InvalidProperty { operation: &'static str, property: String, code: String, message: String },
    /// A record the request refers to does not exist (a queue, an owner, a contact).
    #[error("{operation}: {message}")]
    NotFound { operation: &'static str, code: String, message: String },
    /// Any other refusal.
    #[error("{operation}: Dynamics answered {status} ({code}): {message}")]
    Rejected { operation: &'static str, status: u16, code: String, message: String },
    /// An answer the client cannot use (no `OData-EntityId`, unreadable JSON).
    #[error("{operation}: unexpected answer from Dynamics: {detail}")]
    Protocol { operation: &'static str, detail: String },
    /// The Local CRM's storage failed.
    #[error("{operation}: the Local CRM's storage failed")]
    Storage {
        operation: &'static str,
        #[source]
        source: BackendError,
    },
}

impl CrmError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Storage { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The privilege a 403 named.
    pub fn missing_privilege(&self) -> Option<&str> {
        match self {
            Self::MissingPrivilege { privilege, .. } => Some(privilege),
            _ => None,
        }
    }
}

pub type CrmResult<T> = Result<T, CrmError>;

/// A new contact, with the id Mailroom chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewContact {
    pub id: ContactId,
    pub first_name: Option<String>,
    pub last_name: String,
    pub email: EmailAddress,
}

/// A new incident (case), with the id Mailroom chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncident {
    pub id: IncidentId,
    pub title: String,
    /// At most 2,000 characters (the caller cuts it).
    pub description: String,
    pub customer: ContactId,
    /// `caseorigincode` (2, Email).
    pub origin: i32,
    /// `prioritycode`; `None` leaves the org's default.
    pub priority: Option<i32>,
    /// `None` leaves the caller (the application user) as owner.
    pub owner: Option<OwnerRef>,
    /// The case's `emailaddress` column: the customer's address.
    pub email: Option<EmailAddress>,
    pub properties: TicketProperties,
}

/// An incident as the CRM holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRecord {
    pub id: IncidentId,
    pub ticket_number: TicketNumber,
    pub title: Option<String>,
    pub customer: Option<ContactId>,
}

/// A participant of an email activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailParty {
    /// A contact we know, with the address used.
    Contact(ContactId, EmailAddress),
    /// An address not resolved to a record (`addressused`).
    Address(EmailAddress),
}

/// One email of the conversation, recorded on the case's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEmailActivity {
    pub id: ActivityId,
    pub incident: IncidentId,
    pub subject: String,
    /// Plain text; the adapter renders what the CRM needs.
    pub body: String,
    /// True for the customer's mail, false for ours.
    pub incoming: bool,
    pub from: EmailParty,
    pub to: Vec<EmailParty>,
    pub cc: Vec<EmailParty>,
    pub sent_at: DateTime<Utc>,
}

/// A file on a note.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteAttachment {
    pub file_name: String,
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for NoteAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteAttachment").field("size", &self.bytes.len()).finish_non_exhaustive()
    }
}

/// A note on the case: text, a file, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNote {
    pub id: NoteId,
    pub incident: IncidentId,
    pub subject: String,
    pub text: String,
    pub attachment: Option<NoteAttachment>,
}

/// Who the CRM says we are (`WhoAmI`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrmIdentity {
    pub user_id: CrmPrincipalId,
    pub business_unit_id: Option<String>,
    pub organization_id: Option<String>,
}

/// Which kind of CRM an adapter talks to (for messages and the settings view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrmKind {
    Dataverse,
    Local,
}

/// Base64 length of `bytes` bytes: the size Dataverse compares with `maxuploadfilesize`.
pub fn base64_len(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(3) * 4
}

/// Everything the handoff, the screen pop and the connection check need from a CRM.
#[async_trait]
pub trait Crm: Send + Sync {
    fn kind(&self) -> CrmKind;

    /// Active contacts whose `emailaddress1`, `2` or `3` is `email` (case-insensitive).
    async fn find_contacts_by_email(&self, email: &EmailAddress) -> CrmResult<Vec<ContactRecord>>;
    async fn contact(&self, id: &ContactId) -> CrmResult<Option<ContactRecord>>;
    /// Creates the contact, or returns the existing one with that id.
    async fn create_contact(&self, contact: &NewContact) -> CrmResult<ContactRecord>;

    /// Creates the incident, or returns the existing one with that id (with its ticket number).
    async fn create_incident(&self, incident: &NewIncident) -> CrmResult<IncidentRecord>;
    async fn incident(&self, id: &IncidentId) -> CrmResult<Option<IncidentRecord>>;

    /// Records an email on the case; an activity with that id existing already is success.
    async fn add_email_activity(&self, activity: &NewEmailActivity) -> CrmResult<()>;
    /// Adds a note; a note with that id existing already is success.
    async fn add_note(&self, note: &NewNote) -> CrmResult<()>;
    /// Puts the case into the queue (moving it there if it sits in another one).
    async fn add_to_queue(&self, queue: &CrmQueueId, incident: &IncidentId) -> CrmResult<()>;

    /// The incident table's choice columns with their options.
    async fn incident_option_sets(&self) -> CrmResult<Vec<OptionSet>>;
    /// The org's attachment limit, compared with the Base64 length (`maxuploadfilesize`).
    async fn max_upload_bytes(&self) -> CrmResult<u64>;

    async fn who_am_i(&self) -> CrmResult<CrmIdentity>;
    /// The names of the privileges (`prvCreateIncident` ...) the user holds through its roles.
    async fn user_privileges(&self, user: &CrmPrincipalId) -> CrmResult<Vec<String>>;
    async fn queue_exists(&self, queue: &CrmQueueId) -> CrmResult<bool>;
    async fn owner_exists(&self, owner: &OwnerRef) -> CrmResult<bool>;
}

/// Mailroom's own record of each handoff (see `domain::crm::HandoffRecord`).
#[async_trait]
pub trait HandoffStore: Send + Sync {
    async fn get(&self, key: &HandoffKey) -> BackendResult<Option<HandoffRecord>>;
    /// Writes `record` if the stored version is still `record.version` (0: nothing stored yet),
    /// and returns it with the new version. Someone else's write in between is a `Conflict`.
    async fn put(&self, record: &HandoffRecord) -> BackendResult<HandoffRecord>;
    /// The most recently updated records first.
    async fn recent(&self, limit: usize) -> BackendResult<Vec<HandoffRecord>>;
}

/// Where the Dynamics settings are kept (the secret goes to the `SecretStore`).
#[async_trait]
pub trait CrmSettingsStore: Send + Sync {
    async fn load(&self) -> BackendResult<Option<crate::domain::crm::CrmSettings>>;
    async fn save(&self, settings: &crate::domain::crm::CrmSettings) -> BackendResult<()>;
}

/// Builds a Dataverse client for a connection (token source, HTTP client, limits).
pub trait CrmConnector: Send + Sync {
    fn connect(
        &self,
        connection: &crate::domain::crm::DataverseConnection,
        client_secret: SecretString,
    ) -> Arc<dyn Crm>;
}

/// An attachment's bytes, read back from the raw message.
#[derive(Clone)]
pub struct AttachmentContent {
    pub file_name: String,
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for AttachmentContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentContent").field("size", &self.bytes.len()).finish_non_exhaustive()
    }
}

/// The attachments of a stored message, in the order its `attachments` lists them.
#[async_trait]
pub trait AttachmentSource: Send + Sync {
    async fn attachments(&self, message: &StoredMessage) -> BackendResult<Vec<AttachmentContent>>;
}
