//! Dynamics settings and the connection check (admin API), and the runtime that turns the saved
//! settings into a connected CRM for the handoff.
//!
//! The client secret is write-only: it goes to the `SecretStore` and is never returned. The three
//! classic troubleshooting cases are caught when the admin saves or verifies, not at the first
//! failed handoff: no default queue (cases would land unassigned), a missing privilege (named,
//! with what it is needed for), and ticket properties Dataverse would reject (checked against the
//! option-set metadata, labels mapped to their values).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use crate::domain::crm::{CrmBackend, CrmSettings, DataverseConnection};
use crate::domain::crm::{
    CrmPrincipalId, CrmQueueId, OptionSet, OwnerKind, OwnerRef, PRIORITY_NORMAL, PropertyProblem, TicketProperties,
    TicketPropertyInput, recheck_ticket_properties, resolve_ticket_properties,
};
use crate::domain::mailbox::{SecretName, check_secret_value};
use crate::ports::crm::{Crm, CrmConnector, CrmError, CrmKind, CrmSettingsStore};
use crate::ports::secrets::SecretStore;
use crate::ports::{BackendError, Clock};

/// The public Microsoft identity platform.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Where the Dataverse client secret is kept in the `SecretStore`.
pub fn client_secret_name() -> SecretName {
    SecretName::parse("crm/dataverse/client-secret").expect("a valid secret name")
}

/// What the admin API accepts (PUT: the whole settings; an omitted `client_secret` keeps the
/// stored one). Strings are parsed here so each error names its field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmSettingsInput {
    /// `local` (default) or `dataverse`.
    #[serde(default)]
    pub backend: Option<CrmBackend>,
    pub environment_url: Option<String>,
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub authority: Option<String>,
    pub default_queue_id: Option<String>,
    pub default_owner_id: Option<String>,
    /// `systemuser` (default) or `team`.
    pub default_owner_type: Option<String>,
    pub default_priority: Option<i64>,
    pub map_mailroom_priority: Option<bool>,
    /// Column logical name to an option value or an unambiguous label.
    pub ticket_properties: Option<BTreeMap<String, TicketPropertyInput>>,
}

/// The settings as the admin API shows them: never the secret, only whether one is stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrmSettingsView {
    pub backend: CrmBackend,
    pub environment_url: Option<String>,
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_set: bool,
    pub authority: Option<String>,
    pub default_queue_id: Option<CrmQueueId>,
    pub default_owner_id: Option<CrmPrincipalId>,
    pub default_owner_type: Option<OwnerKind>,
    pub default_priority: i32,
    pub map_mailroom_priority: bool,
    pub ticket_properties: TicketProperties,
    pub revision: u64,
    pub updated_at: DateTime<Utc>,
    /// Problems a save does not refuse but a handoff would suffer from (no default queue).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A field is missing or malformed (HTTP 422, naming the field).
    #[error("{field}: {problem}")]
    Invalid { field: &'static str, problem: String },
    /// Ticket properties or the default priority that Dataverse would reject (HTTP 422, field
    /// `ticket_properties` or `default_priority`).
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Properties { field: &'static str, problems: Vec<PropertyProblem> },
    /// The option-set metadata could not be read to validate them (HTTP 502 for a refusal, 503
    /// when transient).
    #[error("cannot validate {field} against Dynamics")]
    CannotValidate {
        field: &'static str,
        #[source]
        source: CrmError,
    },
    /// The settings or secret store failed (HTTP 503 when transient, else 500).
    #[error("the settings could not be read or saved")]
    Store(#[from] BackendError),
}

/// Why no CRM can be used right now.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "no CRM is configured: save the Dynamics settings (environment URL, tenant, client id, client secret) first"
    )]
    NotConfigured,
    #[error("the Dynamics client secret is not stored: save it with the settings")]
    SecretMissing,
    #[error("the CRM settings could not be read")]
    Store(#[from] BackendError),
}

impl RuntimeError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_transient())
    }
}

/// A connected CRM with the settings it was built from.
#[derive(Clone)]
pub struct ActiveCrm {
    pub crm: Arc<dyn Crm>,
    pub settings: CrmSettings,
}

/// Turns the saved settings into a connected CRM, rebuilding the client only when the settings
/// change (the client holds the token cache and the concurrency limit).
pub struct CrmRuntime {
    pub settings: Arc<dyn CrmSettingsStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub connector: Arc<dyn CrmConnector>,
    /// The Local CRM, where this deployment has one (the embedded backend).
    pub local: Option<Arc<dyn Crm>>,
    pub clock: Arc<dyn Clock>,
    cache: Mutex<Option<(u64, Arc<dyn Crm>)>>,
}

impl CrmRuntime {
    pub fn new(
        settings: Arc<dyn CrmSettingsStore>,
        secrets: Arc<dyn SecretStore>,
        connector: Arc<dyn CrmConnector>,
        local: Option<Arc<dyn Crm>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { settings, secrets, connector, local, clock, cache: Mutex::new(None) }
    }

    /// The saved settings, or the Local CRM defaults where there is a Local CRM.
    pub async fn current_settings(&self) -> Result<Option<CrmSettings>, BackendError> {
        match self.settings.load().await? {
            Some(s) => Ok(Some(s)),
            None if self.local.is_some() => Ok(Some(CrmSettings::local_defaults(self.clock.now()))),
            None => Ok(None),
        }
    }

    /// The CRM the handoff should use now.
    pub async fn active(&self) -> Result<ActiveCrm, RuntimeError> {
        let settings = self.current_settings().await?.ok_or(RuntimeError::NotConfigured)?;
        let crm = self.crm_for(&settings).await?;
        Ok(ActiveCrm { crm, settings })
    }

    async fn crm_for(&self, settings: &CrmSettings) -> Result<Arc<dyn Crm>, RuntimeError> {
        match settings.backend {
            CrmBackend::Local => self.local.clone().ok_or(RuntimeError::NotConfigured),
            CrmBackend::Dataverse => {
                if let Some((revision, crm)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
                    && *revision == settings.revision
                {
                    return Ok(crm.clone());
                }
                let connection = settings.dataverse.as_ref().ok_or(RuntimeError::NotConfigured)?;
                let secret = self.secrets.get(&client_secret_name()).await?.ok_or(RuntimeError::SecretMissing)?;
                let crm = self.connector.connect(connection, secret);
                *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((settings.revision, crm.clone()));
                Ok(crm)
            }
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid { field, problem: problem.into() }
}

fn required(field: &'static str, value: Option<String>) -> Result<String, SettingsError> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).ok_or_else(|| invalid(field, "is required"))
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// `https://org.crm.dynamics.com` (query, fragment and trailing slash removed; a path is kept, as
/// on-premises deployments have `https://server/org`); plain `http` only on loopback (the emulator).
fn parse_base_url(field: &'static str, raw: &str) -> Result<String, SettingsError> {
    let raw = raw.trim();
    let raw = raw.split(['?', '#']).next().unwrap_or(raw).trim_end_matches('/');
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| invalid(field, "must be a URL such as https://contoso.crm.dynamics.com"))?;
    let (host_port, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, String::new()));
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host_port,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') || path.chars().any(char::is_whitespace) {
        return Err(invalid(field, "has no valid host name"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => return Err(invalid(field, "must use https (plain http is only accepted on localhost)")),
        _ => return Err(invalid(field, "must be an https URL")),
    }
    Ok(format!("{}://{}{path}", scheme.to_ascii_lowercase(), host_port.to_ascii_lowercase()))
}

fn parse_tenant(raw: &str) -> Result<String, SettingsError> {
    let t = raw.trim();
    if t.is_empty() || t.len() > 256 || !t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        return Err(invalid("tenant", "must be a directory (tenant) id or a domain such as contoso.onmicrosoft.com"));
    }
    Ok(t.to_owned())
}

fn no_queue_warning() -> String {
    "no default_queue_id: new cases would be created in no queue, so nobody would see them as unassigned work; \
     set the queue the handoff should fill"
        .to_owned()
}

/// What a handoff with these settings needs, as (privilege, what for).
pub fn required_privileges(settings: &CrmSettings) -> Vec<(&'static str, &'static str)> {
    let mut p = vec![
        ("prvReadContact", "look up the sender's contact"),
        ("prvCreateContact", "create the contact of an unknown sender"),
        ("prvAppendToContact", "link a case to its contact"),
        ("prvCreateIncident", "create the case"),
        ("prvReadIncident", "read the case back (ticket number, retries)"),
        ("prvAppendIncident", "link the case to its contact and owner"),
        ("prvAppendToIncident", "add emails and notes to the case"),
        ("prvCreateActivity", "record the emails on the case"),
        ("prvAppendActivity", "link the emails to the case"),
        ("prvCreateNote", "attach the full transcript and the customer's files"),
        ("prvAppendNote", "link the notes to the case"),
    ];
    if settings.default_queue_id.is_some() {
        p.push(("prvReadQueue", "find the default queue"));
        p.push(("prvAppendToQueue", "add cases to the default queue"));
        p.push(("prvCreateQueueItem", "add cases to the default queue"));
    }
    if settings.default_owner.is_some() {
        p.push(("prvAssignIncident", "make the default owner the owner of new cases"));
    }
    p
}

/// The settings as the admin API shows them.
pub async fn settings_view(runtime: &CrmRuntime) -> Result<Option<CrmSettingsView>, SettingsError> {
    let Some(settings) = runtime.current_settings().await? else { return Ok(None) };
    let secret_set = runtime.secrets.get(&client_secret_name()).await?.is_some();
    Ok(Some(view(&settings, secret_set)))
}

fn view(s: &CrmSettings, client_secret_set: bool) -> CrmSettingsView {
    let mut warnings = Vec::new();
    if s.backend == CrmBackend::Dataverse && s.default_queue_id.is_none() {
        warnings.push(no_queue_warning());
    }
    CrmSettingsView {
        backend: s.backend,
        environment_url: s.dataverse.as_ref().map(|d| d.environment_url.clone()),
        tenant: s.dataverse.as_ref().map(|d| d.tenant.clone()),
        client_id: s.dataverse.as_ref().map(|d| d.client_id.clone()),
        client_secret_set,
        authority: s.dataverse.as_ref().map(|d| d.authority.clone()),
        default_queue_id: s.default_queue_id.clone(),
        default_owner_id: s.default_owner.as_ref().map(|o| o.id.clone()),
        default_owner_type: s.default_owner.as_ref().map(|o| o.kind),
        default_priority: s.default_priority,
        map_mailroom_priority: s.map_mailroom_priority,
        ticket_properties: s.ticket_properties.clone(),
        revision: s.revision,
        updated_at: s.updated_at,
        warnings,
    }
}

/// Validates and saves the settings (admin API `PUT`). `ticket_properties` labels are mapped to
/// their values and every value is checked against the CRM's option-set metadata now, with the
/// new connection, so the admin learns at once what Dataverse would reject.
pub async fn save_settings(runtime: &CrmRuntime, input: CrmSettingsInput) -> Result<CrmSettingsView, SettingsError> {
    let previous = runtime.settings.load().await?;
    let backend = input.backend.unwrap_or_default();
    let secret_name = client_secret_name();
    let mut new_secret = None;
    let dataverse = match backend {
        CrmBackend::Local => None,
        CrmBackend::Dataverse => {
            let environment_url =
                parse_base_url("environment_url", &required("environment_url", input.environment_url)?)?;
            let tenant = parse_tenant(&required("tenant", input.tenant)?)?;
            let client_id = required("client_id", input.client_id)?;
            if client_id.len() > 256 || client_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("client_id", "must be the application (client) id of the app registration"));
            }
            let authority = match input.authority.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
                Some(a) => parse_base_url("authority", a)?,
                None => DEFAULT_AUTHORITY.to_owned(),
            };
            match input.client_secret {
                Some(secret) => {
                    check_secret_value(&secret).map_err(|p| invalid("client_secret", p))?;
                    new_secret = Some(secret);
                }
                None if runtime.secrets.get(&secret_name).await?.is_some() => {}
                None => return Err(invalid("client_secret", "is required (it is write-only: send it once)")),
            }
            Some(DataverseConnection { environment_url, tenant, client_id, authority })
        }
    };
    let default_queue_id = input
        .default_queue_id
        .filter(|q| !q.trim().is_empty())
        .map(|q| CrmQueueId::parse(&q).map_err(|_| invalid("default_queue_id", "must be a queue's GUID (queueid)")))
        .transpose()?;
    let owner_kind = match input.default_owner_type.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        None => OwnerKind::Systemuser,
        Some(t) => OwnerKind::parse(t).ok_or_else(|| invalid("default_owner_type", "must be systemuser or team"))?,
    };
    let default_owner = input
        .default_owner_id
        .filter(|o| !o.trim().is_empty())
        .map(|o| {
            CrmPrincipalId::parse(&o)
                .map(|id| OwnerRef { kind: owner_kind, id })
                .map_err(|_| invalid("default_owner_id", "must be a user's or team's GUID"))
        })
        .transpose()?;
    let default_priority = match input.default_priority {
        None => PRIORITY_NORMAL,
        Some(p) => i32::try_from(p).map_err(|_| invalid("default_priority", "must be a prioritycode option value"))?,
    };
    let ticket_input = input.ticket_properties.unwrap_or_default();

    // Checked against the CRM the settings point at (not the one currently active).
    let mut ticket_properties = TicketProperties::default();
    let crm: Arc<dyn Crm> = match (&dataverse, backend) {
        (Some(connection), _) => {
            let secret = match &new_secret {
                Some(s) => s.clone(),
                None => runtime.secrets.get(&secret_name).await?.ok_or(invalid("client_secret", "is required"))?,
            };
            runtime.connector.connect(connection, secret)
        }
        (None, _) => runtime
            .local
            .clone()
            .ok_or_else(|| invalid("backend", "this deployment has no Local CRM: use dataverse"))?,
    };
    let needs_metadata = !ticket_input.is_empty() || input.default_priority.is_some();
    if needs_metadata {
        let option_sets = crm
            .incident_option_sets()
            .await
            .map_err(|source| SettingsError::CannotValidate { field: "ticket_properties", source })?;
        if input.default_priority.is_some() {
            check_priority(default_priority, &option_sets)?;
        }
        ticket_properties = resolve_ticket_properties(&ticket_input, &option_sets)
            .map_err(|problems| SettingsError::Properties { field: "ticket_properties", problems })?;
    }

    if let Some(secret) = &new_secret {
        runtime.secrets.put(&secret_name, secret).await?;
    }
    let settings = CrmSettings {
        backend,
        dataverse,
        default_queue_id,
        default_owner,
        default_priority,
        map_mailroom_priority: input.map_mailroom_priority.unwrap_or(false),
        ticket_properties,
        revision: previous.as_ref().map(|p| p.revision).unwrap_or(0) + 1,
        updated_at: runtime.clock.now(),
    };
    runtime.settings.save(&settings).await?;
    let secret_set = new_secret.is_some() || runtime.secrets.get(&secret_name).await?.is_some();
    Ok(view(&settings, secret_set))
}

fn check_priority(value: i32, option_sets: &[OptionSet]) -> Result<(), SettingsError> {
    let Some(set) = option_sets.iter().find(|s| s.column == "prioritycode") else { return Ok(()) };
    if set.options.iter().any(|o| o.value == value) {
        return Ok(());
    }
    let accepted = set
        .options
        .iter()
        .map(|o| format!("{} {}", o.value, o.labels.first().map(String::as_str).unwrap_or("")).trim().to_owned())
        .collect::<Vec<_>>()
        .join(", ");
    Err(invalid("default_priority", format!("{value} is not a prioritycode option; accepted: {accepted}")))
}

/// The answer of "verify connection".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Active,
    Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionCheck {
    /// `settings`, `token`, `who_am_i`, `privileges`, `default_queue`, `default_owner`,
    /// `ticket_properties`, `upload_limit`.
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionReport {
    pub status: ConnectionStatus,
    pub crm: Option<CrmKind>,
    /// The application user (`WhoAmI`).
    pub user_id: Option<CrmPrincipalId>,
    pub checks: Vec<ConnectionCheck>,
    /// Each problem in plain words, most fundamental first.
    pub problems: Vec<String>,
}

impl ConnectionReport {
    fn push(&mut self, name: &'static str, result: Result<String, String>) -> bool {
        let ok = result.is_ok();
        let detail = match result {
            Ok(d) => d,
            Err(problem) => {
                self.problems.push(problem.clone());
                problem
            }
        };
        self.checks.push(ConnectionCheck { name, ok, detail });
        ok
    }

    fn finish(mut self) -> Self {
        self.status = if self.problems.is_empty() { ConnectionStatus::Active } else { ConnectionStatus::Problem };
        self
    }
}

fn sign_in_problem(e: &CrmError) -> String {
    match e {
        CrmError::SignInRefused { code, description, .. } => {
            format!("the sign-in was refused ({code}): {description}; check tenant, client id and client secret")
        }
        CrmError::Unauthorized { .. } => format!(
            "{e}. Create an application user for this client id in the Power Platform admin center and give it a security role"
        ),
        CrmError::Unavailable { .. } => format!("{e}: the environment or the token endpoint did not answer; try again"),
        other => other.to_string(),
    }
}

/// "Verify connection": gets a token, calls `WhoAmI`, checks the privileges the handoff needs,
/// the default queue and owner, and the saved ticket properties against today's metadata.
/// Answers Active, or every problem in plain words.
pub async fn verify_connection(runtime: &CrmRuntime) -> ConnectionReport {
    let mut report = ConnectionReport {
        status: ConnectionStatus::Problem,
        crm: None,
        user_id: None,
        checks: Vec::new(),
        problems: Vec::new(),
    };
    let active = match runtime.active().await {
        Ok(a) => a,
        Err(e) => {
            report.push("settings", Err(e.to_string()));
            return report.finish();
        }
    };
    let (crm, settings) = (active.crm, active.settings);
    report.crm = Some(crm.kind());
    report.push("settings", Ok(format!("{:?} CRM, settings revision {}", crm.kind(), settings.revision)));

    let identity = match crm.who_am_i().await {
        Ok(identity) => identity,
        Err(e) => {
            let name = if matches!(e, CrmError::SignInRefused { .. }) { "token" } else { "who_am_i" };
            report.push(name, Err(sign_in_problem(&e)));
            return report.finish();
        }
    };
    if crm.kind() == CrmKind::Dataverse {
        report.push("token", Ok("an access token was issued".into()));
    }
    report.push("who_am_i", Ok(format!("signed in as user {}", identity.user_id)));
    report.user_id = Some(identity.user_id.clone());

    let required = required_privileges(&settings);
    match crm.user_privileges(&identity.user_id).await {
        Ok(held) => {
            let missing: Vec<String> = required
                .iter()
                .filter(|(p, _)| !held.iter().any(|h| h.eq_ignore_ascii_case(p)))
                .map(|(p, why)| format!("{p} (to {why})"))
                .collect();
            if missing.is_empty() {
                report.push("privileges", Ok(format!("all {} privileges the handoff needs are held", required.len())));
            } else {
                report.push(
                    "privileges",
                    Err(format!(
                        "the application user's security role lacks: {}; without them Dynamics answers 403 and the handoff fails",
                        missing.join(", ")
                    )),
                );
            }
        }
        Err(e) => {
            report.push("privileges", Err(format!("the privileges could not be read: {e}")));
        }
    }

    match &settings.default_queue_id {
        None if crm.kind() == CrmKind::Dataverse => {
            report.push("default_queue", Err(no_queue_warning()));
        }
        None => {
            report.push("default_queue", Ok("no default queue (the Local CRM lists every case)".into()));
        }
        Some(q) => match crm.queue_exists(q).await {
            Ok(true) => {
                report.push("default_queue", Ok(format!("queue {q} exists")));
            }
            Ok(false) => {
                report.push("default_queue", Err(format!("default_queue_id {q} is not a queue of this environment")));
            }
            Err(e) => {
                report.push("default_queue", Err(format!("the default queue could not be checked: {e}")));
            }
        },
    }
    if let Some(owner) = &settings.default_owner {
        let result = match crm.owner_exists(owner).await {
            Ok(true) => Ok(format!("{} {} exists", owner.kind.as_str(), owner.id)),
            Ok(false) => {
                Err(format!("default_owner_id {} is not a {} of this environment", owner.id, owner.kind.as_str()))
            }
            Err(e) => Err(format!("the default owner could not be checked: {e}")),
        };
        report.push("default_owner", result);
    }

    match crm.incident_option_sets().await {
        Ok(sets) => {
            let mut problems: Vec<String> = Vec::new();
            if let Err(p) = recheck_ticket_properties(&settings.ticket_properties, &sets) {
                problems.extend(p.iter().map(ToString::to_string));
            }
            if let Err(e) = check_priority(settings.default_priority, &sets) {
                problems.push(e.to_string());
            }
            let result = if problems.is_empty() {
                Ok(format!(
                    "{} ticket properties and the default priority are valid options",
                    settings.ticket_properties.iter().count()
                ))
            } else {
                Err(format!("Dynamics would reject these values: {}", problems.join("; ")))
            };
            report.push("ticket_properties", result);
        }
        Err(e) => {
            report.push("ticket_properties", Err(format!("the option-set metadata could not be read: {e}")));
        }
    }
    match crm.max_upload_bytes().await {
        Ok(limit) => {
            report.push("upload_limit", Ok(format!("attachments up to {limit} bytes (Base64) are copied to the case")));
        }
        Err(e) => {
            report.push("upload_limit", Err(format!("the upload limit could not be read: {e}")));
        }
    }
    report.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_urls_are_normalised() {
        let ok = |raw: &str| parse_base_url("environment_url", raw).unwrap();
        assert_eq!(ok(" https://Contoso.crm4.dynamics.com/ "), "https://contoso.crm4.dynamics.com");
        assert_eq!(
            ok("https://contoso.crm.dynamics.com/api/data/v9.2?x=1"),
            "https://contoso.crm.dynamics.com/api/data/v9.2"
        );
        assert_eq!(
            ok("https://crm.example.com/org1"),
            "https://crm.example.com/org1",
            "on-premises keeps the org path"
        );
        assert_eq!(ok("http://127.0.0.1:45690/env/ab12"), "http://127.0.0.1:45690/env/ab12");
        for bad in ["contoso.crm.dynamics.com", "http://contoso.crm.dynamics.com", "ftp://x", "https://", "https://a b"]
        {
            assert!(parse_base_url("environment_url", bad).is_err(), "{bad}");
        }
        assert!(parse_tenant("contoso.onmicrosoft.com").is_ok());
        assert!(parse_tenant("72f988bf-86f1-41af-91ab-2d7cd011db47").is_ok());
        assert!(parse_tenant("a/b").is_err());
    }

    #[test]
    fn required_privileges_follow_the_settings() {
        let mut s = CrmSettings::local_defaults(chrono::Utc::now());
        let names = |s: &CrmSettings| required_privileges(s).into_iter().map(|(p, _)| p).collect::<Vec<_>>();
        assert!(names(&s).contains(&"prvCreateIncident"));
        assert!(!names(&s).contains(&"prvCreateQueueItem"));
        s.default_queue_id = Some(CrmQueueId::derive("q"));
        s.default_owner = Some(OwnerRef { kind: OwnerKind::Team, id: CrmPrincipalId::derive("t") });
        assert!(names(&s).contains(&"prvCreateQueueItem") && names(&s).contains(&"prvAssignIncident"));
    }
}
