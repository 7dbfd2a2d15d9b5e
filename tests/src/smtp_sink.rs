//! The SMTP sink (`infra/smtp_sink.sh`) and an outbound test world around it.
//!
//! The sink's ports, CA and mail directory come from `MAILROOM_TEST_SMTP_*` (`infra/smtp_sink.sh
//! env`). Each accepted message is `<name>.eml` beside `<name>.json` (envelope, authenticated
//! login, listener); the JSON appears last, so a message whose JSON exists is complete.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailroom::adapters::channels::EmbeddedChannelStore;
use mailroom::adapters::embedded::{EmbeddedBackend, EmbeddedQueue};
use mailroom::adapters::outbound::{EmbeddedOutboundStore, LettreRenderer, RouteSender, SmtpSender, StoredChannels};
use mailroom::adapters::secrets::MemorySecretStore;
use mailroom::app::embedded_ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::agent::Agent;
use mailroom::domain::ids::{AgentId, InteractionId};
use mailroom::domain::interaction::InteractionState;
use mailroom::domain::journal::Source;
use mailroom::domain::outbound::{ChannelOutbound, HostName, OutgoingServer, SecretKey, SmtpSecurity, SmtpServer};
use mailroom::ports::SystemClock;
use mailroom::ports::channels::{ChannelStore, StoredChannel};
use mailroom::ports::outbound::MailSender;
use mailroom::ports::routing::RoutingStore;
use mailroom::ports::secrets::SecretStore;
use mailroom::usecases::agent_profile::ProfileService;
use mailroom::usecases::ingest::{InboundEmail, IngestOutcome, IngestService};
use mailroom::usecases::outbound::{OutboundService, SEND_QUEUE};
use mailroom::usecases::send_mail::{RetryPolicy, SendWorker};
use secrecy::SecretString;
use serde::Deserialize;

/// The sink as the tests see it.
#[derive(Debug, Clone)]
pub struct Sink {
    pub host: String,
    pub starttls_port: u16,
    pub tls_port: u16,
    pub ca_pem: Vec<u8>,
    pub maildir: PathBuf,
}

/// The sink, or `None` (after printing why) when `infra/smtp_sink.sh` did not set the variables.
/// Panics instead when `MAILROOM_REQUIRE_SERVERS=1`.
pub fn sink() -> Option<Sink> {
    let host = crate::server_env("MAILROOM_TEST_SMTP_HOST")?;
    let port =
        |var: &str| crate::server_env(var).map(|p| p.parse::<u16>().unwrap_or_else(|_| panic!("{var} is not a port")));
    let ca = crate::server_env("MAILROOM_TEST_SMTP_CA")?;
    Some(Sink {
        host,
        starttls_port: port("MAILROOM_TEST_SMTP_STARTTLS_PORT")?,
        tls_port: port("MAILROOM_TEST_SMTP_TLS_PORT")?,
        ca_pem: std::fs::read(&ca).unwrap_or_else(|e| panic!("cannot read the sink's CA {ca}: {e}")),
        maildir: PathBuf::from(crate::server_env("MAILROOM_TEST_SMTP_MAILDIR")?),
    })
}

/// What the sink recorded of an SMTP session.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkEnvelope {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub auth_login: Option<String>,
    pub listener: String,
    pub tls: bool,
}

#[derive(Debug, Clone)]
pub struct Delivered {
    pub raw: Vec<u8>,
    pub envelope: SinkEnvelope,
}

impl Sink {
    pub fn server(&self, security: SmtpSecurity) -> SmtpServer {
        let port = match security {
            SmtpSecurity::Starttls => self.starttls_port,
            SmtpSecurity::Tls => self.tls_port,
        };
        SmtpServer { host: HostName::parse(&self.host).expect("host"), port, security }
    }

    pub fn sender(&self) -> SmtpSender {
        SmtpSender::new(Some(self.ca_pem.clone()), Duration::from_secs(5)).expect("smtp sender")
    }

    /// Every delivered message whose header holds `Message-ID: <message_id>`.
    pub fn delivered(&self, message_id: &str) -> Vec<Delivered> {
        let needle = format!("<{message_id}>");
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.maildir) else { return found };
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for json in names.iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let eml = json.with_extension("eml");
            let Ok(raw) = std::fs::read(&eml) else { continue };
            if header_block(&raw).contains(&needle) {
                let envelope: SinkEnvelope =
                    serde_json::from_slice(&std::fs::read(json).expect("read envelope")).expect("envelope json");
                found.push(Delivered { raw, envelope });
            }
        }
        found
    }

    /// The one delivered message with this Message-ID (fails if there is none or more than one).
    pub fn the_message(&self, message_id: &str) -> Delivered {
        let mut all = self.delivered(message_id);
        assert_eq!(all.len(), 1, "expected exactly one delivery of <{message_id}> in {}", self.maildir.display());
        all.remove(0)
    }
}

fn header_block(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let end = text.find("\r\n\r\n").unwrap_or(text.len());
    text[..end].to_owned()
}

/// One Mailroom on a fresh embedded backend, with the outbound services around it.
pub struct OutboundWorld {
    pub dir: tempfile::TempDir,
    pub backend: EmbeddedBackend,
    pub config: AppConfig,
    pub ingest: IngestService,
    pub outbound: OutboundService,
    pub profiles: ProfileService,
    pub worker: SendWorker,
    pub records: Arc<EmbeddedOutboundStore>,
    /// The channels, as the admin API keeps them: the send path reads them at every send.
    pub channels: Arc<EmbeddedChannelStore>,
    pub secrets: Arc<MemorySecretStore>,
    pub send_queue: Arc<EmbeddedQueue>,
    pub dead_letters: Arc<EmbeddedQueue>,
}

/// The demo channel (`support@example.com`) sending through `server`, agents allowed to use their
/// own accounts.
pub fn support_channel(server: OutgoingServer) -> BTreeMap<mailroom::domain::ids::ChannelName, ChannelOutbound> {
    BTreeMap::from([(
        mailroom::domain::ids::ChannelName::parse("support").expect("name"),
        ChannelOutbound { server, agent_accounts: true },
    )])
}

impl OutboundWorld {
    /// The built-in demo configuration with `outbound` settings (each channel's outgoing side,
    /// written into the channel store), sending through `sender`. Retries come back at once (no
    /// delay), so a test can drain the queue.
    pub async fn new(
        outbound: BTreeMap<mailroom::domain::ids::ChannelName, ChannelOutbound>,
        sender: Arc<dyn MailSender>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = EmbeddedBackend::open(dir.path()).expect("backend");
        let config = AppConfig::demo();
        let ingest = embedded_ingest_service(&config, &backend).expect("ingest service");
        let records = Arc::new(EmbeddedOutboundStore::open(&backend).expect("outbound store"));
        let secrets = Arc::new(MemorySecretStore::default());
        let channel_store = Arc::new(EmbeddedChannelStore::open(&backend).expect("channel store"));
        for (position, configured) in config.channels.iter().enumerate() {
            let mut channel = configured.clone();
            if let Some(o) = outbound.get(&channel.name) {
                channel.outbound = o.clone();
            }
            let record = StoredChannel {
                channel,
                version: 0,
                position: position as u64,
                seed: None,
                updated_at: chrono::Utc::now(),
            };
            channel_store.put(&record, None).await.expect("channel");
        }
        let channels = StoredChannels::new(channel_store.clone());
        let send_queue = Arc::new(backend.queue(SEND_QUEUE, 10));
        let dead_letters = Arc::new(backend.dead_letter_queue(SEND_QUEUE));
        let raw_store = Arc::new(backend.clone());
        let service = OutboundService {
            store: Arc::new(backend.clone()),
            raw_store: raw_store.clone(),
            outbound: records.clone(),
            profiles: records.clone(),
            channels: channels.clone(),
            renderer: Arc::new(LettreRenderer),
            send_queue: send_queue.clone(),
            clock: Arc::new(SystemClock),
            limits: Default::default(),
        };
        let profiles = ProfileService {
            profiles: records.clone(),
            secrets: secrets.clone(),
            channels: channels.clone(),
            renderer: Arc::new(LettreRenderer),
            sender: sender.clone(),
            clock: Arc::new(SystemClock),
        };
        let worker = SendWorker {
            outbound: records.clone(),
            raw_store,
            profiles: records.clone(),
            secrets: secrets.clone(),
            channels,
            sender,
            queue: send_queue.clone(),
            dead_letters: dead_letters.clone(),
            clock: Arc::new(SystemClock),
            policy: RetryPolicy { first_delay: Duration::ZERO, ..RetryPolicy::default() },
        };
        Self {
            dir,
            backend,
            config,
            ingest,
            outbound: service,
            profiles,
            worker,
            records,
            channels: channel_store,
            secrets,
            send_queue,
            dead_letters,
        }
    }

    /// A world whose SMTP routes go to `sink` (no SES).
    pub async fn with_sink(
        sink: &Sink,
        outbound: BTreeMap<mailroom::domain::ids::ChannelName, ChannelOutbound>,
    ) -> Self {
        let sender = RouteSender { ses: None, smtp: Arc::new(sink.sender()) };
        Self::new(outbound, Arc::new(sender)).await
    }

    pub fn agent(&self, id: &str) -> Agent {
        self.config.agents.iter().find(|a| a.id.as_str() == id).cloned().expect("a demo agent")
    }

    pub async fn set_secret(&self, key: SecretKey, value: &str) {
        self.secrets.put(&key.secret_name(), &SecretString::from(value.to_owned())).await.expect("secret");
    }

    /// Feeds raw bytes through ingest, as the SMTP listener would.
    pub async fn receive(&self, raw: Vec<u8>) -> IngestOutcome {
        self.ingest.ingest(InboundEmail::new(raw, Source::Smtp)).await.expect("ingest")
    }

    /// Ingests a fixture of `tests/fixtures/outbound` and assigns its interaction to `agent`
    /// (as accepting an offer would).
    pub async fn customer_writes(&self, fixture: &str, agent: &str) -> InteractionId {
        let raw = std::fs::read(fixture_path(fixture)).expect("fixture");
        let outcome = self.receive(raw).await;
        let id = outcome.entry.interaction_id.clone().expect("the email opened an interaction");
        self.assign(&id, agent).await;
        id
    }

    pub async fn assign(&self, id: &InteractionId, agent: &str) {
        let agent = AgentId::parse(agent).expect("agent id");
        let change = move |i: Option<&mut mailroom::domain::interaction::Interaction>,
                           _: Option<&mut mailroom::ports::routing::AgentRecord>| {
            let i = i.expect("the interaction exists");
            i.state = InteractionState::Assigned;
            i.routing.agent = Some(agent.clone());
            Ok(())
        };
        self.backend.transition(Some(id), None, &change).await.expect("transition").expect("assigned");
    }
}

pub fn fixture_path(name: &str) -> PathBuf {
    crate::tests_dir().join("fixtures/outbound").join(name)
}

/// The answer template with its placeholders filled.
pub fn answer(from: &str, subject: &str, in_reply_to: &str, message_id: &str) -> Vec<u8> {
    let template = std::fs::read_to_string(fixture_path("answer-template.eml")).expect("template");
    template
        .replace("{{FROM}}", from)
        .replace("{{SUBJECT}}", subject)
        .replace("{{IN_REPLY_TO}}", in_reply_to)
        .replace("{{MESSAGE_ID}}", message_id)
        .into_bytes()
}
