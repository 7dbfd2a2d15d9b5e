//! Lambda `send-mail`: delivers outbound mail from the SQS `SendQueue` (see `template.yaml`).
//! Wiring only: telemetry, typed settings, SDK clients and the send worker are built once at
//! INIT; the event-to-use-case translation lives in [`handler`].

mod handler;

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use mailroom::adapters::aws::{endpoint_overridden, sdk_config};
use mailroom::adapters::channels::DynamoChannelStore;
use mailroom::adapters::outbound::{AwsSendParts, SendSettings, SmtpSender, StoredChannels};
use mailroom::config::AppConfig;
use mailroom::domain::mailbox::{MailboxSettings, NetworkPolicy};
use mailroom::ports::SystemClock;
use mailroom::usecases::send_mail::{RetryPolicy, SendWorker};

use crate::handler::Handler;

/// The configuration (JSON or TOML), read for its network policy.
const CONFIG_VAR: &str = "MAILROOM_CONFIG";

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailroom::telemetry::init(true, "info");
    let handler = match init().await {
        Ok(handler) => Arc::new(handler),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "send-mail cannot start");
            return Err(e.into());
        }
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let handler = handler.clone();
        async move { Ok::<_, lambda_runtime::Error>(handler.handle(event.payload).await) }
    }))
    .await
}

async fn init() -> anyhow::Result<Handler> {
    let settings = SendSettings::from_env().context("reading the function's settings")?;
    // Only the network policy is read from the configuration here ([mailbox] allow_loopback,
    // allow_private_networks): public SMTP servers only, unless the operator allows more.
    let policy = match std::env::var(CONFIG_VAR) {
        Ok(text) => AppConfig::parse(&text, CONFIG_VAR).with_context(|| format!("reading {CONFIG_VAR}"))?.mailbox,
        Err(_) => MailboxSettings::default(),
    }
    .network_policy(NetworkPolicy::CLOUD);
    let smtp = SmtpSender::from_env().context("reading MAILROOM_SMTP_CA_FILE")?.with_policy(policy);
    let sdk = sdk_config().await;
    let parts = AwsSendParts::from_sdk_config(&sdk, &settings, smtp, endpoint_overridden());
    let worker = SendWorker {
        outbound: parts.records.clone(),
        raw_store: parts.raw.clone(),
        profiles: parts.records.clone(),
        secrets: parts.secrets.clone(),
        // Each send reads its channel's outgoing side from the channel store (seeded from
        // MailroomConfig and MailroomOutbound by functions/poll-mailbox, changed through the
        // admin API), so a change applies to the next send without a cold start.
        channels: StoredChannels::new(Arc::new(DynamoChannelStore::from_sdk_config(&sdk, &settings.table))),
        sender: parts.sender.clone(),
        queue: parts.queue.clone(),
        dead_letters: parts.dead_letters.clone(),
        clock: Arc::new(SystemClock),
        policy: RetryPolicy::default(),
    };
    Ok(Handler { worker })
}
