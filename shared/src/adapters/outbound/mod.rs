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

use crate::domain::ids::{ChannelName, EmailAddress};
use crate::domain::outbound::{ChannelOutbound, SendingChannel};
use crate::ports::BackendResult;
use crate::ports::channels::ChannelStore;
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

/// The channels' outgoing side, read from the channel store at every call: a channel created or
/// changed through the admin API sends with its new settings at once, in every process (the agent
/// API composing, the send worker sending), without a restart and without a cache to go stale.
/// One read per use: a strongly consistent `GetItem` (or `Query` for the addresses) in AWS, a
/// SQLite row locally.
///
/// Disabled channels are still found: replies and follow-ups on their interactions, and mail
/// already queued, go out; [`SendingChannel::enabled`] lets compose refuse new emails.
pub struct StoredChannels {
    store: Arc<dyn ChannelStore>,
}

impl StoredChannels {
    pub fn new(store: Arc<dyn ChannelStore>) -> Arc<Self> {
        Arc::new(Self { store })
    }
}

#[async_trait]
impl ChannelDirectory for StoredChannels {
    async fn sending_channel(&self, name: &ChannelName) -> BackendResult<Option<SendingChannel>> {
        Ok(self.store.get(name).await?.map(|r| r.channel.sending()))
    }

    async fn own_addresses(&self) -> BackendResult<Vec<EmailAddress>> {
        Ok(self.store.list().await?.into_iter().map(|r| r.channel.address).collect())
    }
}

/// The `[outbound]` section of the configuration (or `MAILROOM_OUTBOUND`), JSON or TOML: the
/// attachment limits and, the older way to set a channel's outgoing server, one entry per
/// channel. A channel's own `outbound` table is the preferred way now; an entry here seeds a
/// channel that has none (see [`crate::config::AppConfig::channels_with_outbound`]).
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
    /// The environment variable read when the configuration has no `[outbound]` section.
    pub const ENV_VAR: &'static str = "MAILROOM_OUTBOUND";

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
        channels: Arc<dyn ChannelDirectory>,
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
    /// `channels` is where the outgoing side of each channel is read ([`StoredChannels`] over
    /// the channel store the admin API writes, so changes apply at once).
    pub fn build(
        backend: &crate::adapters::embedded::EmbeddedBackend,
        channels: Arc<dyn ChannelDirectory>,
        limits: crate::domain::outbound::AttachmentLimits,
        secrets: Arc<dyn crate::ports::secrets::SecretStore>,
        smtp: SmtpSender,
        ses: Option<Arc<dyn MailSender>>,
    ) -> BackendResult<Self> {
        use crate::usecases::outbound::SEND_QUEUE;
        let records = Arc::new(EmbeddedOutboundStore::open(backend)?);
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
                channels: channels.clone(),
                renderer: Arc::new(LettreRenderer),
                send_queue: queue.clone(),
                clock: clock.clone(),
                limits,
            },
            profiles: crate::usecases::agent_profile::ProfileService {
                profiles: records.clone(),
                secrets: secrets.clone(),
                channels: channels.clone(),
                renderer: Arc::new(LettreRenderer),
                sender: sender.clone(),
                clock: clock.clone(),
            },
            worker: crate::usecases::send_mail::SendWorker {
                outbound: records.clone(),
                raw_store: raw,
                profiles: records,
                secrets,
                channels,
                sender,
                queue,
                dead_letters: Arc::new(backend.dead_letter_queue(SEND_QUEUE)),
                clock,
                policy: Default::default(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::channels::MemoryChannelStore;
    use crate::config::AppConfig;
    use crate::domain::outbound::{HostName, OutgoingServer, SmtpSecurity, SmtpServer};
    use crate::ports::channels::StoredChannel;

    fn record(name: &str) -> StoredChannel {
        let mut channel = AppConfig::demo().channels[0].clone();
        channel.name = ChannelName::parse(name).unwrap();
        channel.address = EmailAddress::parse(&format!("{name}@example.com")).unwrap();
        StoredChannel { channel, version: 0, position: 0, seed: None, updated_at: chrono::Utc::now() }
    }

    #[tokio::test]
    async fn the_directory_reads_each_change_of_the_store_at_once() {
        let store = Arc::new(MemoryChannelStore::default());
        let directory = StoredChannels::new(store.clone());
        let sales = ChannelName::parse("sales").unwrap();
        assert_eq!(directory.sending_channel(&sales).await.unwrap(), None);
        assert!(directory.own_addresses().await.unwrap().is_empty());

        // Created: found at once, with the internal server by default.
        store.put(&record("support"), None).await.unwrap();
        store.put(&record("sales"), None).await.unwrap();
        let found = directory.sending_channel(&sales).await.unwrap().expect("created channels send at once");
        assert_eq!((found.address.as_str(), found.enabled), ("sales@example.com", true));
        assert_eq!(found.outbound.server, OutgoingServer::Internal);
        let mut own: Vec<String> =
            directory.own_addresses().await.unwrap().iter().map(|a| a.as_str().to_owned()).collect();
        own.sort();
        assert_eq!(own, ["sales@example.com", "support@example.com"]);

        // Changed (a custom SMTP server) and disabled: the next read has both, and a disabled
        // channel is still there for the replies on its interactions.
        let mut changed = store.get(&sales).await.unwrap().unwrap();
        let smtp = OutgoingServer::Smtp {
            server: SmtpServer {
                host: HostName::parse("smtp.example.com").unwrap(),
                port: 465,
                security: SmtpSecurity::Tls,
            },
            login: None,
        };
        changed.channel.outbound = ChannelOutbound { server: smtp.clone(), agent_accounts: true };
        changed.channel.enabled = false;
        store.put(&changed, Some(1)).await.unwrap();
        let found = directory.sending_channel(&sales).await.unwrap().unwrap();
        assert_eq!((found.outbound.server, found.outbound.agent_accounts, found.enabled), (smtp, true, false));
        assert_eq!(directory.own_addresses().await.unwrap().len(), 2, "a disabled channel's address is still ours");
    }
}
