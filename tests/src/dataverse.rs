//! Test support for the Dynamics 365 handoff: the Dataverse emulator (`infra/emulators/dataverse.py`,
//! started by `infra/dataverse.sh`), and a handoff harness on the embedded backend with either the
//! Local CRM or a Dataverse environment behind it.
//!
//! The emulator's URL comes from `MAILROOM_TEST_DATAVERSE_URL`. Every test creates its own isolated
//! environment on it (`POST /_emulator/dataverse/environments`): its own records, clients, faults
//! and privileges, so tests run in parallel against one emulator.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailroom::adapters::dataverse::{DataverseClient, DataverseConnector, DataverseOptions};
use mailroom::adapters::embedded::{EmbeddedBackend, EmbeddedQueue};
use mailroom::adapters::local_crm::{EmbeddedCrmState, LocalCrm, MimeAttachments};
use mailroom::adapters::microsoft_identity::{ClientCredentials, ClientCredentialsTokens};
use mailroom::adapters::secrets::EmbeddedSecretStore;
use mailroom::app::embedded_ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::crm::{ContactId, CrmPrincipalId, CrmQueueId, DataverseConnection};
use mailroom::domain::ids::InteractionId;
use mailroom::domain::journal::Source;
use mailroom::ports::SystemClock;
use mailroom::ports::crm::{Crm, CrmConnector};
use mailroom::usecases::crm_settings::{CrmBackend, CrmRuntime, CrmSettingsInput, save_settings};
use mailroom::usecases::handoff::{HANDOFF_QUEUE, HandoffService};
use mailroom::usecases::ingest::{InboundEmail, IngestOutcome, IngestService};
use secrecy::SecretString;
use serde_json::{Value, json};

/// The environment variable naming the emulator (`infra/dataverse.sh env`).
pub const DATAVERSE_URL_VAR: &str = "MAILROOM_TEST_DATAVERSE_URL";

/// One isolated Dataverse environment on the emulator.
pub struct DataverseEnv {
    /// The emulator itself: also the token authority.
    pub server: String,
    /// This environment's URL (what an admin enters as the environment URL).
    pub url: String,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// A client whose application user lacks `prvCreateIncident`.
    pub limited_client_id: String,
    pub limited_client_secret: String,
    /// The application user of `client_id`.
    pub app_user: CrmPrincipalId,
    pub support_queue: CrmQueueId,
    pub billing_queue: CrmQueueId,
    /// A user ("Ana Agent") and a team ("Support Team") that can own cases.
    pub ana: CrmPrincipalId,
    pub support_team: CrmPrincipalId,
    http: reqwest::Client,
}

/// A fresh environment, or `None` (after printing why) when the emulator is not configured.
pub async fn dataverse() -> Option<DataverseEnv> {
    let server = crate::server_env(DATAVERSE_URL_VAR)?;
    Some(DataverseEnv::create(server.trim_end_matches('/')).await)
}

fn text(v: &Value, pointer: &str) -> String {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no {pointer} in {v}")).to_owned()
}

/// Retries and backoff short enough for tests (the emulator's Retry-After is 1 s by default).
pub fn fast_options() -> DataverseOptions {
    DataverseOptions {
        max_concurrency: 8,
        max_attempts: 4,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(3),
        metadata_ttl: Duration::from_secs(300),
    }
}

/// A connector with [`fast_options`].
pub fn fast_connector() -> Arc<dyn CrmConnector> {
    Arc::new(DataverseConnector::new(ClientCredentialsTokens::default_http(), fast_options()))
}

impl DataverseEnv {
    async fn create(server: &str) -> Self {
        let http = reqwest::Client::new();
        let env: Value = http
            .post(format!("{server}/_emulator/dataverse/environments"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the Dataverse emulator at {server} does not answer: {e}"))
            .json()
            .await
            .expect("environment JSON");
        let guid = |p: &str| text(&env, p);
        let client_id = guid("/clients/0/client_id");
        Self {
            server: server.to_owned(),
            url: guid("/url"),
            tenant: guid("/tenant"),
            app_user: CrmPrincipalId::parse(&text(&env, &format!("/users/{client_id}"))).unwrap(),
            client_secret: guid("/clients/0/client_secret"),
            limited_client_id: guid("/clients/1/client_id"),
            limited_client_secret: guid("/clients/1/client_secret"),
            client_id,
            support_queue: CrmQueueId::parse(&guid("/seed/support_queue")).unwrap(),
            billing_queue: CrmQueueId::parse(&guid("/seed/billing_queue")).unwrap(),
            ana: CrmPrincipalId::parse(&guid("/seed/ana")).unwrap(),
            support_team: CrmPrincipalId::parse(&guid("/seed/support_team")).unwrap(),
            http,
        }
    }

    pub fn connection(&self) -> DataverseConnection {
        DataverseConnection {
            environment_url: self.url.clone(),
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            authority: self.server.clone(),
        }
    }

    /// A client of this environment as `client_id`.
    pub fn client_as(&self, client_id: &str, secret: &str, options: DataverseOptions) -> DataverseClient {
        let http = ClientCredentialsTokens::default_http();
        let tokens = ClientCredentialsTokens::new(
            ClientCredentials {
                authority: self.server.clone(),
                tenant: self.tenant.clone(),
                client_id: client_id.to_owned(),
                client_secret: SecretString::from(secret.to_owned()),
                scope: format!("{}/.default", self.url),
            },
            http.clone(),
        );
        DataverseClient::new(&self.url, Arc::new(tokens), http, options)
    }

    /// A client with every privilege the handoff needs.
    pub fn client(&self) -> DataverseClient {
        self.client_as(&self.client_id, &self.client_secret, fast_options())
    }

    /// A test control of this environment (`reset`, `fail`, `throttle`, `privileges`, `settings`, `seed`).
    pub async fn control(&self, action: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/_emulator/dataverse/{action}", self.url))
            .json(&body)
            .send()
            .await
            .expect("control request");
        assert!(response.status().is_success(), "control {action} answered {}", response.status());
        response.json().await.expect("control JSON")
    }

    /// Makes the next `count` requests matching `method` and a path containing `path` fail with
    /// `status` (429 with `Retry-After: retry_after`, a 5xx, or a 403 naming `prvCreateIncident`).
    pub async fn fail(&self, status: u16, count: u32, method: &str, path: &str, retry_after: u32) {
        self.control(
            "fail",
            json!({ "status": status, "count": count, "method": method, "path": path, "retry_after": retry_after }),
        )
        .await;
    }

    /// Revokes privileges from a client's application user.
    pub async fn revoke(&self, client_id: &str, privileges: &[&str]) {
        self.control("privileges", json!({ "client_id": client_id, "revoke": privileges })).await;
    }

    pub async fn grant(&self, client_id: &str, privileges: &[&str]) {
        self.control("privileges", json!({ "client_id": client_id, "grant": privileges })).await;
    }

    /// A record inserted as is (no privileges checked), e.g. contacts sharing an address.
    pub async fn seed(&self, set: &str, record: Value) -> String {
        text(&self.control("seed", json!({ "set": set, "record": record })).await, "/id")
    }

    pub async fn seed_contact(&self, first: &str, last: &str, emails: [Option<&str>; 3]) -> ContactId {
        let mut record = json!({ "firstname": first, "lastname": last });
        for (i, e) in emails.iter().enumerate() {
            if let Some(e) = e {
                record[format!("emailaddress{}", i + 1)] = json!(e);
            }
        }
        ContactId::parse(&self.seed("contacts", record).await).unwrap()
    }

    /// Everything the environment holds, as stored (`tables.<set>` and `activityparties`).
    pub async fn state(&self) -> Value {
        self.http
            .get(format!("{}/_emulator/dataverse/state", self.url))
            .send()
            .await
            .expect("state request")
            .json()
            .await
            .expect("state JSON")
    }

    /// The rows of one entity set.
    pub async fn rows(&self, set: &str) -> Vec<Value> {
        self.state().await["tables"][set].as_array().cloned().unwrap_or_default()
    }

    /// The requests the environment received (method, path, query, headers, status) and the most
    /// that were in flight at once.
    pub async fn requests(&self) -> Value {
        self.http
            .get(format!("{}/_emulator/dataverse/requests", self.url))
            .send()
            .await
            .expect("requests request")
            .json()
            .await
            .expect("requests JSON")
    }

    /// The token authority's controls (`revoke`, `disable`, ...).
    pub async fn identity_control(&self, action: &str, body: Value) {
        let response = self
            .http
            .post(format!("{}/_emulator/{action}", self.server))
            .json(&body)
            .send()
            .await
            .expect("identity control");
        assert!(response.status().is_success(), "identity control {action}: {}", response.status());
    }
}

/// A handoff on the embedded backend (in a temporary data directory), with the Local CRM by
/// default and the embedded `handoff` queue and its dead-letter queue.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub backend: EmbeddedBackend,
    pub ingest: IngestService,
    pub local: Arc<LocalCrm>,
    pub runtime: Arc<CrmRuntime>,
    pub service: Arc<HandoffService>,
    pub queue: Arc<EmbeddedQueue>,
    pub dead_letters: Arc<EmbeddedQueue>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_local(|crm| crm)
    }

    /// With the Local CRM adjusted (upload limit, option sets).
    pub fn with_local(adjust: impl FnOnce(LocalCrm) -> LocalCrm) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = EmbeddedBackend::open(dir.path()).expect("embedded backend");
        let ingest = embedded_ingest_service(&AppConfig::demo(), &backend).expect("demo config");
        let local = Arc::new(adjust(LocalCrm::open(&backend).expect("local CRM")));
        let state = Arc::new(EmbeddedCrmState::open(&backend).expect("handoff state"));
        let secrets = Arc::new(EmbeddedSecretStore::open(&backend).expect("secret store"));
        let runtime = Arc::new(CrmRuntime::new(
            state.clone(),
            secrets,
            fast_connector(),
            Some(local.clone() as Arc<dyn Crm>),
            Arc::new(SystemClock),
        ));
        let queue = Arc::new(backend.queue(HANDOFF_QUEUE, 5));
        let dead_letters = Arc::new(backend.dead_letter_queue(HANDOFF_QUEUE));
        let service = Arc::new(HandoffService {
            runtime: runtime.clone(),
            store: state,
            interactions: Arc::new(backend.clone()),
            attachments: Some(Arc::new(MimeAttachments::new(Arc::new(backend.clone())))),
            queue: queue.clone(),
            dead_letters: dead_letters.clone(),
            clock: Arc::new(SystemClock),
        });
        Self { dir, backend, ingest, local, runtime, service, queue, dead_letters }
    }

    /// Points the handoff at `env` with the full-privilege client, the Support queue and Ana as
    /// owner; `adjust` changes the settings input before it is saved.
    pub async fn use_dataverse(&self, env: &DataverseEnv, adjust: impl FnOnce(&mut CrmSettingsInput)) {
        let mut input = CrmSettingsInput {
            backend: Some(CrmBackend::Dataverse),
            environment_url: Some(env.url.clone()),
            tenant: Some(env.tenant.clone()),
            client_id: Some(env.client_id.clone()),
            client_secret: Some(SecretString::from(env.client_secret.clone())),
            authority: Some(env.server.clone()),
            default_queue_id: Some(env.support_queue.to_string()),
            default_owner_id: Some(env.ana.to_string()),
            ..Default::default()
        };
        adjust(&mut input);
        save_settings(&self.runtime, input).await.expect("settings saved");
    }

    /// Ingests a fixture file (relative to `tests/fixtures`) and returns the outcome.
    pub async fn ingest_fixture(&self, rel: &str) -> IngestOutcome {
        let path = crate::tests_dir().join("fixtures").join(rel);
        self.ingest_bytes(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).await
    }

    pub async fn ingest_bytes(&self, raw: Vec<u8>) -> IngestOutcome {
        self.ingest.ingest(InboundEmail::new(raw, Source::Replay)).await.expect("ingest")
    }

    /// Ingests every `.eml` in a fixture directory, in name order; returns the interaction of the first.
    pub async fn ingest_dir(&self, rel: &str) -> InteractionId {
        let dir = crate::tests_dir().join("fixtures").join(rel);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        let mut first = None;
        for f in &files {
            let outcome = self.ingest_bytes(std::fs::read(f).expect("fixture")).await;
            let id = interaction_of(&outcome);
            assert_eq!(first.get_or_insert(id.clone()), &id, "{} joined another interaction", f.display());
        }
        first.expect("fixtures in the directory")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// The interaction an ingested email created or joined.
pub fn interaction_of(outcome: &IngestOutcome) -> InteractionId {
    outcome.entry.interaction_id.clone().unwrap_or_else(|| panic!("no interaction: {:?}", outcome.entry))
}
