//! Lambda `offer`: the offer worker, fed by the `RoutingQueue` (see `template.yaml`). Wiring only:
//! telemetry, typed settings, SDK clients and the routing service are built once at INIT, where
//! the agents and queues of `MAILROOM_CONFIG` are also seeded; the event-to-use-case translation
//! lives in [`handler`].

mod handler;

use std::sync::Arc;

use anyhow::Context;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use mailroom::adapters::aws::routing::{RoutingSettings, aws_routing_service};
use mailroom::adapters::aws::sdk_config;
use mailroom::config::AppConfig;

use crate::handler::Handler;

/// The configuration (JSON or TOML) whose `agents` and `queues` are seeded at cold start.
const CONFIG_VAR: &str = "MAILROOM_CONFIG";

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mailroom::telemetry::init(true, "info");
    let handler = match init().await {
        Ok(handler) => Arc::new(handler),
        Err(e) => {
            // Fails the INIT phase, with the setting named in the message.
            tracing::error!(error = format!("{e:#}"), "offer cannot start");
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
    let settings = RoutingSettings::from_env().context("reading the function's settings")?;
    let config = match std::env::var(CONFIG_VAR) {
        Ok(text) => AppConfig::parse(&text, CONFIG_VAR).with_context(|| format!("reading {CONFIG_VAR}"))?,
        Err(_) => {
            tracing::warn!("{CONFIG_VAR} is not set: using the built-in demo configuration");
            AppConfig::demo()
        }
    };
    let routing = aws_routing_service(&sdk_config().await, &settings);
    // Existing agents keep their presence; only changed directory entries are written.
    routing.seed(&config.agents, &config.queues).await.context("seeding agents and queues")?;
    Ok(Handler { routing })
}
