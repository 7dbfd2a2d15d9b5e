//! Lambda `ingest-ses`: inbound mail that SES wrote to S3, announced through SQS (see
//! `template.yaml`). Wiring only: telemetry, typed settings, SDK clients and the ingest service
//! are built once at INIT; the event-to-use-case translation lives in [`handler`].

mod handler;

use std::sync::Arc;

use anyhow::Context;
use lambda_runtime::{LambdaEvent, service_fn};
use mailroom::adapters::aws::{AwsBackend, AwsSettings};
use mailroom::app::ingest_service;
use mailroom::config::AppConfig;
use serde_json::Value;

use crate::handler::Handler;

/// The channel configuration (JSON or TOML).
const CONFIG_VAR: &str = "MAILROOM_CONFIG";

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailroom::telemetry::init(true, "info");
    let handler = match init().await {
        Ok(handler) => Arc::new(handler),
        Err(e) => {
            // Fails the INIT phase, with the setting named in the message.
            tracing::error!(error = format!("{e:#}"), "ingest-ses cannot start");
            return Err(e.into());
        }
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let handler = handler.clone();
        async move { handler.handle(event.payload).await }
    }))
    .await
}

async fn init() -> anyhow::Result<Handler> {
    let settings = AwsSettings::from_env().context("reading the function's settings")?;
    let config = match std::env::var(CONFIG_VAR) {
        Ok(text) => AppConfig::parse(&text, CONFIG_VAR).with_context(|| format!("reading {CONFIG_VAR}"))?,
        Err(_) => {
            tracing::warn!("{CONFIG_VAR} is not set: using the built-in demo configuration");
            AppConfig::demo()
        }
    };
    let backend = AwsBackend::connect(&settings).await;
    let mut ingest = ingest_service(&config, backend.raw.clone(), backend.store.clone(), backend.routing.clone())
        .with_context(|| format!("reading {CONFIG_VAR}"))?;
    ingest.handoff_queue = mailroom::adapters::aws::handoff_queue_from_env().await;
    Ok(Handler {
        ingest,
        objects: backend.raw,
        raw_bucket: settings.raw_bucket,
        inbound_prefix: settings.inbound_prefix,
    })
}
