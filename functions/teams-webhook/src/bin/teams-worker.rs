//! Lambda `teams-worker`: reads the messages Graph notified about (from the `TeamsNotificationQueue`)
//! with each agent's token, and on a schedule renews chat subscriptions and syncs the Teams
//! directory (see `template.yaml`). Wiring only; the handling lives in [`teams_webhook::worker`].

use std::sync::Arc;

use anyhow::Context;
use lambda_runtime::{LambdaEvent, service_fn};
use mailroom::adapters::aws::sdk_config;
use mailroom::adapters::graph::{GraphConfig, aws_teams};
use serde_json::Value;
use teams_webhook::worker::Worker;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailroom::telemetry::init(true, "info");
    let worker = match init().await {
        Ok(w) => Arc::new(w),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "teams-worker cannot start");
            return Err(e.into());
        }
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let worker = worker.clone();
        async move { worker.handle(event.payload).await.map_err(lambda_runtime::Error::from) }
    }))
    .await
}

async fn init() -> anyhow::Result<Worker> {
    let table = std::env::var("MAILROOM_TABLE").context("environment variable MAILROOM_TABLE is required")?;
    let prefix =
        std::env::var("MAILROOM_SECRETS_PREFIX").context("environment variable MAILROOM_SECRETS_PREFIX is required")?;
    let config = GraphConfig::from_env()
        .context("reading the Teams settings")?
        .context("MAILROOM_GRAPH_TENANT is not set: Teams chat is not configured")?;
    let sdk = sdk_config().await;
    Ok(Worker { teams: aws_teams(&sdk, &table, &prefix, &config).await? })
}
