//! Lambda `teams-webhook`: Microsoft Graph's change and lifecycle notifications for Teams chats,
//! behind the `TeamsWebhookApi` HTTP API (see `template.yaml`). Wiring only: telemetry, settings
//! and clients are built once at INIT; the handling lives in [`teams_webhook::webhook`].

use std::sync::Arc;

use anyhow::Context;
use lambda_http::{Error, Request, service_fn};
use mailroom::adapters::aws::{SqsWorkQueue, sdk_config};
use mailroom::adapters::graph::DynamoTeamsStore;
use mailroom::usecases::teams::NotificationIntake;
use teams_webhook::webhook::Webhook;

#[tokio::main]
async fn main() -> Result<(), Error> {
    mailroom::telemetry::init(true, "info");
    let webhook = match init().await {
        Ok(w) => Arc::new(w),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "teams-webhook cannot start");
            return Err(e.into());
        }
    };
    lambda_http::run(service_fn(move |request: Request| {
        let webhook = webhook.clone();
        async move { Ok::<_, Error>(webhook.respond(request).await) }
    }))
    .await
}

fn required(name: &'static str) -> anyhow::Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .with_context(|| format!("environment variable {name} is required"))
}

async fn init() -> anyhow::Result<Webhook> {
    let table = required("MAILROOM_TABLE")?;
    let queue_url = required("MAILROOM_TEAMS_QUEUE_URL")?;
    let sdk = sdk_config().await;
    Ok(Webhook {
        intake: NotificationIntake {
            chats: Arc::new(DynamoTeamsStore::new(aws_sdk_dynamodb::Client::new(&sdk), &table)),
        },
        queue: Arc::new(SqsWorkQueue::new(aws_sdk_sqs::Client::new(&sdk), queue_url)),
    })
}
