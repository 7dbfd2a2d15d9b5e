//! The Dataverse Web API (v9.2) adapter: the CRM port on Dynamics 365 Customer Service.
//!
//! - OAuth 2.0 client credentials through `AccessTokenSource` (cached, renewed early); on a 401
//!   the token is dropped and the call retried once with a fresh one.
//! - Every request carries the OData headers; `$filter` literals are escaped and percent-encoded.
//! - 429: waits what `Retry-After` says (or backs off), up to a limit, then reports the wait to
//!   the caller so the queue redelivers later; 5xx and network failures back off exponentially.
//!   Every request the handoff makes is safe to repeat, because records are created with ids
//!   Mailroom chose: a create that already happened answers "duplicate key" and is read back.
//! - At most `max_concurrency` requests in flight per client (service protection trips at 52).
//! - A 403 names the missing privilege; a 400 names the property, with Dataverse's own words.
//!
//! Logs carry the operation, status and attempt; never bodies, names, addresses or tokens.

mod dynamodb;
mod odata;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use self::dynamodb::{DynamoCrmSettingsStore, DynamoHandoffStore};
pub use self::odata::{encode_query_value, id_from_entity_id, string_literal};
use crate::adapters::microsoft_identity::{ClientCredentials, ClientCredentialsTokens};
use crate::domain::crm::{
    ContactId, ContactRecord, CrmPrincipalId, CrmQueueId, DataverseConnection, IncidentId, OptionItem, OptionSet,
    OwnerKind, OwnerRef, TicketNumber, limits, truncate_dataverse,
};
use crate::domain::ids::EmailAddress;
use crate::ports::crm::{
    Crm, CrmConnector, CrmError, CrmIdentity, CrmKind, CrmResult, EmailParty, IncidentRecord, NewContact,
    NewEmailActivity, NewIncident, NewNote,
};
use crate::ports::identity::{AccessTokenSource, TokenError};

/// Limits and retry behaviour of one client.
#[derive(Debug, Clone)]
pub struct DataverseOptions {
    /// Requests in flight at once (the platform refuses more than 52 per user).
    pub max_concurrency: usize,
    /// Attempts per request for 429, 5xx and network failures.
    pub max_attempts: u32,
    /// First backoff after a 5xx or a network failure (doubled each time, with jitter).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is not slept through: the error carries it so the work
    /// queue redelivers later instead of holding a Lambda for minutes.
    pub max_retry_after: Duration,
    /// How long option-set metadata and the upload limit are reused.
    pub metadata_ttl: Duration,
}

impl Default for DataverseOptions {
    fn default() -> Self {
        Self {
            max_concurrency: 8,
            max_attempts: 5,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(16),
            max_retry_after: Duration::from_secs(30),
            metadata_ttl: Duration::from_secs(300),
        }
    }
}

/// The path of the Web API under an environment URL.
pub const API_PATH: &str = "/api/data/v9.2";

const CONTACT_COLUMNS: &str =
    "contactid,firstname,lastname,fullname,emailaddress1,emailaddress2,emailaddress3,createdon";
const INCIDENT_COLUMNS: &str = "incidentid,ticketnumber,title,_customerid_value";

/// A Dataverse Web API client for one environment and one application user.
pub struct DataverseClient {
    api: String,
    http: reqwest::Client,
    tokens: Arc<dyn AccessTokenSource>,
    limit: Semaphore,
    options: DataverseOptions,
    option_sets: Mutex<Option<(Instant, Vec<OptionSet>)>>,
    upload_limit: Mutex<Option<(Instant, u64)>>,
}

/// A successful answer.
struct Answer {
    status: StatusCode,
    entity_id: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self, operation: &'static str) -> CrmResult<Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| CrmError::Protocol { operation, detail: format!("the body is not JSON: {e}") })
    }
}

/// What one request failed with, before the client decides whether to try again.
enum Failure {
    Retry { wait: Option<Duration>, cause: String },
    Fatal(CrmError),
}

fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    // Seconds, possibly fractional (Graph sends "2.128"); HTTP dates are not used by Dataverse.
    let seconds: f64 = value.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

fn jitter(max: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    max.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

fn protocol(operation: &'static str, detail: impl Into<String>) -> CrmError {
    CrmError::Protocol { operation, detail: detail.into() }
}

fn str_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn contact_from(v: &Value, operation: &'static str) -> CrmResult<ContactRecord> {
    let id = str_field(v, "contactid").ok_or_else(|| protocol(operation, "a contact without contactid"))?;
    Ok(ContactRecord {
        id: ContactId::parse(&id).map_err(|e| protocol(operation, e.to_string()))?,
        first_name: str_field(v, "firstname"),
        last_name: str_field(v, "lastname"),
        full_name: str_field(v, "fullname"),
        emails: [str_field(v, "emailaddress1"), str_field(v, "emailaddress2"), str_field(v, "emailaddress3")],
        created_on: str_field(v, "createdon")
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
    })
}

fn incident_from(v: &Value, operation: &'static str) -> CrmResult<IncidentRecord> {
    let id = str_field(v, "incidentid").ok_or_else(|| protocol(operation, "an incident without incidentid"))?;
    let ticket = str_field(v, "ticketnumber").ok_or_else(|| protocol(operation, "an incident without ticketnumber"))?;
    Ok(IncidentRecord {
        id: IncidentId::parse(&id).map_err(|e| protocol(operation, e.to_string()))?,
        ticket_number: TicketNumber::parse(&ticket).map_err(|e| protocol(operation, e.to_string()))?,
        title: str_field(v, "title"),
        customer: str_field(v, "_customerid_value").and_then(|c| ContactId::parse(&c).ok()),
    })
}

/// Plain text as the HTML an email activity's `description` holds.
fn text_to_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("<br>"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

fn party(mask: u8, p: &EmailParty) -> Value {
    match p {
        EmailParty::Contact(id, address) => json!({
            "participationtypemask": mask,
            "partyid_contact@odata.bind": format!("/contacts({id})"),
            "addressused": address.as_str(),
        }),
        EmailParty::Address(address) => json!({ "participationtypemask": mask, "addressused": address.as_str() }),
    }
}

impl DataverseClient {
    pub fn new(
        environment_url: &str,
        tokens: Arc<dyn AccessTokenSource>,
        http: reqwest::Client,
        options: DataverseOptions,
    ) -> Self {
        Self {
            api: format!("{}{API_PATH}", environment_url.trim_end_matches('/')),
            http,
            tokens,
            limit: Semaphore::new(options.max_concurrency.max(1)),
            options,
            option_sets: Mutex::new(None),
            upload_limit: Mutex::new(None),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.options.base_backoff.saturating_mul(1u32 << attempt.min(16));
        let capped = exp.min(self.options.max_backoff);
        capped / 2 + jitter(capped / 2)
    }

    /// One request with the retry policy: `path` is relative to the API root and already carries
    /// its encoded query, or is an absolute `@odata.nextLink`.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        prefer: Option<&str>,
    ) -> CrmResult<Answer> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{}", self.api, path.trim_start_matches('/'))
        };
        let payload = body.map(|b| serde_json::to_vec(b).expect("JSON values serialize"));
        let mut refreshed = false;
        let mut last_wait = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.attempt(operation, &method, &url, payload.as_deref(), body, prefer, &mut refreshed).await;
            let (wait, cause) = match result {
                Ok(answer) => return Ok(answer),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry { wait, cause }) => (wait, cause),
            };
            last_wait = wait.or(last_wait);
            if let Some(w) = wait
                && w > self.options.max_retry_after
            {
                warn!(
                    operation,
                    retry_after_ms = w.as_millis() as u64,
                    "Dataverse asks for a long pause; leaving the retry to the queue"
                );
                return Err(CrmError::Unavailable { operation, retry_after: Some(w), source: cause.into() });
            }
            if attempt >= self.options.max_attempts {
                return Err(CrmError::Unavailable { operation, retry_after: last_wait, source: cause.into() });
            }
            let pause = wait.unwrap_or_else(|| self.backoff(attempt - 1));
            warn!(operation, attempt, pause_ms = pause.as_millis() as u64, cause = %cause, "Dataverse call will be retried");
            tokio::time::sleep(pause).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        operation: &'static str,
        method: &Method,
        url: &str,
        payload: Option<&[u8]>,
        sent: Option<&Value>,
        prefer: Option<&str>,
        refreshed: &mut bool,
    ) -> Result<Answer, Failure> {
        // Held for the request only, never across a backoff sleep.
        let _permit = self.limit.acquire().await.expect("the semaphore is never closed");
        let token = match self.tokens.access_token().await {
            Ok(t) => t,
            Err(TokenError::Refused { code, description }) => {
                return Err(Failure::Fatal(CrmError::SignInRefused { operation, code, description }));
            }
            Err(e @ TokenError::Unavailable { .. }) => {
                return Err(Failure::Retry { wait: None, cause: format!("token endpoint: {}", error_chain(&e)) });
            }
        };
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(token.expose())
            .header("Accept", "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0");
        if *method == Method::GET {
            request = request.header("If-None-Match", "null");
        }
        if let Some(p) = prefer {
            request = request.header("Prefer", p);
        }
        if let Some(bytes) = payload {
            request = request.header("Content-Type", "application/json; charset=utf-8").body(bytes.to_vec());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(Failure::Retry { wait: None, cause: format!("request failed: {}", error_chain(&e)) }),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                return Err(Failure::Retry {
                    wait: None,
                    cause: format!("reading the answer failed: {}", error_chain(&e)),
                });
            }
        };
        debug!(operation, status = status.as_u16(), "Dataverse answered");
        if status.is_success() {
            let entity_id = headers.get("OData-EntityId").and_then(|v| v.to_str().ok()).map(str::to_owned);
            return Ok(Answer { status, entity_id, body });
        }
        match status.as_u16() {
            401 if !*refreshed => {
                // The token may have been revoked or expired early: one retry with a fresh one.
                *refreshed = true;
                self.tokens.invalidate();
                Err(Failure::Retry { wait: Some(Duration::ZERO), cause: "401 with a cached token".into() })
            }
            401 => {
                let (_, message) = odata::parse_error(401, &body);
                Err(Failure::Fatal(CrmError::Unauthorized { operation, message }))
            }
            429 => {
                let (code, message) = odata::parse_error(429, &body);
                Err(Failure::Retry { wait: parse_retry_after(&headers), cause: format!("429 {code}: {message}") })
            }
            500 | 502 | 503 | 504 => {
                let (code, message) = odata::parse_error(status.as_u16(), &body);
                Err(Failure::Retry {
                    wait: parse_retry_after(&headers),
                    cause: format!("{} {code}: {message}", status.as_u16()),
                })
            }
            s => Err(Failure::Fatal(odata::error_for(operation, s, &body, sent))),
        }
    }

    /// GET of a single record; a 404 is `None`.
    async fn get_one(&self, operation: &'static str, path: &str) -> CrmResult<Option<Value>> {
        match self.call(operation, Method::GET, path, None, None).await {
            Ok(answer) => answer.json(operation).map(Some),
            Err(CrmError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GET of a collection, following `@odata.nextLink` verbatim.
    async fn get_all(&self, operation: &'static str, path: &str, max: usize) -> CrmResult<Vec<Value>> {
        let mut rows = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(p) = next.take() {
            let page = self.call(operation, Method::GET, &p, None, None).await?.json(operation)?;
            let Some(values) = page.get("value").and_then(Value::as_array) else {
                return Err(protocol(operation, "a collection without value"));
            };
            rows.extend(values.iter().cloned());
            if rows.len() < max {
                next = str_field(&page, "@odata.nextLink");
            }
        }
        rows.truncate(max);
        Ok(rows)
    }

    /// POST that creates a record with an id we chose; `Ok(false)` when it existed already.
    async fn create(&self, operation: &'static str, set: &str, body: &Value, expected_id: &str) -> CrmResult<bool> {
        match self.call(operation, Method::POST, set, Some(body), None).await {
            Ok(answer) => {
                let id = answer.entity_id.as_deref().and_then(id_from_entity_id);
                match id {
                    Some(id) if id == expected_id => Ok(true),
                    Some(other) => Err(protocol(operation, format!("created {other} instead of {expected_id}"))),
                    None if answer.status == StatusCode::NO_CONTENT => {
                        Err(protocol(operation, "no OData-EntityId header"))
                    }
                    None => Ok(true),
                }
            }
            Err(CrmError::Rejected { code, .. }) if odata::is_duplicate_key(&code) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn contact_by_id(&self, id: &ContactId) -> CrmResult<Option<ContactRecord>> {
        let path = format!("contacts({id}){}", odata::query(&[("$select", CONTACT_COLUMNS)]));
        self.get_one("read contact", &path).await?.map(|v| contact_from(&v, "read contact")).transpose()
    }

    async fn incident_by_id(&self, id: &IncidentId) -> CrmResult<Option<IncidentRecord>> {
        let path = format!("incidents({id}){}", odata::query(&[("$select", INCIDENT_COLUMNS)]));
        self.get_one("read incident", &path).await?.map(|v| incident_from(&v, "read incident")).transpose()
    }

    async fn fetch_option_sets(&self) -> CrmResult<Vec<OptionSet>> {
        const OP: &str = "read option sets";
        let path = format!(
            "EntityDefinitions(LogicalName='incident')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata{}",
            odata::query(&[("$select", "LogicalName"), ("$expand", "OptionSet($select=Options)")])
        );
        let rows = self.get_all(OP, &path, usize::MAX).await?;
        let mut sets = Vec::new();
        for row in rows {
            let Some(column) = str_field(&row, "LogicalName") else { continue };
            let options = row
                .pointer("/OptionSet/Options")
                .and_then(Value::as_array)
                .map(|opts| {
                    opts.iter()
                        .filter_map(|o| {
                            let value = i32::try_from(o.get("Value")?.as_i64()?).ok()?;
                            let mut labels: Vec<String> = Vec::new();
                            if let Some(l) = o.pointer("/Label/UserLocalizedLabel/Label").and_then(Value::as_str) {
                                labels.push(l.to_owned());
                            }
                            for l in o.pointer("/Label/LocalizedLabels").and_then(Value::as_array).into_iter().flatten()
                            {
                                if let Some(text) = l.get("Label").and_then(Value::as_str)
                                    && !labels.iter().any(|x| x == text)
                                {
                                    labels.push(text.to_owned());
                                }
                            }
                            Some(OptionItem { value, labels })
                        })
                        .collect()
                })
                .unwrap_or_default();
            sets.push(OptionSet { column, options });
        }
        sets.sort_by(|a, b| a.column.cmp(&b.column));
        Ok(sets)
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[async_trait]
impl Crm for DataverseClient {
    fn kind(&self) -> CrmKind {
        CrmKind::Dataverse
    }

    async fn find_contacts_by_email(&self, email: &EmailAddress) -> CrmResult<Vec<ContactRecord>> {
        const OP: &str = "look up contacts";
        let literal = string_literal(email.as_str());
        let filter = format!(
            "statecode eq 0 and (emailaddress1 eq {literal} or emailaddress2 eq {literal} or emailaddress3 eq {literal})"
        );
        let path = format!(
            "contacts{}",
            odata::query(&[
                ("$select", CONTACT_COLUMNS),
                ("$filter", &filter),
                ("$orderby", "createdon asc"),
                ("$top", "50"),
            ])
        );
        self.get_all(OP, &path, 50).await?.iter().map(|v| contact_from(v, OP)).collect()
    }

    async fn contact(&self, id: &ContactId) -> CrmResult<Option<ContactRecord>> {
        self.contact_by_id(id).await
    }

    async fn create_contact(&self, contact: &NewContact) -> CrmResult<ContactRecord> {
        const OP: &str = "create contact";
        let mut body = Map::new();
        body.insert("contactid".into(), json!(contact.id.as_str()));
        if let Some(first) = &contact.first_name {
            body.insert("firstname".into(), json!(truncate_dataverse(first, limits::NAME_PART)));
        }
        body.insert("lastname".into(), json!(truncate_dataverse(&contact.last_name, limits::NAME_PART)));
        body.insert("emailaddress1".into(), json!(contact.email.as_str()));
        self.create(OP, "contacts", &Value::Object(body), contact.id.as_str()).await?;
        self.contact_by_id(&contact.id).await?.ok_or_else(|| protocol(OP, "the contact cannot be read back"))
    }

    async fn create_incident(&self, incident: &NewIncident) -> CrmResult<IncidentRecord> {
        const OP: &str = "create incident";
        let mut body = Map::new();
        body.insert("incidentid".into(), json!(incident.id.as_str()));
        body.insert("title".into(), json!(truncate_dataverse(&incident.title, limits::TITLE)));
        body.insert("description".into(), json!(incident.description));
        body.insert("caseorigincode".into(), json!(incident.origin));
        if let Some(p) = incident.priority {
            body.insert("prioritycode".into(), json!(p));
        }
        let contact = format!("/contacts({})", incident.customer);
        body.insert("customerid_contact@odata.bind".into(), json!(contact));
        body.insert("primarycontactid@odata.bind".into(), json!(contact));
        if let Some(owner) = &incident.owner {
            let set = match owner.kind {
                OwnerKind::Systemuser => "systemusers",
                OwnerKind::Team => "teams",
            };
            body.insert("ownerid@odata.bind".into(), json!(format!("/{set}({})", owner.id)));
        }
        if let Some(email) = &incident.email {
            body.insert("emailaddress".into(), json!(truncate_dataverse(email.as_str(), 100)));
        }
        for (column, value) in incident.properties.iter() {
            body.insert(column.to_owned(), json!(value));
        }
        let body = Value::Object(body);
        let path = format!("incidents{}", odata::query(&[("$select", INCIDENT_COLUMNS)]));
        match self.call(OP, Method::POST, &path, Some(&body), Some("return=representation")).await {
            Ok(answer) if answer.status == StatusCode::CREATED => incident_from(&answer.json(OP)?, OP),
            // The server ignored the preference: read it back.
            Ok(_) => {
                self.incident_by_id(&incident.id).await?.ok_or_else(|| protocol(OP, "the incident cannot be read back"))
            }
            Err(CrmError::Rejected { code, .. }) if odata::is_duplicate_key(&code) => {
                debug!(operation = OP, "incident exists already (a retried handoff); reading it back");
                self.incident_by_id(&incident.id).await?.ok_or_else(|| protocol(OP, "duplicate key, yet no incident"))
            }
            Err(e) => Err(e),
        }
    }

    async fn incident(&self, id: &IncidentId) -> CrmResult<Option<IncidentRecord>> {
        self.incident_by_id(id).await
    }

    async fn add_email_activity(&self, activity: &NewEmailActivity) -> CrmResult<()> {
        let mut parties = vec![party(1, &activity.from)];
        parties.extend(activity.to.iter().map(|p| party(2, p)));
        parties.extend(activity.cc.iter().map(|p| party(3, p)));
        let body = json!({
            "activityid": activity.id.as_str(),
            "subject": truncate_dataverse(&activity.subject, limits::EMAIL_SUBJECT),
            "description": text_to_html(&activity.body),
            "directioncode": !activity.incoming,
            "regardingobjectid_incident_email@odata.bind": format!("/incidents({})", activity.incident),
            "email_activity_parties": parties,
        });
        self.create("add email to case", "emails", &body, activity.id.as_str()).await.map(|_| ())
    }

    async fn add_note(&self, note: &NewNote) -> CrmResult<()> {
        let mut body = Map::new();
        body.insert("annotationid".into(), json!(note.id.as_str()));
        body.insert("subject".into(), json!(truncate_dataverse(&note.subject, limits::NOTE_SUBJECT)));
        body.insert("notetext".into(), json!(note.text));
        body.insert("objectid_incident@odata.bind".into(), json!(format!("/incidents({})", note.incident)));
        if let Some(a) = &note.attachment {
            body.insert("filename".into(), json!(truncate_dataverse(&a.file_name, limits::FILE_NAME)));
            body.insert("mimetype".into(), json!(truncate_dataverse(&a.mime_type, 256)));
            body.insert("documentbody".into(), json!(base64::engine::general_purpose::STANDARD.encode(&a.bytes)));
        }
        self.create("add note to case", "annotations", &Value::Object(body), note.id.as_str()).await.map(|_| ())
    }

    async fn add_to_queue(&self, queue: &CrmQueueId, incident: &IncidentId) -> CrmResult<()> {
        const OP: &str = "add case to queue";
        let body = json!({
            "Target": { "@odata.type": "Microsoft.Dynamics.CRM.incident", "incidentid": incident.as_str() }
        });
        let path = format!("queues({queue})/Microsoft.Dynamics.CRM.AddToQueue");
        let answer = self.call(OP, Method::POST, &path, Some(&body), None).await?;
        answer.json(OP)?.get("QueueItemId").ok_or_else(|| protocol(OP, "no QueueItemId in the answer"))?;
        Ok(())
    }

    async fn incident_option_sets(&self) -> CrmResult<Vec<OptionSet>> {
        if let Some((at, sets)) = self.option_sets.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && at.elapsed() < self.options.metadata_ttl
        {
            return Ok(sets.clone());
        }
        let sets = self.fetch_option_sets().await?;
        *self.option_sets.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), sets.clone()));
        Ok(sets)
    }

    async fn max_upload_bytes(&self) -> CrmResult<u64> {
        const OP: &str = "read upload limit";
        if let Some((at, limit)) = *self.upload_limit.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < self.options.metadata_ttl
        {
            return Ok(limit);
        }
        let path = format!("organizations{}", odata::query(&[("$select", "maxuploadfilesize")]));
        let rows = self.get_all(OP, &path, 1).await?;
        let limit = rows
            .first()
            .and_then(|r| r.get("maxuploadfilesize"))
            .and_then(Value::as_u64)
            .unwrap_or(limits::DEFAULT_UPLOAD_BYTES);
        *self.upload_limit.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), limit));
        Ok(limit)
    }

    async fn who_am_i(&self) -> CrmResult<CrmIdentity> {
        const OP: &str = "who am I";
        let v = self.call(OP, Method::GET, "WhoAmI", None, None).await?.json(OP)?;
        let user = str_field(&v, "UserId").ok_or_else(|| protocol(OP, "no UserId"))?;
        Ok(CrmIdentity {
            user_id: CrmPrincipalId::parse(&user).map_err(|e| protocol(OP, e.to_string()))?,
            business_unit_id: str_field(&v, "BusinessUnitId"),
            organization_id: str_field(&v, "OrganizationId"),
        })
    }

    async fn user_privileges(&self, user: &CrmPrincipalId) -> CrmResult<Vec<String>> {
        const OP: &str = "read privileges";
        let path = format!("systemusers({user})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()");
        let v = self.call(OP, Method::GET, &path, None, None).await?.json(OP)?;
        let privileges = v
            .get("RolePrivileges")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol(OP, "no RolePrivileges"))?
            .iter()
            .filter_map(|p| str_field(p, "PrivilegeName"))
            .collect();
        Ok(privileges)
    }

    async fn queue_exists(&self, queue: &CrmQueueId) -> CrmResult<bool> {
        let path = format!("queues({queue}){}", odata::query(&[("$select", "queueid")]));
        Ok(self.get_one("read queue", &path).await?.is_some())
    }

    async fn owner_exists(&self, owner: &OwnerRef) -> CrmResult<bool> {
        let path = match owner.kind {
            OwnerKind::Systemuser => {
                format!("systemusers({}){}", owner.id, odata::query(&[("$select", "systemuserid")]))
            }
            OwnerKind::Team => format!("teams({}){}", owner.id, odata::query(&[("$select", "teamid")])),
        };
        Ok(self.get_one("read owner", &path).await?.is_some())
    }
}

/// Builds Dataverse clients from saved connection settings (one HTTP client shared by all).
pub struct DataverseConnector {
    http: reqwest::Client,
    options: DataverseOptions,
}

impl DataverseConnector {
    pub fn new(http: reqwest::Client, options: DataverseOptions) -> Self {
        Self { http, options }
    }

    /// With the time-outs every Microsoft call should have and the default limits.
    pub fn with_defaults() -> Self {
        Self::new(ClientCredentialsTokens::default_http(), DataverseOptions::default())
    }
}

impl CrmConnector for DataverseConnector {
    fn connect(&self, connection: &DataverseConnection, client_secret: SecretString) -> Arc<dyn Crm> {
        let tokens = ClientCredentialsTokens::new(
            ClientCredentials {
                authority: connection.authority.clone(),
                tenant: connection.tenant.clone(),
                client_id: connection.client_id.clone(),
                client_secret,
                scope: connection.scope(),
            },
            self.http.clone(),
        );
        Arc::new(DataverseClient::new(
            &connection.environment_url,
            Arc::new(tokens),
            self.http.clone(),
            self.options.clone(),
        ))
    }
}

/// Where the AWS handoff's resources are (the handoff function's and the API function's
/// environment, set by `template.yaml`).
#[derive(Debug, Clone)]
pub struct AwsHandoffSettings {
    /// The state table (`MAILROOM_TABLE`).
    pub table: String,
    /// The raw-mail bucket, for customer attachments (`MAILROOM_RAW_BUCKET`).
    pub raw_bucket: String,
    /// `MAILROOM_HANDOFF_QUEUE_URL` and `MAILROOM_HANDOFF_DLQ_URL`.
    pub queue_url: String,
    pub dead_letter_url: String,
    /// Secrets Manager prefix of this deployment (`MAILROOM_SECRETS_PREFIX`).
    pub secrets_prefix: String,
}

/// The handoff on AWS: settings and handoff records in DynamoDB, the client secret in Secrets
/// Manager, transcripts from the state table, attachments from S3, the SQS handoff queue. No Local
/// CRM: until an admin saves Dynamics settings, handoffs are parked with that reason.
pub fn aws_handoff_service(
    config: &aws_config::SdkConfig,
    settings: &AwsHandoffSettings,
) -> crate::usecases::handoff::HandoffService {
    use crate::adapters::aws::{DynamoIngestStore, S3RawStore, SqsWorkQueue, endpoint_overridden, s3_client};
    use crate::adapters::local_crm::MimeAttachments;
    use crate::ports::SystemClock;
    let dynamodb = aws_sdk_dynamodb::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);
    let runtime = crate::usecases::crm_settings::CrmRuntime::new(
        Arc::new(DynamoCrmSettingsStore::new(dynamodb.clone(), &settings.table)),
        Arc::new(crate::adapters::secrets::SecretsManagerStore::from_sdk_config(config, &settings.secrets_prefix)),
        Arc::new(DataverseConnector::with_defaults()),
        None,
        Arc::new(SystemClock),
    );
    let raw = Arc::new(S3RawStore::new(s3_client(config, endpoint_overridden()), &settings.raw_bucket));
    crate::usecases::handoff::HandoffService {
        runtime: Arc::new(runtime),
        store: Arc::new(DynamoHandoffStore::new(dynamodb.clone(), &settings.table)),
        interactions: Arc::new(DynamoIngestStore::new(dynamodb, &settings.table)),
        attachments: Some(Arc::new(MimeAttachments::new(raw))),
        queue: Arc::new(SqsWorkQueue::new(sqs.clone(), &settings.queue_url)),
        dead_letters: Arc::new(SqsWorkQueue::new(sqs, &settings.dead_letter_url)),
        clock: Arc::new(SystemClock),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_possibly_fractional() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(reqwest::header::RETRY_AFTER, "2.5".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(2500)));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn email_bodies_become_safe_html() {
        assert_eq!(text_to_html("a < b & \"c\"\r\nnext"), "a &lt; b &amp; &quot;c&quot;<br>next");
    }
}
