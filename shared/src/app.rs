//! Composition: building the services from configuration and a backend, once per process.

use std::path::PathBuf;
use std::sync::Arc;

use crate::adapters::embedded::{DEFAULT_MAX_RECEIVES, EmbeddedBackend};
use crate::adapters::mime::MailParserAdapter;
use crate::config::{AppConfig, ChannelSet, ConfigError};
use crate::domain::classify::RuleClassifier;
use crate::ports::{IngestStore, RawMailStore, SystemClock, WorkQueue};
use crate::usecases::channel_directory::ChannelDirectory;
use crate::usecases::ingest::IngestService;

/// The name of the queue that carries routing requests (the SQS `RoutingQueue` in AWS).
pub const ROUTING_QUEUE: &str = "routing";

/// The default data directory of the embedded backend, relative to the working directory.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("mailroom-data")
}

/// Builds the ingest service over any backend.
pub fn ingest_service(
    config: &AppConfig,
    raw_store: Arc<dyn RawMailStore>,
    store: Arc<dyn IngestStore>,
    routing: Arc<dyn WorkQueue>,
) -> Result<IngestService, ConfigError> {
    Ok(IngestService {
        raw_store,
        store,
        routing,
        parser: Arc::new(MailParserAdapter::default()),
        classifier: Arc::new(RuleClassifier::new(&config.classifier)),
        channels: ChannelDirectory::fixed(ChannelSet::from_config(config)?),
        limits: config.ingest.clone(),
        clock: Arc::new(SystemClock),
        handoff_queue: None,
    })
}

/// Builds the ingest service on the embedded backend.
pub fn embedded_ingest_service(config: &AppConfig, backend: &EmbeddedBackend) -> Result<IngestService, ConfigError> {
    let backend_arc = Arc::new(backend.clone());
    ingest_service(
        config,
        backend_arc.clone(),
        backend_arc,
        Arc::new(backend.queue(ROUTING_QUEUE, DEFAULT_MAX_RECEIVES)),
    )
}

/// Builds the routing service on the embedded backend.
pub fn embedded_routing_service(backend: &EmbeddedBackend) -> crate::usecases::routing::RoutingService {
    let backend_arc = Arc::new(backend.clone());
    crate::usecases::routing::RoutingService {
        store: backend_arc.clone(),
        transcripts: backend_arc,
        work: Arc::new(backend.queue(ROUTING_QUEUE, DEFAULT_MAX_RECEIVES)),
        clock: Arc::new(SystemClock),
    }
}

// ------------------------------------------------------------------ channels as data, mailboxes

/// The ingest service reading its channels through `channels` (e.g. a store-backed directory,
/// so an admin's change takes effect without a restart) instead of the config file's list.
pub fn ingest_service_with_channels(
    config: &AppConfig,
    raw_store: Arc<dyn RawMailStore>,
    store: Arc<dyn IngestStore>,
    routing: Arc<dyn WorkQueue>,
    channels: ChannelDirectory,
) -> IngestService {
    IngestService {
        raw_store,
        store,
        routing,
        parser: Arc::new(MailParserAdapter::default()),
        classifier: Arc::new(RuleClassifier::new(&config.classifier)),
        channels,
        limits: config.ingest.clone(),
        clock: Arc::new(SystemClock),
        handoff_queue: None,
    }
}

/// Mailbox access (secrets, TLS, DNS, OAuth2 tokens) under the deployment's network policy:
/// `defaults` is `NetworkPolicy::LOCAL` or `NetworkPolicy::CLOUD`, each overridable under
/// `[mailbox]`.
pub fn mailbox_access(
    settings: &crate::domain::mailbox::MailboxSettings,
    secrets: Arc<dyn crate::ports::secrets::SecretStore>,
    defaults: crate::domain::mailbox::NetworkPolicy,
) -> Result<Arc<crate::usecases::poll_mailbox::MailboxAccess>, crate::adapters::mailbox::TlsSetupError> {
    use crate::adapters::mailbox::{ClientCredentialsTokenSources, DnsResolver, NetworkMailboxConnector};
    Ok(Arc::new(crate::usecases::poll_mailbox::MailboxAccess::new(
        secrets,
        Arc::new(NetworkMailboxConnector::from_settings(settings)?),
        Arc::new(DnsResolver::default()),
        Arc::new(ClientCredentialsTokenSources::default()),
        settings.network_policy(defaults),
    )))
}

/// What `mailroom serve` needs for channels and mailboxes on the embedded backend.
pub struct EmbeddedMailboxes {
    /// Ingest reading channels from the store (use it for every front door of the process).
    pub ingest: IngestService,
    pub channels: ChannelDirectory,
    /// The channel store itself, for the outbound side ([`crate::adapters::outbound::StoredChannels`]),
    /// which reads it at every send.
    pub store: Arc<dyn crate::ports::channels::ChannelStore>,
    /// For `usecases::poll_mailbox::run_idle_loop`.
    pub poller: Arc<crate::usecases::poll_mailbox::MailboxPoller>,
    /// For the admin API's channel endpoints.
    pub admin: Arc<crate::usecases::channel_admin::ChannelAdmin>,
}

/// Seeds the channel store from the config file (secret values given there go into the data
/// directory's secret table; each channel's outgoing server from its `outbound` table, or from
/// `[outbound.channels.<name>]` / `MAILROOM_OUTBOUND`) and builds ingest, the mailbox poller and channel administration
/// on the embedded backend. Loopback and private addresses are allowed unless `[mailbox]`
/// says otherwise: on one machine the operator is the admin.
pub async fn embedded_mailboxes(config: &AppConfig, backend: &EmbeddedBackend) -> anyhow::Result<EmbeddedMailboxes> {
    use anyhow::Context;

    use crate::adapters::channels::EmbeddedChannelStore;
    use crate::adapters::secrets::EmbeddedSecretStore;
    use crate::domain::mailbox::NetworkPolicy;
    use crate::usecases::channel_admin::{ChannelAdmin, SeedOptions, seed_channels};
    use crate::usecases::poll_mailbox::{MailboxPoller, PollLimits};

    let store = Arc::new(EmbeddedChannelStore::open(backend)?);
    let secrets = Arc::new(EmbeddedSecretStore::open(backend)?);
    let env = |name: &str| std::env::var(name).ok();
    let seeds = config.channels_with_outbound(&config.outbound_settings(&env)?)?;
    seed_channels(
        store.as_ref(),
        secrets.as_ref(),
        &seeds,
        &env,
        SeedOptions { allow_secret_values: true },
        &SystemClock,
    )
    .await
    .context("applying the configuration's channels")?;
    let channels =
        ChannelDirectory::stored(store.clone(), std::time::Duration::from_secs(config.mailbox.channel_refresh_secs));
    let backend_arc = Arc::new(backend.clone());
    let mut ingest = ingest_service_with_channels(
        config,
        backend_arc.clone(),
        backend_arc,
        Arc::new(backend.queue(ROUTING_QUEUE, DEFAULT_MAX_RECEIVES)),
        channels.clone(),
    );
    // Threaded mail reaches the case of its interaction (the handoff worker of `mailroom serve`).
    ingest.handoff_queue = Some(Arc::new(backend.queue(crate::usecases::handoff::HANDOFF_QUEUE, DEFAULT_MAX_RECEIVES)));
    let access = mailbox_access(&config.mailbox, secrets.clone(), NetworkPolicy::LOCAL)?;
    let poller = Arc::new(MailboxPoller::new(
        ingest.clone(),
        channels.clone(),
        store.clone(),
        access.clone(),
        PollLimits::from_settings(&config.mailbox),
        Arc::new(SystemClock),
    ));
    let admin = Arc::new(ChannelAdmin {
        store: store.clone(),
        secrets,
        state: store.clone(),
        directory: channels.clone(),
        access,
        queues: config.queues.iter().map(|q| q.name.clone()).collect(),
        clock: Arc::new(SystemClock),
    });
    Ok(EmbeddedMailboxes { ingest, channels, store, poller, admin })
}
