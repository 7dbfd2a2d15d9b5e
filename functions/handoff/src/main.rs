//! Lambda `handoff`: the Dynamics 365 handoff worker, fed by the `HandoffQueue` (see
//! `template.yaml`). Wiring only: telemetry, typed settings and SDK clients are built once at INIT;
//! the event-to-use-case translation lives in [`handler`].
//!
//! The Dynamics settings (environment URL, tenant, client id, queue, owner, priority, ticket
//! properties) are read from the state table, where the admin API saves them; the client secret
//! from Secrets Manager under `MAILROOM_SECRETS_PREFIX`.

mod handler;

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use mailroom::adapters::aws::sdk_config;
use mailroom::adapters::dataverse::{AwsHandoffSettings, aws_handoff_service};
use mailroom::config::ConfigError;

use crate::handler::Handler;

/// Reads the function's environment (set by `template.yaml`), naming a missing variable.
fn settings_from_env() -> Result<AwsHandoffSettings, ConfigError> {
    let required = |name: &'static str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or(ConfigError::MissingEnv { name })
    };
    Ok(AwsHandoffSettings {
        table: required("MAILROOM_TABLE")?,
        raw_bucket: required("MAILROOM_RAW_BUCKET")?,
        queue_url: required("MAILROOM_HANDOFF_QUEUE_URL")?,
        dead_letter_url: required("MAILROOM_HANDOFF_DLQ_URL")?,
        secrets_prefix: required("MAILROOM_SECRETS_PREFIX")?,
    })
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailroom::telemetry::init(true, "info");
    let handler = match init().await {
        Ok(handler) => Arc::new(handler),
        Err(e) => {
            // Fails the INIT phase, with the setting named in the message.
            tracing::error!(error = format!("{e:#}"), "handoff cannot start");
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
    let settings = settings_from_env().context("reading the function's settings")?;
    let config = sdk_config().await;
    Ok(Handler { service: Arc::new(aws_handoff_service(&config, &settings)) })
}
