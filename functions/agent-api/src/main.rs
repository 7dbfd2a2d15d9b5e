//! Lambda `agent-api`: the agent API (`mailroom::api::router`) behind the API Gateway HTTP API of
//! `template.yaml`, whose JWT authorizer verifies every token (issuer and audience are template
//! parameters). Wiring only: telemetry, typed settings, SDK clients and the routing service are
//! built once at INIT, where the agents and queues of `MAILROOM_CONFIG` are also seeded; how the
//! authorizer's claims reach the router lives in [`gateway`].

mod gateway;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mailroom::adapters::aws::routing::{RoutingSettings, aws_routing_service};
use mailroom::adapters::aws::{SdkConfig, endpoint_overridden, sdk_config};
use mailroom::adapters::channels::DynamoChannelStore;
use mailroom::adapters::dataverse::{AwsHandoffSettings, aws_handoff_service};
use mailroom::adapters::graph::{GraphConfig, aws_teams};
use mailroom::adapters::outbound::{AwsSendParts, SendSettings, SmtpSender, StoredChannels};
use mailroom::adapters::secrets::SecretsManagerStore;
use mailroom::api::auth::Authenticator;
use mailroom::api::{ApiModule, AppState, router};
use mailroom::app::mailbox_access;
use mailroom::config::{AppConfig, ConfigError};
use mailroom::domain::mailbox::NetworkPolicy;
use mailroom::ports::SystemClock;
use mailroom::usecases::channel_admin::ChannelAdmin;
use mailroom::usecases::channel_directory::ChannelDirectory;
use mailroom::usecases::routing::RoutingService;

/// The configuration (JSON or TOML) whose `agents` and `queues` are seeded at cold start.
const CONFIG_VAR: &str = "MAILROOM_CONFIG";
/// The JWT claim that carries the caller's role (e.g. `custom:role` with Cognito).
const ROLE_CLAIM_VAR: &str = "MAILROOM_JWT_ROLE_CLAIM";
const DEFAULT_ROLE_CLAIM: &str = "role";

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    mailroom::telemetry::init(true, "info");
    let app = match init().await {
        Ok(app) => app,
        Err(e) => {
            // Fails the INIT phase, with the setting named in the message.
            tracing::error!(error = format!("{e:#}"), "agent-api cannot start");
            return Err(e.into());
        }
    };
    lambda_http::run(app).await
}

async fn init() -> anyhow::Result<axum::Router> {
    let settings = RoutingSettings::from_env().context("reading the function's settings")?;
    let role_claim = std::env::var(ROLE_CLAIM_VAR)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_ROLE_CLAIM.to_owned());
    let config = match std::env::var(CONFIG_VAR) {
        Ok(text) => AppConfig::parse(&text, CONFIG_VAR).with_context(|| format!("reading {CONFIG_VAR}"))?,
        Err(_) => {
            tracing::warn!("{CONFIG_VAR} is not set: using the built-in demo configuration");
            AppConfig::demo()
        }
    };
    let sdk = sdk_config().await;
    let routing = aws_routing_service(&sdk, &settings);
    // Existing agents keep their presence; only changed directory entries are written.
    routing.seed(&config.agents, &config.queues).await.context("seeding agents and queues")?;
    let auth = Arc::new(Authenticator::Gateway { role_claim });
    let mut modules = Vec::new();
    // The CRM part (screen pop on accept, contacts, cases, AI handoff, Dynamics settings), when the
    // stack gives the function the handoff queue.
    let handoff = match handoff_settings()? {
        Some(handoff_settings) => {
            let handoff = Arc::new(aws_handoff_service(&sdk, &handoff_settings));
            modules.push(mailroom::api::crm::module(handoff.clone(), None, auth.clone()));
            Some(handoff)
        }
        None => None,
    };
    // Teams chat (contacts, connecting accounts, chats), when the stack names a tenant. The Graph
    // webhook routes are served by functions/teams-webhook, which API Gateway matches first.
    if let Some(graph) = GraphConfig::from_env()? {
        let table = std::env::var("MAILROOM_TABLE").context("MAILROOM_TABLE")?;
        let prefix = std::env::var("MAILROOM_SECRETS_PREFIX").context("MAILROOM_SECRETS_PREFIX")?;
        let teams = aws_teams(&sdk, &table, &prefix, &graph).await.context("building the Teams service")?;
        modules.push(mailroom::api::teams::module(teams, auth.clone()));
    }
    // Channel administration: the same channel store and secrets the poller reads, and "test
    // connection" under the cloud's network policy (no link-local, metadata or private addresses
    // unless `[mailbox]` allows them).
    let secrets_prefix = std::env::var("MAILROOM_SECRETS_PREFIX").context("MAILROOM_SECRETS_PREFIX")?;
    let channels = Arc::new(DynamoChannelStore::from_sdk_config(&sdk, &settings.table));
    let secrets = Arc::new(SecretsManagerStore::from_sdk_config(&sdk, &secrets_prefix));
    let access = mailbox_access(&config.mailbox, secrets.clone(), NetworkPolicy::CLOUD).context("reading [mailbox]")?;
    let admin = Arc::new(ChannelAdmin {
        store: channels.clone(),
        secrets,
        state: channels.clone(),
        directory: ChannelDirectory::stored(channels.clone(), Duration::from_secs(config.mailbox.channel_refresh_secs)),
        access,
        queues: config.queues.iter().map(|q| q.name.clone()).collect(),
        clock: Arc::new(SystemClock),
    });
    modules.push(mailroom::api::channels::module(admin, auth.clone()));
    // Mail: replies, forwards, new emails, follow-ups and profiles, composed here and sent by
    // functions/send-mail from the SendQueue. Both read each channel's outgoing side from the
    // channel store at every use, so what an admin sets above applies at once.
    modules.push(mail_module(&sdk, &config, StoredChannels::new(channels), routing.clone(), auth.clone())?);
    let state = AppState { routing, auth, handoff };
    Ok(gateway::with_verified_claims(router(state, modules)))
}

/// The handoff settings, when `MAILROOM_HANDOFF_QUEUE_URL` is set (then the rest are required).
fn handoff_settings() -> anyhow::Result<Option<AwsHandoffSettings>> {
    let get = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let Some(queue_url) = get("MAILROOM_HANDOFF_QUEUE_URL") else { return Ok(None) };
    let required = |name: &'static str| get(name).ok_or(ConfigError::MissingEnv { name });
    Ok(Some(AwsHandoffSettings {
        table: required("MAILROOM_TABLE")?,
        raw_bucket: required("MAILROOM_RAW_BUCKET")?,
        queue_url,
        dead_letter_url: required("MAILROOM_HANDOFF_DLQ_URL")?,
        secrets_prefix: required("MAILROOM_SECRETS_PREFIX")?,
    }))
}

/// The mail routes on AWS: the same records, queue and accounts as functions/send-mail. The
/// attachment limits come from `[outbound]` or `MAILROOM_OUTBOUND` (the `MailroomOutbound`
/// parameter), lowered to what fits through API Gateway.
fn mail_module(
    sdk: &SdkConfig,
    config: &AppConfig,
    channels: Arc<StoredChannels>,
    routing: RoutingService,
    auth: Arc<Authenticator>,
) -> anyhow::Result<ApiModule> {
    let settings = SendSettings::from_env().context("reading the mail settings")?;
    let env = |name: &str| std::env::var(name).ok();
    let outbound = config.outbound_settings(&env).context("reading the outbound settings")?;
    // Test emails and test-outgoing connect under the same policy as functions/send-mail.
    let policy = config.mailbox.network_policy(mailroom::domain::mailbox::NetworkPolicy::CLOUD);
    let smtp = SmtpSender::from_env().context("reading MAILROOM_SMTP_CA_FILE")?.with_policy(policy);
    let parts = AwsSendParts::from_sdk_config(sdk, &settings, smtp, endpoint_overridden());
    let limits = outbound.attachments.behind_gateway();
    if limits != outbound.attachments {
        tracing::warn!(
            max_file_bytes = limits.max_file_bytes,
            max_total_bytes = limits.max_total_bytes,
            "attachment limits lowered to what fits in one API Gateway request (10 MB, base64)"
        );
    }
    let (compose, profiles) = parts.api_services(sdk, &settings.table, channels, limits);
    Ok(mailroom::api::mail::module(Arc::new(compose), Arc::new(profiles), routing, auth))
}
