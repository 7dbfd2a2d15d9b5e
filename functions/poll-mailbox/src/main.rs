//! Lambda `poll-mailbox`: run every minute by an EventBridge schedule (see `template.yaml`), it
//! polls every enabled channel's IMAP/POP3 mailbox and ingests new mail. Wiring only: telemetry,
//! typed settings, SDK clients, the channel store (seeded from `MAILROOM_CONFIG` and
//! `MAILROOM_OUTBOUND`), the secret
//! store and the poller are built once at INIT; the event handling lives in [`handler`].

mod handler;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lambda_runtime::{LambdaEvent, service_fn};
use mailroom::adapters::aws::{AwsBackend, AwsSettings, endpoint_overridden, sdk_config};
use mailroom::adapters::channels::DynamoChannelStore;
use mailroom::adapters::secrets::SecretsManagerStore;
use mailroom::app::{ingest_service_with_channels, mailbox_access};
use mailroom::config::AppConfig;
use mailroom::domain::mailbox::NetworkPolicy;
use mailroom::ports::SystemClock;
use mailroom::usecases::channel_admin::{SeedOptions, seed_channels};
use mailroom::usecases::channel_directory::ChannelDirectory;
use mailroom::usecases::poll_mailbox::{MailboxPoller, PollLimits};
use serde_json::Value;

use crate::handler::{Handler, PollSettings};

/// The configuration (JSON or TOML): channels, queues and the `[mailbox]` settings.
const CONFIG_VAR: &str = "MAILROOM_CONFIG";

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailroom::telemetry::init(true, "info");
    let handler = match init().await {
        Ok(handler) => Arc::new(handler),
        Err(e) => {
            // Fails the INIT phase, with the setting named in the message.
            tracing::error!(error = format!("{e:#}"), "poll-mailbox cannot start");
            return Err(e.into());
        }
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = handler.clone();
        async move { handler.handle(event.payload).await }
    }))
    .await
}

async fn init() -> anyhow::Result<Handler<MailboxPoller>> {
    let settings = AwsSettings::from_env().context("reading the function's settings")?;
    let poll_settings = PollSettings::from_env().context("reading the function's settings")?;
    let config = match std::env::var(CONFIG_VAR) {
        Ok(text) => AppConfig::parse(&text, CONFIG_VAR).with_context(|| format!("reading {CONFIG_VAR}"))?,
        Err(_) => {
            tracing::warn!("{CONFIG_VAR} is not set: using the built-in demo configuration");
            AppConfig::demo()
        }
    };
    let sdk = sdk_config().await;
    let backend = AwsBackend::from_sdk_config(&sdk, &settings, endpoint_overridden());
    let channels = Arc::new(DynamoChannelStore::from_sdk_config(&sdk, &settings.table));
    let secrets = Arc::new(SecretsManagerStore::from_sdk_config(&sdk, &poll_settings.secret_prefix));

    // The config file's channels, applied when they changed; secrets only by name here. Each
    // channel's outgoing server comes from its own `outbound` table, or from MAILROOM_OUTBOUND
    // (the MailroomOutbound parameter); functions/send-mail and the agent API read it from here.
    let env = |name: &str| std::env::var(name).ok();
    let seeds = config
        .channels_with_outbound(&config.outbound_settings(&env).context("reading MAILROOM_OUTBOUND")?)
        .with_context(|| format!("reading the channels of {CONFIG_VAR}"))?;
    seed_channels(
        channels.as_ref(),
        secrets.as_ref(),
        &seeds,
        &env,
        SeedOptions { allow_secret_values: false },
        &SystemClock,
    )
    .await
    .with_context(|| format!("applying the channels of {CONFIG_VAR}"))?;

    let directory =
        ChannelDirectory::stored(channels.clone(), Duration::from_secs(config.mailbox.channel_refresh_secs));
    let mut ingest = ingest_service_with_channels(
        &config,
        backend.raw.clone(),
        backend.store.clone(),
        backend.routing.clone(),
        directory.clone(),
    );
    ingest.handoff_queue = mailroom::adapters::aws::handoff_queue_from_env().await;
    // The cloud: public addresses and Microsoft's authorities only, unless [mailbox] allows more.
    let access = mailbox_access(&config.mailbox, secrets, NetworkPolicy::CLOUD).context("reading [mailbox]")?;
    let poller = MailboxPoller::new(
        ingest,
        directory,
        channels,
        access,
        PollLimits::from_settings(&config.mailbox),
        Arc::new(SystemClock),
    );
    Ok(Handler { poller })
}
