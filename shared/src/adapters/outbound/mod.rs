//! Outbound mail adapters: the MIME renderer (lettre), the senders (SMTP with lettre, Amazon
//! SES), and the outbound state (delivery records, agent profiles, write-only secrets) on SQLite,
//! DynamoDB and in memory.

pub mod dynamodb;
pub mod embedded;
pub mod memory;
pub mod mime;
pub mod outbox;
pub mod ses;
pub mod smtp;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::channel::Channel;
use crate::domain::ids::{ChannelName, EmailAddress};
use crate::domain::outbound::{ChannelOutbound, SendingChannel};
use crate::ports::BackendResult;
use crate::ports::outbound::{Accepted, ChannelDirectory, MailEnvelope, MailSender, Route, SendError};

pub use self::dynamodb::DynamoOutboundStore;
pub use self::embedded::EmbeddedOutboundStore;
pub use self::memory::{MemoryOutboundStore, RecordingSender};
pub use self::mime::LettreRenderer;
pub use self::ses::SesSender;
pub use self::smtp::SmtpSender;

/// Sends each route through its transport: SES routes through SES, SMTP routes through SMTP.
#[derive(Clone)]
pub struct RouteSender {
    pub ses: Option<Arc<dyn MailSender>>,
    pub smtp: Arc<dyn MailSender>,
}

impl RouteSender {
    fn pick(&self, route: &Route) -> Result<&Arc<dyn MailSender>, SendError> {
        match route {
            Route::Ses => {
                self.ses.as_ref().ok_or_else(|| SendError::configuration("Amazon SES is not available to this process"))
            }
            Route::Smtp { .. } => Ok(&self.smtp),
        }
    }
}

#[async_trait]
impl MailSender for RouteSender {
    async fn send(&self, route: &Route, envelope: &MailEnvelope, raw: &[u8]) -> Result<Accepted, SendError> {
        self.pick(route)?.send(route, envelope, raw).await
    }

    async fn check(&self, route: &Route) -> Result<String, SendError> {
        self.pick(route)?.check(route).await
    }
}

/// The channels' outgoing side from the configuration: each channel with its [`ChannelOutbound`]
/// (Amazon SES unless configured otherwise).
#[derive(Debug, Clone, Default)]
pub struct StaticChannels {
    channels: Vec<SendingChannel>,
}

impl StaticChannels {
    pub fn new(channels: &[Channel], outbound: &BTreeMap<ChannelName, ChannelOutbound>) -> Arc<Self> {
        let channels = channels
            .iter()
            .map(|c| SendingChannel {
                name: c.name.clone(),
                address: c.address.clone(),
                display_name: None,
                default_queue: c.default_queue.clone(),
                outbound: outbound.get(&c.name).cloned().unwrap_or_default(),
            })
            .collect();
        Arc::new(Self { channels })
    }

    pub fn from_sending(channels: Vec<SendingChannel>) -> Arc<Self> {
        Arc::new(Self { channels })
    }
}

#[async_trait]
impl ChannelDirectory for StaticChannels {
    async fn sending_channel(&self, name: &ChannelName) -> BackendResult<Option<SendingChannel>> {
        Ok(self.channels.iter().find(|c| &c.name == name).cloned())
    }

    async fn own_addresses(&self) -> BackendResult<Vec<EmailAddress>> {
        Ok(self.channels.iter().map(|c| c.address.clone()).collect())
    }
}

/// The outgoing side of the configuration, until it joins `AppConfig` and `Channel` (see the
/// outbound notes): each channel's outgoing server and the attachment limits. JSON or TOML.
///
/// ```toml
/// [channels.support]
/// agent_accounts = true
/// server = { kind = "smtp", host = "smtp.example.com", port = 587, security = "starttls" }
///
/// [attachments]
/// max_count = 10
/// max_file_bytes = 10485760
/// max_total_bytes = 20971520
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    #[serde(default)]
    pub channels: BTreeMap<ChannelName, ChannelOutbound>,
    #[serde(default)]
    pub attachments: crate::domain::outbound::AttachmentLimits,
}

impl OutboundConfig {
    pub fn parse(text: &str, origin: &str) -> Result<Self, crate::config::ConfigError> {
        let syntax = |e: Box<dyn std::error::Error + Send + Sync>| crate::config::ConfigError::Syntax {
            origin: origin.to_owned(),
            source: e,
        };
        let config: Self = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| syntax(e.into()))?
        } else {
            toml::from_str(text).map_err(|e| syntax(e.into()))?
        };
        let limits = config.attachments;
        if limits.max_count == 0 || limits.max_file_bytes == 0 || limits.max_total_bytes < limits.max_file_bytes {
            return Err(crate::config::ConfigError::Invalid {
                setting: "outbound.attachments".into(),
                problem: "limits must be above 0, and max_total_bytes at least max_file_bytes".into(),
            });
        }
        Ok(config)
    }
}

/// Where the send worker's AWS resources are, from the function's environment (`template.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSettings {
    pub table: String,
    pub raw_bucket: String,
    pub send_queue_url: String,
    pub send_dlq_url: String,
    /// The Secrets Manager name prefix of this deployment (`mailroom/<stack>/`).
    pub secrets_prefix: String,
}

impl SendSettings {
    /// Reads `MAILROOM_TABLE`, `MAILROOM_RAW_BUCKET`, `MAILROOM_SEND_QUEUE_URL`,
    /// `MAILROOM_SEND_DLQ_URL` and `MAILROOM_SECRETS_PREFIX`.
    pub fn from_env() -> Result<Self, crate::config::ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, crate::config::ConfigError> {
        let required = |name: &'static str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(crate::config::ConfigError::MissingEnv { name })
        };
        Ok(Self {
            table: required("MAILROOM_TABLE")?,
            raw_bucket: required("MAILROOM_RAW_BUCKET")?,
            send_queue_url: required("MAILROOM_SEND_QUEUE_URL")?,
            send_dlq_url: required("MAILROOM_SEND_DLQ_URL")?,
            secrets_prefix: required("MAILROOM_SECRETS_PREFIX")?,
        })
    }
}

/// The send worker's adapters on AWS, on one set of SDK clients (built once, at INIT).
#[derive(Clone)]
pub struct AwsSendParts {
    pub raw: Arc<crate::adapters::aws::S3RawStore>,
    pub records: Arc<DynamoOutboundStore>,
    pub queue: Arc<crate::adapters::aws::SqsWorkQueue>,
    pub dead_letters: Arc<crate::adapters::aws::SqsWorkQueue>,
    pub secrets: Arc<crate::adapters::secrets::SecretsManagerStore>,
    pub sender: Arc<RouteSender>,
}

impl AwsSendParts {
    pub fn from_sdk_config(
        config: &aws_config::SdkConfig,
        settings: &SendSettings,
        smtp: SmtpSender,
        s3_path_style: bool,
    ) -> Self {
        let sqs = aws_sdk_sqs::Client::new(config);
        Self {
            raw: Arc::new(crate::adapters::aws::S3RawStore::new(
                crate::adapters::aws::s3_client(config, s3_path_style),
                &settings.raw_bucket,
            )),
            records: Arc::new(DynamoOutboundStore::new(aws_sdk_dynamodb::Client::new(config), &settings.table)),
            queue: Arc::new(crate::adapters::aws::SqsWorkQueue::new(sqs.clone(), &settings.send_queue_url)),
            dead_letters: Arc::new(crate::adapters::aws::SqsWorkQueue::new(sqs, &settings.send_dlq_url)),
            secrets: Arc::new(crate::adapters::secrets::SecretsManagerStore::from_sdk_config(
                config,
                &settings.secrets_prefix,
            )),
            sender: Arc::new(RouteSender {
                ses: Some(Arc::new(SesSender::new(aws_sdk_sesv2::Client::new(config)))),
                smtp: Arc::new(smtp),
            }),
        }
    }
}

impl AwsSendParts {
    /// The agent API's compose and profile services on AWS, on the send worker's records, queue
    /// and accounts, so what the API queues is what functions/send-mail sends.
    pub fn api_services(
        &self,
        config: &aws_config::SdkConfig,
        table: &str,
        channels: Arc<StaticChannels>,
        limits: crate::domain::outbound::AttachmentLimits,
    ) -> (crate::usecases::outbound::OutboundService, crate::usecases::agent_profile::ProfileService) {
        let clock = Arc::new(crate::ports::SystemClock);
        let outbound = crate::usecases::outbound::OutboundService {
            store: Arc::new(crate::adapters::aws::DynamoIngestStore::new(aws_sdk_dynamodb::Client::new(config), table)),
            raw_store: self.raw.clone(),
            outbound: self.records.clone(),
            profiles: self.records.clone(),
            channels: channels.clone(),
            renderer: Arc::new(LettreRenderer),
            send_queue: self.queue.clone(),
            clock: clock.clone(),
            limits,
        };
        let profiles = crate::usecases::agent_profile::ProfileService {
            profiles: self.records.clone(),
            secrets: self.secrets.clone(),
            channels,
            renderer: Arc::new(LettreRenderer),
            sender: self.sender.clone(),
            clock,
        };
        (outbound, profiles)
    }
}

/// The outbound services of `mailroom serve`, on the embedded backend: compose (API), profiles
/// (API) and the send worker (a loop beside the SMTP listener). SMTP routes go out directly;
/// `ses` is Amazon SES when the process has AWS credentials (or moto), else SES routes park.
pub struct EmbeddedOutbound {
    pub outbound: crate::usecases::outbound::OutboundService,
    pub profiles: crate::usecases::agent_profile::ProfileService,
    pub worker: crate::usecases::send_mail::SendWorker,
}

impl EmbeddedOutbound {
    pub fn build(
        backend: &crate::adapters::embedded::EmbeddedBackend,
        channels: &[Channel],
        outbound: &OutboundConfig,
        secrets: Arc<dyn crate::ports::secrets::SecretStore>,
        smtp: SmtpSender,
        ses: Option<Arc<dyn MailSender>>,
    ) -> BackendResult<Self> {
        use crate::usecases::outbound::SEND_QUEUE;
        let records = Arc::new(EmbeddedOutboundStore::open(backend)?);
        let directory = StaticChannels::new(channels, &outbound.channels);
        let sender: Arc<dyn MailSender> = Arc::new(RouteSender { ses, smtp: Arc::new(smtp) });
        let queue = Arc::new(backend.queue(SEND_QUEUE, 10));
        let clock = Arc::new(crate::ports::SystemClock);
        let raw: Arc<dyn crate::ports::RawMailStore> = Arc::new(backend.clone());
        Ok(Self {
            outbound: crate::usecases::outbound::OutboundService {
                store: Arc::new(backend.clone()),
                raw_store: raw.clone(),
                outbound: records.clone(),
                profiles: records.clone(),
                channels: directory.clone(),
                renderer: Arc::new(LettreRenderer),
                send_queue: queue.clone(),
                clock: clock.clone(),
                limits: outbound.attachments,
            },
            profiles: crate::usecases::agent_profile::ProfileService {
                profiles: records.clone(),
                secrets: secrets.clone(),
                channels: directory.clone(),
                renderer: Arc::new(LettreRenderer),
                sender: sender.clone(),
                clock: clock.clone(),
            },
            worker: crate::usecases::send_mail::SendWorker {
                outbound: records.clone(),
                raw_store: raw,
                profiles: records,
                secrets,
                channels: directory,
                sender,
                queue,
                dead_letters: Arc::new(backend.dead_letter_queue(SEND_QUEUE)),
                clock,
                policy: Default::default(),
            },
        })
    }
}
