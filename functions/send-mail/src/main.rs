//! Lambda `send-mail`: delivers outbound mail from the SQS `SendQueue` (see `template.yaml`).
//! Wiring only: telemetry, typed settings, SDK clients and the send worker are built once at
//! INIT; the event-to-use-case translation lives in [`handler`].

mod handler;

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use mailroom::adapters::aws::{endpoint_overridden, sdk_config};
use mailroom::adapters::outbound::{AwsSendParts, OutboundConfig, SendSettings, SmtpSender, StaticChannels};
use mailroom::config::AppConfig;
use mailroom::ports::SystemClock;
use mailroom::usecases::send_mail::{RetryPolicy, SendWorker};

use crate::handler::Handler;

/// Channels (JSON or TOML), as for the other functions.
const CONFIG_VAR: &str = "MAILROOM_CONFIG";
/// The channels' outgoing servers and the attachment limits (JSON or TOML).
const OUTBOUND_VAR: &str = "MAILROOM_OUTBOUND";

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
    let config = match std::env::var(CONFIG_VAR) {
        Ok(text) => AppConfig::parse(&text, CONFIG_VAR).with_context(|| format!("reading {CONFIG_VAR}"))?,
        Err(_) => {
            tracing::warn!("{CONFIG_VAR} is not set: using the built-in demo configuration");
            AppConfig::demo()
        }
    };
    let outbound = match std::env::var(OUTBOUND_VAR) {
        Ok(text) if !text.trim().is_empty() => {
            OutboundConfig::parse(&text, OUTBOUND_VAR).with_context(|| format!("reading {OUTBOUND_VAR}"))?
        }
        _ => OutboundConfig::default(),
    };
    let smtp = SmtpSender::from_env().context("reading MAILROOM_SMTP_CA_FILE")?;
    let sdk = sdk_config().await;
    let parts = AwsSendParts::from_sdk_config(&sdk, &settings, smtp, endpoint_overridden());
    let worker = SendWorker {
        outbound: parts.records.clone(),
        raw_store: parts.raw.clone(),
        profiles: parts.records.clone(),
        secrets: parts.secrets.clone(),
        channels: StaticChannels::new(&config.channels, &outbound.channels),
        sender: parts.sender.clone(),
        queue: parts.queue.clone(),
        dead_letters: parts.dead_letters.clone(),
        clock: Arc::new(SystemClock),
        policy: RetryPolicy::default(),
    };
    Ok(Handler { worker })
}
