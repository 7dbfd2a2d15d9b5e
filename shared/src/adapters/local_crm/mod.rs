//! The Local CRM: contacts, cases with case numbers, email activities and notes in the embedded
//! data directory's SQLite database, so `mailroom serve` hands off without a Dynamics tenant.
//!
//! It keeps Dataverse's rules where they matter to the handoff (a case needs an existing contact,
//! the description holds 2,000 characters, choice columns take only their options, attachments
//! respect the upload limit), so a flow that works here works against Dynamics. The `browse`
//! functions are what the API exposes to read it.
//!
//! This module also holds the embedded and in-memory handoff stores (`state`) and the attachment
//! reader (`attachments`), which every deployment of the handoff uses.

mod attachments;
mod state;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

pub use self::attachments::MimeAttachments;
pub use self::state::{EmbeddedCrmState, MemoryCrmSettingsStore, MemoryHandoffStore};
use crate::adapters::embedded::{Db, EmbeddedBackend, sql_error};
use crate::domain::crm::{
    ContactId, ContactRecord, CrmPrincipalId, CrmQueueId, IncidentId, OptionItem, OptionSet, OwnerRef, TicketNumber,
    dataverse_len, limits,
};
use crate::domain::ids::EmailAddress;
use crate::ports::crm::{
    Crm, CrmError, CrmIdentity, CrmKind, CrmResult, EmailParty, IncidentRecord, NewContact, NewEmailActivity,
    NewIncident, NewNote, base64_len,
};
use crate::ports::{BackendError, Clock, SystemClock};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS crm_contacts (
    id TEXT PRIMARY KEY,
    first_name TEXT,
    last_name TEXT,
    email1 TEXT COLLATE NOCASE,
    email2 TEXT COLLATE NOCASE,
    email3 TEXT COLLATE NOCASE,
    created_on TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS crm_contacts_email1 ON crm_contacts(email1);
CREATE INDEX IF NOT EXISTS crm_contacts_email2 ON crm_contacts(email2);
CREATE INDEX IF NOT EXISTS crm_contacts_email3 ON crm_contacts(email3);
CREATE TABLE IF NOT EXISTS crm_cases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    ticket_number TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES crm_contacts(id),
    origin INTEGER NOT NULL,
    priority INTEGER,
    owner TEXT,
    email TEXT,
    properties TEXT NOT NULL,
    queue_id TEXT,
    created_on TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS crm_activities (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    case_id TEXT NOT NULL REFERENCES crm_cases(id),
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    incoming INTEGER NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS crm_activities_by_case ON crm_activities(case_id, seq);
CREATE TABLE IF NOT EXISTS crm_notes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    case_id TEXT NOT NULL REFERENCES crm_cases(id),
    subject TEXT NOT NULL,
    text TEXT NOT NULL,
    file_name TEXT,
    mime_type TEXT,
    body BLOB,
    created_on TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS crm_notes_by_case ON crm_notes(case_id, seq);
"#;

/// The option sets of the Local CRM's case table: Dataverse's standard ones plus the two custom
/// columns of the demo (the same as the emulator's), so ticket properties work the same way.
pub fn default_option_sets() -> Vec<OptionSet> {
    let set = |column: &str, options: &[(i32, &[&str])]| OptionSet {
        column: column.to_owned(),
        options: options
            .iter()
            .map(|(value, labels)| OptionItem { value: *value, labels: labels.iter().map(|l| l.to_string()).collect() })
            .collect(),
    };
    vec![
        set(
            "caseorigincode",
            &[(1, &["Phone"]), (2, &["Email"]), (3, &["Web"]), (2483, &["Facebook"]), (3986, &["Twitter"])],
        ),
        set("casetypecode", &[(1, &["Question"]), (2, &["Problem"]), (3, &["Request"])]),
        set(
            "new_productline",
            &[(100000000, &["Printers"]), (100000001, &["Scanners"]), (100000002, &["Accessories"])],
        ),
        set(
            "new_region",
            &[
                (100000000, &["North America", "Amérique du Nord"]),
                (100000001, &["Europe"]),
                (100000002, &["Asia Pacific", "Asie-Pacifique"]),
            ],
        ),
        set("prioritycode", &[(1, &["High"]), (2, &["Normal"]), (3, &["Low"])]),
        set("severitycode", &[(1, &["Default Value"])]),
    ]
}

/// The Local CRM on the embedded database.
pub struct LocalCrm {
    db: Arc<Db>,
    option_sets: Vec<OptionSet>,
    max_upload: u64,
    clock: Arc<dyn Clock>,
}

fn storage(operation: &'static str, e: BackendError) -> CrmError {
    CrmError::Storage { operation, source: e }
}

fn sql(operation: &'static str, e: rusqlite::Error) -> CrmError {
    storage(operation, sql_error(operation, e))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

fn invalid_property(operation: &'static str, property: &str, message: String) -> CrmError {
    CrmError::InvalidProperty { operation, property: property.to_owned(), code: "local".into(), message }
}

/// `CAS-01000-A1B2C3`: Dynamics' default pattern, numbered from 1000, with a suffix from the id.
fn ticket_number(seq: i64, id: &IncidentId) -> String {
    let hex = id.as_str().replace('-', "");
    let bytes = hex.as_bytes();
    let suffix: String = (0..6)
        .map(|i| {
            let n = u32::from(bytes[i * 2]) * 31 + u32::from(bytes[i * 2 + 1]);
            if i % 2 == 0 { (b'A' + (n % 26) as u8) as char } else { (b'0' + (n % 10) as u8) as char }
        })
        .collect();
    format!("CAS-{:05}-{suffix}", seq + 999)
}

fn contact_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContactRecord> {
    let id: String = r.get(0)?;
    let first: Option<String> = r.get(1)?;
    let last: Option<String> = r.get(2)?;
    let full = [first.as_deref(), last.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ");
    Ok(ContactRecord {
        id: ContactId::parse(&id).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        first_name: first,
        last_name: last,
        full_name: (!full.is_empty()).then_some(full),
        emails: [r.get(3)?, r.get(4)?, r.get(5)?],
        created_on: r.get::<_, String>(6).ok().and_then(|t| parse_time(&t)),
    })
}

const CONTACT_SELECT: &str = "SELECT id, first_name, last_name, email1, email2, email3, created_on FROM crm_contacts";

/// A case as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalCase {
    pub id: IncidentId,
    pub ticket_number: TicketNumber,
    pub title: String,
    pub customer_id: ContactId,
    pub customer_name: String,
    pub origin: i32,
    pub priority: Option<i32>,
    pub owner: Option<String>,
    pub queue_id: Option<String>,
    pub properties: serde_json::Value,
    pub created_on: String,
}

/// A case with everything on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalCaseDetail {
    #[serde(flatten)]
    pub case: LocalCase,
    pub description: String,
    pub customer: ContactRecord,
    pub activities: Vec<LocalActivity>,
    pub notes: Vec<LocalNote>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalActivity {
    pub id: String,
    pub subject: String,
    pub body: String,
    pub incoming: bool,
    pub from: String,
    pub recipients: Vec<String>,
    pub sent_at: String,
}

/// A note; the file itself is fetched separately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalNote {
    pub id: String,
    pub subject: String,
    pub text: String,
    pub file_name: Option<String>,
    pub mime_type: Option<String>,
    pub size: Option<u64>,
    pub created_on: String,
}

fn party_text(p: &EmailParty) -> String {
    match p {
        EmailParty::Contact(id, address) => format!("{address} (contact {id})"),
        EmailParty::Address(address) => address.to_string(),
    }
}

impl LocalCrm {
    /// Opens the Local CRM in the embedded backend's database (creating its tables).
    pub fn open(backend: &EmbeddedBackend) -> Result<Self, BackendError> {
        let db = backend.db().clone();
        db.lock().execute_batch(SCHEMA).map_err(|e| sql_error("create local CRM tables", e))?;
        Ok(Self {
            db,
            option_sets: default_option_sets(),
            max_upload: limits::DEFAULT_UPLOAD_BYTES,
            clock: Arc::new(SystemClock),
        })
    }

    /// Replaces the case table's choice columns (the standard ones should stay).
    pub fn with_option_sets(mut self, option_sets: Vec<OptionSet>) -> Self {
        self.option_sets = option_sets;
        self
    }

    /// The attachment limit (Base64 length), as an org's `maxuploadfilesize`.
    pub fn with_max_upload(mut self, bytes: u64) -> Self {
        self.max_upload = bytes;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn user_id() -> CrmPrincipalId {
        CrmPrincipalId::derive("mailroom:local-crm-user")
    }

    fn check_option(&self, operation: &'static str, column: &str, value: i32) -> CrmResult<()> {
        let Some(set) = self.option_sets.iter().find(|s| s.column == column) else {
            return Err(invalid_property(operation, column, format!("the case table has no column {column}")));
        };
        if set.options.iter().any(|o| o.value == value) {
            return Ok(());
        }
        let accepted = set.options.iter().map(|o| o.value.to_string()).collect::<Vec<_>>().join(",");
        Err(invalid_property(
            operation,
            column,
            format!("The value {value} of '{column}' is outside the valid range. Accepted Values: {accepted}."),
        ))
    }

    fn case_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(LocalCase, String)> {
        let conv = |e: crate::domain::ids::InvalidValue| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
        let properties: String = r.get(9)?;
        Ok((
            LocalCase {
                id: IncidentId::parse(&r.get::<_, String>(0)?).map_err(conv)?,
                ticket_number: TicketNumber::parse(&r.get::<_, String>(1)?).map_err(conv)?,
                title: r.get(2)?,
                customer_id: ContactId::parse(&r.get::<_, String>(4)?).map_err(conv)?,
                customer_name: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
                origin: r.get(5)?,
                priority: r.get(6)?,
                owner: r.get(7)?,
                queue_id: r.get(10)?,
                properties: serde_json::from_str(&properties).unwrap_or(serde_json::Value::Null),
                created_on: r.get(11)?,
            },
            r.get(3)?,
        ))
    }

    const CASE_SELECT: &'static str = "SELECT c.id, c.ticket_number, c.title, c.description, c.customer_id, c.origin, \
         c.priority, c.owner, c.email, c.properties, c.queue_id, c.created_on, \
         TRIM(COALESCE(p.first_name, '') || ' ' || COALESCE(p.last_name, '')) \
         FROM crm_cases c LEFT JOIN crm_contacts p ON p.id = c.customer_id";

    /// The newest cases first.
    pub fn list_cases(&self, limit: usize) -> Result<Vec<LocalCase>, BackendError> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare(&format!("{} ORDER BY c.seq DESC LIMIT ?1", Self::CASE_SELECT))
            .map_err(|e| sql_error("list cases", e))?;
        let rows = stmt
            .query_map([limit as i64], Self::case_row)
            .map_err(|e| sql_error("list cases", e))?
            .map(|r| r.map(|(c, _)| c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("list cases", e))?;
        Ok(rows)
    }

    /// A case by its id or its case number, with contact, emails and notes.
    pub fn case_detail(&self, id_or_ticket: &str) -> Result<Option<LocalCaseDetail>, BackendError> {
        let conn = self.db.lock();
        let key = id_or_ticket.trim();
        let found = conn
            .query_row(
                &format!("{} WHERE c.id = ?1 OR c.ticket_number = ?2", Self::CASE_SELECT),
                params![key.to_ascii_lowercase(), key.to_ascii_uppercase()],
                Self::case_row,
            )
            .optional()
            .map_err(|e| sql_error("read case", e))?;
        let Some((case, description)) = found else { return Ok(None) };
        let customer = conn
            .query_row(&format!("{CONTACT_SELECT} WHERE id = ?1"), [case.customer_id.as_str()], contact_row)
            .map_err(|e| sql_error("read case contact", e))?;
        let mut stmt = conn
            .prepare(
                "SELECT id, subject, body, incoming, sender, recipients, sent_at FROM crm_activities WHERE case_id = ?1 ORDER BY seq",
            )
            .map_err(|e| sql_error("read case emails", e))?;
        let activities = stmt
            .query_map([case.id.as_str()], |r| {
                Ok(LocalActivity {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    body: r.get(2)?,
                    incoming: r.get(3)?,
                    from: r.get(4)?,
                    recipients: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                    sent_at: r.get(6)?,
                })
            })
            .map_err(|e| sql_error("read case emails", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read case emails", e))?;
        let mut stmt = conn
            .prepare(
                "SELECT id, subject, text, file_name, mime_type, length(body), created_on FROM crm_notes WHERE case_id = ?1 ORDER BY seq",
            )
            .map_err(|e| sql_error("read case notes", e))?;
        let notes = stmt
            .query_map([case.id.as_str()], |r| {
                Ok(LocalNote {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    text: r.get(2)?,
                    file_name: r.get(3)?,
                    mime_type: r.get(4)?,
                    size: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
                    created_on: r.get(6)?,
                })
            })
            .map_err(|e| sql_error("read case notes", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read case notes", e))?;
        Ok(Some(LocalCaseDetail { case, description, customer, activities, notes }))
    }

    /// A note's file: (file name, MIME type, bytes).
    pub fn note_file(&self, note_id: &str) -> Result<Option<(String, String, Vec<u8>)>, BackendError> {
        let conn = self.db.lock();
        conn.query_row(
            "SELECT file_name, mime_type, body FROM crm_notes WHERE id = ?1 AND body IS NOT NULL",
            [note_id.trim().to_ascii_lowercase()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(|e| sql_error("read note file", e))
    }

    /// Contacts, newest first; with `email`, those carrying it.
    pub fn list_contacts(
        &self,
        email: Option<&EmailAddress>,
        limit: usize,
    ) -> Result<Vec<ContactRecord>, BackendError> {
        let conn = self.db.lock();
        let (sql_text, param) = match email {
            Some(e) => (
                format!(
                    "{CONTACT_SELECT} WHERE email1 = ?1 OR email2 = ?1 OR email3 = ?1 ORDER BY created_on DESC LIMIT ?2"
                ),
                e.as_str().to_owned(),
            ),
            None => (format!("{CONTACT_SELECT} WHERE ?1 = ?1 ORDER BY created_on DESC LIMIT ?2"), String::new()),
        };
        let mut stmt = conn.prepare(&sql_text).map_err(|e| sql_error("list contacts", e))?;
        let rows = stmt
            .query_map(params![param, limit as i64], contact_row)
            .map_err(|e| sql_error("list contacts", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("list contacts", e))?;
        Ok(rows)
    }

    fn read_contact(&self, id: &ContactId) -> CrmResult<Option<ContactRecord>> {
        let conn = self.db.lock();
        conn.query_row(&format!("{CONTACT_SELECT} WHERE id = ?1"), [id.as_str()], contact_row)
            .optional()
            .map_err(|e| sql("read contact", e))
    }

    fn read_incident(&self, id: &IncidentId) -> CrmResult<Option<IncidentRecord>> {
        let conn = self.db.lock();
        let row: Option<(String, String, String)> = conn
            .query_row("SELECT ticket_number, title, customer_id FROM crm_cases WHERE id = ?1", [id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(|e| sql("read case", e))?;
        Ok(row.map(|(ticket, title, customer)| IncidentRecord {
            id: id.clone(),
            ticket_number: TicketNumber::parse(&ticket).expect("stored ticket numbers are valid"),
            title: Some(title),
            customer: ContactId::parse(&customer).ok(),
        }))
    }

    fn case_exists(&self, operation: &'static str, id: &IncidentId) -> CrmResult<()> {
        if self.read_incident(id)?.is_none() {
            return Err(CrmError::NotFound {
                operation,
                code: "local".into(),
                message: format!("incident With Id = {id} Does Not Exist"),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Crm for LocalCrm {
    fn kind(&self) -> CrmKind {
        CrmKind::Local
    }

    async fn find_contacts_by_email(&self, email: &EmailAddress) -> CrmResult<Vec<ContactRecord>> {
        self.list_contacts(Some(email), 50).map_err(|e| storage("look up contacts", e))
    }

    async fn contact(&self, id: &ContactId) -> CrmResult<Option<ContactRecord>> {
        self.read_contact(id)
    }

    async fn create_contact(&self, contact: &NewContact) -> CrmResult<ContactRecord> {
        const OP: &str = "create contact";
        {
            let conn = self.db.lock();
            conn.execute(
                "INSERT OR IGNORE INTO crm_contacts (id, first_name, last_name, email1, created_on) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    contact.id.as_str(),
                    contact.first_name.as_deref(),
                    contact.last_name,
                    contact.email.as_str(),
                    time(self.clock.now())
                ],
            )
            .map_err(|e| sql(OP, e))?;
        }
        self.read_contact(&contact.id)?
            .ok_or_else(|| CrmError::Protocol { operation: OP, detail: "contact vanished".into() })
    }

    async fn create_incident(&self, incident: &NewIncident) -> CrmResult<IncidentRecord> {
        const OP: &str = "create incident";
        if let Some(existing) = self.read_incident(&incident.id)? {
            return Ok(existing);
        }
        if dataverse_len(&incident.description) > limits::DESCRIPTION {
            return Err(invalid_property(
                OP,
                "description",
                format!(
                    "The length of the 'description' attribute of the 'incident' entity exceeded the maximum allowed length of '{}'.",
                    limits::DESCRIPTION
                ),
            ));
        }
        self.check_option(OP, "caseorigincode", incident.origin)?;
        if let Some(p) = incident.priority {
            self.check_option(OP, "prioritycode", p)?;
        }
        for (column, value) in incident.properties.iter() {
            self.check_option(OP, column, value)?;
        }
        if self.read_contact(&incident.customer)?.is_none() {
            return Err(CrmError::NotFound {
                operation: OP,
                code: "local".into(),
                message: format!("contact With Id = {} Does Not Exist", incident.customer),
            });
        }
        let properties = serde_json::to_string(&incident.properties).expect("properties serialize");
        let owner = incident.owner.as_ref().map(|o: &OwnerRef| format!("{}:{}", o.kind.as_str(), o.id));
        let conn = self.db.lock();
        let tx = conn.unchecked_transaction().map_err(|e| sql(OP, e))?;
        let seq: i64 = tx
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM crm_cases", [], |r| r.get(0))
            .map_err(|e| sql(OP, e))?;
        let ticket = ticket_number(seq, &incident.id);
        tx.execute(
            "INSERT OR IGNORE INTO crm_cases (seq, id, ticket_number, title, description, customer_id, origin, priority, owner, email, properties, created_on)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                seq,
                incident.id.as_str(),
                ticket,
                crate::domain::crm::truncate_dataverse(&incident.title, limits::TITLE),
                incident.description,
                incident.customer.as_str(),
                incident.origin,
                incident.priority,
                owner,
                incident.email.as_ref().map(|e| e.as_str()),
                properties,
                time(self.clock.now())
            ],
        )
        .map_err(|e| sql(OP, e))?;
        tx.commit().map_err(|e| sql(OP, e))?;
        drop(conn);
        self.read_incident(&incident.id)?
            .ok_or_else(|| CrmError::Protocol { operation: OP, detail: "case vanished".into() })
    }

    async fn incident(&self, id: &IncidentId) -> CrmResult<Option<IncidentRecord>> {
        self.read_incident(id)
    }

    async fn add_email_activity(&self, activity: &NewEmailActivity) -> CrmResult<()> {
        const OP: &str = "add email to case";
        self.case_exists(OP, &activity.incident)?;
        let recipients: Vec<String> = activity.to.iter().chain(&activity.cc).map(party_text).collect();
        let conn = self.db.lock();
        conn.execute(
            "INSERT OR IGNORE INTO crm_activities (id, case_id, subject, body, incoming, sender, recipients, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                activity.id.as_str(),
                activity.incident.as_str(),
                crate::domain::crm::truncate_dataverse(&activity.subject, limits::EMAIL_SUBJECT),
                activity.body,
                activity.incoming,
                party_text(&activity.from),
                serde_json::to_string(&recipients).expect("strings serialize"),
                time(activity.sent_at)
            ],
        )
        .map_err(|e| sql(OP, e))?;
        Ok(())
    }

    async fn add_note(&self, note: &NewNote) -> CrmResult<()> {
        const OP: &str = "add note to case";
        self.case_exists(OP, &note.incident)?;
        if let Some(a) = &note.attachment
            && base64_len(a.bytes.len()) > self.max_upload
        {
            return Err(CrmError::Rejected {
                operation: OP,
                status: 400,
                code: "0x80044a02".into(),
                message: "Attachment file size is too big.".into(),
            });
        }
        let conn = self.db.lock();
        conn.execute(
            "INSERT OR IGNORE INTO crm_notes (id, case_id, subject, text, file_name, mime_type, body, created_on)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                note.id.as_str(),
                note.incident.as_str(),
                note.subject,
                note.text,
                note.attachment.as_ref().map(|a| a.file_name.as_str()),
                note.attachment.as_ref().map(|a| a.mime_type.as_str()),
                note.attachment.as_ref().map(|a| a.bytes.as_slice()),
                time(self.clock.now())
            ],
        )
        .map_err(|e| sql(OP, e))?;
        Ok(())
    }

    async fn add_to_queue(&self, queue: &CrmQueueId, incident: &IncidentId) -> CrmResult<()> {
        const OP: &str = "add case to queue";
        self.case_exists(OP, incident)?;
        let conn = self.db.lock();
        conn.execute("UPDATE crm_cases SET queue_id = ?1 WHERE id = ?2", params![queue.as_str(), incident.as_str()])
            .map_err(|e| sql(OP, e))?;
        Ok(())
    }

    async fn incident_option_sets(&self) -> CrmResult<Vec<OptionSet>> {
        Ok(self.option_sets.clone())
    }

    async fn max_upload_bytes(&self) -> CrmResult<u64> {
        Ok(self.max_upload)
    }

    async fn who_am_i(&self) -> CrmResult<CrmIdentity> {
        Ok(CrmIdentity { user_id: Self::user_id(), business_unit_id: None, organization_id: None })
    }

    async fn user_privileges(&self, _user: &CrmPrincipalId) -> CrmResult<Vec<String>> {
        // Mailroom owns the Local CRM: it may do everything the handoff needs.
        let all = crate::usecases::crm_settings::required_privileges(&crate::domain::crm::CrmSettings {
            default_queue_id: Some(CrmQueueId::derive("any")),
            default_owner: Some(OwnerRef { kind: Default::default(), id: Self::user_id() }),
            ..crate::domain::crm::CrmSettings::local_defaults(self.clock.now())
        });
        Ok(all.into_iter().map(|(p, _)| p.to_owned()).collect())
    }

    async fn queue_exists(&self, _queue: &CrmQueueId) -> CrmResult<bool> {
        // The Local CRM keeps no queue records: any queue id is recorded on the case as given.
        Ok(true)
    }

    async fn owner_exists(&self, _owner: &OwnerRef) -> CrmResult<bool> {
        Ok(true)
    }
}

/// The handoff on the embedded backend, as `mailroom serve` runs it: the Local CRM until an admin
/// saves Dynamics settings, the `handoff` queue and its dead-letter queue, secrets in the data
/// directory. Returns the service (run it with `usecases::handoff::run_worker`) and the Local CRM
/// (for the API's case views).
pub fn embedded_handoff_service(
    backend: &EmbeddedBackend,
) -> Result<(Arc<crate::usecases::handoff::HandoffService>, Arc<LocalCrm>), BackendError> {
    use crate::usecases::handoff::{HANDOFF_QUEUE, HandoffService};
    let local = Arc::new(LocalCrm::open(backend)?);
    let state = Arc::new(EmbeddedCrmState::open(backend)?);
    let secrets = Arc::new(crate::adapters::secrets::EmbeddedSecretStore::open(backend)?);
    let runtime = crate::usecases::crm_settings::CrmRuntime::new(
        state.clone(),
        secrets,
        Arc::new(crate::adapters::dataverse::DataverseConnector::with_defaults()),
        Some(local.clone() as Arc<dyn Crm>),
        Arc::new(SystemClock),
    );
    let service = HandoffService {
        runtime: Arc::new(runtime),
        store: state,
        interactions: Arc::new(backend.clone()),
        attachments: Some(Arc::new(MimeAttachments::new(Arc::new(backend.clone())))),
        queue: Arc::new(backend.queue(HANDOFF_QUEUE, crate::adapters::embedded::DEFAULT_MAX_RECEIVES)),
        dead_letters: Arc::new(backend.dead_letter_queue(HANDOFF_QUEUE)),
        clock: Arc::new(SystemClock),
    };
    Ok((Arc::new(service), local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_numbers_follow_the_dynamics_pattern() {
        let id = IncidentId::derive("x");
        let t = ticket_number(1, &id);
        assert!(t.starts_with("CAS-01000-"), "{t}");
        let suffix: Vec<char> = t[10..].chars().collect();
        assert_eq!(suffix.len(), 6);
        assert!(suffix.iter().enumerate().all(|(i, c)| if i % 2 == 0 {
            c.is_ascii_uppercase()
        } else {
            c.is_ascii_digit()
        }));
    }
}
