//! The outbound-mail part of the agent API: reply (and reply-all), forward, a new email, a
//! follow-up, the transcript with delivery states, the agent's profile (signatures, date format,
//! the write-only SMTP password, a test email), and for admins each channel's SMTP password and
//! "test outgoing" (the outgoing server itself is set in `api::channels`).
//!
//! Sends answer 202: the message is composed, recorded and queued; the send worker delivers it
//! and the transcript shows how delivery went. An `Idempotency-Key` header makes a retried call
//! record and send once. Agents act only on their own interactions (403 otherwise).

use std::sync::Arc;

use axum::Json;
use axum::extract::{DefaultBodyLimit, FromRef, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiModule;
use super::auth::{Authenticator, Caller};
use super::error::ApiError;
use super::json::ValidJson;
use crate::domain::agent::Agent;
use crate::domain::ids::{ChannelName, InteractionId};
use crate::domain::outbound::SecretKey;
use crate::usecases::agent_profile::{ProfileChanges, ProfileError, ProfileService};
use crate::usecases::outbound::{
    ErrorKind, FollowUpInput, ForwardInput, NewEmailInput, OutboundError, OutboundService, Queued, ReplyInput,
    check_channel_connection, ensure_profile,
};
use crate::usecases::routing::RoutingService;

#[derive(Clone, FromRef)]
pub struct MailApiState {
    pub outbound: Arc<OutboundService>,
    pub profiles: Arc<ProfileService>,
    pub routing: RoutingService,
    pub auth: Arc<Authenticator>,
}

/// The routes of this module, as (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/interactions/{interaction_id}/reply"),
    ("post", "/v1/interactions/{interaction_id}/forward"),
    ("post", "/v1/interactions/{interaction_id}/follow-ups"),
    ("get", "/v1/interactions/{interaction_id}/transcript"),
    ("post", "/v1/emails"),
    ("get", "/v1/me/profile"),
    ("patch", "/v1/me/profile"),
    ("put", "/v1/me/profile/smtp-password"),
    ("delete", "/v1/me/profile/smtp-password"),
    ("post", "/v1/me/profile/test-email"),
    ("put", "/v1/admin/channels/{name}/outgoing/password"),
    ("delete", "/v1/admin/channels/{name}/outgoing/password"),
    ("post", "/v1/admin/channels/{name}/test-outgoing"),
];

/// Compose requests carry attachments in base64: 20 MB of files grow to about 27 MB.
pub const MAIL_BODY_LIMIT: usize = 28 * 1024 * 1024;

/// The outbound-mail module for `api::router`: `mailroom serve` passes the services of
/// `adapters::outbound::EmbeddedOutbound`.
pub fn module(
    outbound: Arc<OutboundService>,
    profiles: Arc<ProfileService>,
    routing: RoutingService,
    auth: Arc<Authenticator>,
) -> ApiModule {
    let state = MailApiState { outbound, profiles, routing, auth };
    let big = || DefaultBodyLimit::max(MAIL_BODY_LIMIT);
    let router = axum::Router::new()
        .route("/v1/interactions/{interaction_id}/reply", post(reply).layer(big()))
        .route("/v1/interactions/{interaction_id}/forward", post(forward).layer(big()))
        .route("/v1/interactions/{interaction_id}/follow-ups", post(follow_up).layer(big()))
        .route("/v1/interactions/{interaction_id}/transcript", get(transcript))
        .route("/v1/emails", post(new_email).layer(big()))
        .route("/v1/me/profile", get(profile).patch(update_profile))
        .route("/v1/me/profile/smtp-password", put(set_password).delete(clear_password))
        .route("/v1/me/profile/test-email", post(test_email))
        .route("/v1/admin/channels/{name}/outgoing/password", put(set_channel_password).delete(clear_channel_password))
        .route("/v1/admin/channels/{name}/test-outgoing", post(test_outgoing))
        .with_state(state);
    ApiModule { router, routes: ROUTES, openapi_paths: openapi_paths(), openapi_schemas: openapi_schemas() }
}

fn invalid(field: Option<&str>, message: String) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_field",
        message,
        field: Some(field.unwrap_or("body").to_owned()),
    }
}

impl From<OutboundError> for ApiError {
    fn from(e: OutboundError) -> Self {
        let field = e.field();
        let message = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => ApiError::not_found(message),
            ErrorKind::Forbidden => ApiError::forbidden(message),
            ErrorKind::Invalid => invalid(field, message),
            ErrorKind::TooLarge => ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "attachments_too_large",
                message,
                field: Some(field.unwrap_or("attachments").to_owned()),
            },
            ErrorKind::Unavailable => {
                tracing::warn!(error = %e, "outbound mail: a dependency is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a dependency is briefly unavailable; try again",
                )
            }
            ErrorKind::Internal => {
                tracing::error!(error = %e, "outbound mail failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the message could not be composed or recorded",
                )
            }
        }
    }
}

impl From<ProfileError> for ApiError {
    fn from(e: ProfileError) -> Self {
        let field = e.field();
        match e {
            ProfileError::Invalid { .. } => invalid(field, e.to_string()),
            ProfileError::Backend(e) => e.into(),
        }
    }
}

fn interaction_id(raw: &str) -> Result<InteractionId, ApiError> {
    InteractionId::parse(raw).map_err(|e| ApiError::field("interaction_id", e.to_string()))
}

fn channel_name(raw: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(raw).map_err(|e| ApiError::field("name", e.to_string()))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::field("Idempotency-Key", "the Idempotency-Key header must be plain ASCII"))
        })
        .transpose()
}

fn accepted(queued: &Queued) -> Response {
    (StatusCode::ACCEPTED, Json(json!(queued))).into_response()
}

/// The caller's agent record (403 for a token naming no known agent).
async fn agent(s: &MailApiState, caller: &Caller) -> Result<Agent, ApiError> {
    Ok(s.routing.agent(&caller.id).await?.agent)
}

/// An interaction the caller may read or follow up: theirs now, ended by them, or any for a
/// supervisor.
async fn check_access(s: &MailApiState, caller: &Caller, id: &InteractionId) -> Result<(), ApiError> {
    let interaction =
        s.routing.transcripts.interaction(id).await?.ok_or_else(|| ApiError::not_found("no such interaction"))?;
    let theirs = interaction.routing.agent.as_ref() == Some(&caller.id)
        || interaction.routing.ended_by.as_ref() == Some(&caller.id);
    if theirs || caller.role.supervises() { Ok(()) } else { Err(ApiError::forbidden("the interaction is not yours")) }
}

// ------------------------------------------------------------------ composing

async fn reply(
    State(s): State<MailApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<ReplyInput>,
) -> Result<Response, ApiError> {
    let id = interaction_id(&id)?;
    let request = body.into_request(idempotency_key(&headers)?)?;
    let agent = agent(&s, &caller).await?;
    Ok(accepted(&s.outbound.reply(&agent, &id, request).await?))
}

async fn forward(
    State(s): State<MailApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<ForwardInput>,
) -> Result<Response, ApiError> {
    let id = interaction_id(&id)?;
    let request = body.into_request(idempotency_key(&headers)?)?;
    let agent = agent(&s, &caller).await?;
    Ok(accepted(&s.outbound.forward(&agent, &id, request).await?))
}

async fn follow_up(
    State(s): State<MailApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<FollowUpInput>,
) -> Result<Response, ApiError> {
    let id = interaction_id(&id)?;
    let request = body.into_request(idempotency_key(&headers)?)?;
    check_access(&s, &caller, &id).await?;
    let agent = agent(&s, &caller).await?;
    Ok(accepted(&s.outbound.follow_up(&agent, &id, request).await?))
}

/// A new email opens an interaction assigned to its writer, who is busy with it until they end it
/// (`POST /v1/interactions/{id}/end` frees them as for any interaction).
async fn new_email(
    State(s): State<MailApiState>,
    caller: Caller,
    headers: HeaderMap,
    ValidJson(body): ValidJson<NewEmailInput>,
) -> Result<Response, ApiError> {
    let request = body.into_request(idempotency_key(&headers)?)?;
    let agent = agent(&s, &caller).await?;
    let queued = s.outbound.new_email(&agent, request).await?;
    if !queued.repeated {
        s.routing.start_own_email(&agent.id).await?;
    }
    Ok(accepted(&queued))
}

async fn transcript(
    State(s): State<MailApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = interaction_id(&id)?;
    check_access(&s, &caller, &id).await?;
    let agent = agent(&s, &caller).await?;
    let profile = ensure_profile(s.profiles.profiles.as_ref(), &agent, s.outbound.clock.now()).await?;
    let messages = s.outbound.transcript(&id, &profile.date_format).await?;
    Ok(Json(json!({ "interaction_id": id, "messages": messages })))
}

// ------------------------------------------------------------------ the agent's profile

async fn profile(State(s): State<MailApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let agent = agent(&s, &caller).await?;
    Ok(Json(json!(s.profiles.profile(&agent).await?)))
}

async fn update_profile(
    State(s): State<MailApiState>,
    caller: Caller,
    ValidJson(changes): ValidJson<ProfileChanges>,
) -> Result<Json<Value>, ApiError> {
    let agent = agent(&s, &caller).await?;
    Ok(Json(json!(s.profiles.update(&agent, changes).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

async fn set_password(
    State(s): State<MailApiState>,
    caller: Caller,
    ValidJson(body): ValidJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    let agent = agent(&s, &caller).await?;
    s.profiles.set_smtp_password(&agent, SecretString::from(body.password)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_password(State(s): State<MailApiState>, caller: Caller) -> Result<StatusCode, ApiError> {
    let agent = agent(&s, &caller).await?;
    s.profiles.clear_smtp_password(&agent).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestEmailBody {
    channel: String,
}

/// Always 200 with a report when the channel exists: `sent` says whether it went, `detail` why.
async fn test_email(
    State(s): State<MailApiState>,
    caller: Caller,
    ValidJson(body): ValidJson<TestEmailBody>,
) -> Result<Json<Value>, ApiError> {
    let channel = ChannelName::parse(&body.channel).map_err(|e| ApiError::field("channel", e.to_string()))?;
    let agent = agent(&s, &caller).await?;
    Ok(Json(json!(s.profiles.send_test_email(&agent, &channel).await?)))
}

// ------------------------------------------------------------------ channels' outgoing side (admin)

async fn set_channel_password(
    State(s): State<MailApiState>,
    caller: Caller,
    Path(name): Path<String>,
    ValidJson(body): ValidJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let name = channel_name(&name)?;
    if s.profiles.channels.sending_channel(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("no channel {name} is configured")));
    }
    let password = SecretString::from(body.password);
    let v = password.expose_secret();
    if v.is_empty() || v.len() > 1024 || v.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(invalid(Some("password"), "it must be 1 to 1024 characters without line breaks".into()));
    }
    s.profiles.secrets.put(&SecretKey::ChannelSmtpPassword(name.clone()).secret_name(), &password).await?;
    tracing::info!(channel_id = %name, admin = %caller.id, "channel SMTP password set");
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_channel_password(
    State(s): State<MailApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let name = channel_name(&name)?;
    s.profiles.secrets.delete(&SecretKey::ChannelSmtpPassword(name).secret_name()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn test_outgoing(
    State(s): State<MailApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let name = channel_name(&name)?;
    let p = &s.profiles;
    let report = check_channel_connection(p.channels.as_ref(), p.secrets.as_ref(), p.sender.as_ref(), &name).await?;
    Ok(Json(json!(report)))
}

// ------------------------------------------------------------------ OpenAPI

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn errors() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (code, name) in
        [("400", "BadRequest"), ("401", "Unauthorized"), ("403", "Forbidden"), ("404", "NotFound"), ("409", "Conflict")]
    {
        m.insert(code.into(), json!({ "$ref": format!("#/components/responses/{name}") }));
    }
    m.insert(
        "422".into(),
        json!({ "description": "A field is not acceptable (`error.field` names it)",
                "content": { "application/json": { "schema": schema("Error") } } }),
    );
    m
}

fn ok(name: &str, description: &str) -> Value {
    let mut m = errors();
    m.insert(
        "200".into(),
        json!({ "description": description, "content": { "application/json": { "schema": schema(name) } } }),
    );
    Value::Object(m)
}

fn no_content(description: &str) -> Value {
    let mut m = errors();
    m.insert("204".into(), json!({ "description": description }));
    Value::Object(m)
}

fn queued() -> Value {
    let mut m = errors();
    m.insert(
        "202".into(),
        json!({ "description": "Composed, recorded and queued for sending",
                "content": { "application/json": { "schema": schema("Queued") } } }),
    );
    m.insert("413".into(), json!({ "description": "Attachments over the limits (field `attachments`)" }));
    Value::Object(m)
}

fn body(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema(name) } } })
}

fn id_param() -> Value {
    json!({ "name": "interaction_id", "in": "path", "required": true, "schema": { "type": "string" } })
}

fn name_param() -> Value {
    json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" }, "description": "The channel" })
}

fn idempotency_param() -> Value {
    json!({ "name": "Idempotency-Key", "in": "header", "required": false, "schema": { "type": "string", "maxLength": 200 },
            "description": "The same key composes the same message: a retried call records and sends once." })
}

fn openapi_paths() -> Value {
    let compose = |summary: &str, description: &str, schema_name: &str, with_id: bool| {
        let mut params = vec![idempotency_param()];
        if with_id {
            params.insert(0, id_param());
        }
        json!({ "post": { "summary": summary, "description": description, "parameters": params,
                          "requestBody": body(schema_name), "responses": queued() } })
    };
    json!({
        "/v1/interactions/{interaction_id}/reply": compose(
            "Reply to the customer (reply-all with \"all\": true)",
            "Only on an interaction assigned to you. Threads under the message answered (`in_reply_to`, default the newest customer message), quoting it.",
            "Reply", true),
        "/v1/interactions/{interaction_id}/forward": compose(
            "Forward a message of the interaction, original attached",
            "Only on an interaction assigned to you. The recipients do not join the conversation.",
            "Forward", true),
        "/v1/interactions/{interaction_id}/follow-ups": compose(
            "Send a follow-up on an interaction (even an ended one), recorded with it",
            "On an interaction assigned to you or ended by you (supervisors: any). It is not re-queued.",
            "FollowUp", true),
        "/v1/emails": compose(
            "Write a new email: it opens a new interaction assigned to you",
            "You are busy with it until you end it (POST /v1/interactions/{interaction_id}/end).",
            "NewEmail", false),
        "/v1/interactions/{interaction_id}/transcript": { "get": {
            "summary": "The interaction's messages with each sent message's delivery state, dates in your profile's format",
            "parameters": [id_param()], "responses": ok("Transcript", "The transcript") } },
        "/v1/me/profile": {
            "get": { "summary": "Your profile (the SMTP password never; only whether it is set)", "responses": ok("Profile", "The profile") },
            "patch": { "summary": "Change your profile: absent fields stay, an empty string clears",
                       "requestBody": body("ProfileChanges"), "responses": ok("Profile", "The changed profile") } },
        "/v1/me/profile/smtp-password": {
            "put": { "summary": "Set the password of your own account on the channel's SMTP server (write-only)",
                     "requestBody": body("Password"), "responses": no_content("Stored") },
            "delete": { "summary": "Remove your SMTP password", "responses": no_content("Removed") } },
        "/v1/me/profile/test-email": { "post": {
            "summary": "Send yourself a test email through the path your mail takes on a channel",
            "description": "Always 200 with a report: `sent`, the path, and the server's exact words when it failed.",
            "requestBody": body("TestEmail"), "responses": ok("TestEmailReport", "What happened") } },
        "/v1/admin/channels/{name}/outgoing/password": {
            "put": { "summary": "Set the password of the channel's account on its SMTP server (admin, write-only)",
                     "parameters": [name_param()], "requestBody": body("Password"), "responses": no_content("Stored") },
            "delete": { "summary": "Remove the channel's SMTP password (admin)", "parameters": [name_param()], "responses": no_content("Removed") } },
        "/v1/admin/channels/{name}/test-outgoing": { "post": {
            "summary": "Test a channel's outgoing server: connect, secure and sign in, sending nothing (admin)",
            "parameters": [name_param()], "responses": ok("ConnectionReport", "What answered, or the exact failure") } },
    })
}

fn openapi_schemas() -> Value {
    let string = json!({ "type": "string" });
    let opt = json!({ "type": ["string", "null"] });
    let mailboxes = json!({ "type": "array", "items": { "oneOf": [
        { "type": "string", "format": "email" },
        { "type": "object", "required": ["address"], "properties": { "address": string, "name": string } } ] } });
    let draft = json!({
        "text": string, "html": { "type": "string", "description": "Sanitized with the signature allow-list" },
        "cc": mailboxes, "bcc": { "type": "array", "items": string },
        "attachments": { "type": "array", "items": { "type": "object", "required": ["file_name", "content_base64"],
            "properties": { "file_name": string, "content_type": string, "content_base64": string } },
            "description": "At most 10 files, 10 MB each, 20 MB together" },
        "send_as": { "type": "string", "enum": ["channel", "agent"] }, "from": string,
        "signature": { "type": "string", "description": "A signature name, \"none\", or absent for your default" } });
    let with = |extra: Value, required: &[&str]| {
        let mut props = draft.as_object().cloned().unwrap_or_default();
        props.extend(extra.as_object().cloned().unwrap_or_default());
        json!({ "type": "object", "additionalProperties": false, "required": required, "properties": props })
    };
    json!({
        "Reply": with(json!({ "all": { "type": "boolean" }, "in_reply_to": string }), &[]),
        "Forward": with(json!({ "to": mailboxes, "message_id": string }), &["to"]),
        "NewEmail": with(json!({ "channel": string, "to": mailboxes, "subject": string }), &["channel", "to", "subject"]),
        "FollowUp": with(json!({ "subject": string }), &[]),
        "Queued": { "type": "object", "properties": { "interaction_id": string, "message_id": string,
            "kind": { "type": "string", "enum": ["reply", "reply_all", "forward", "new_email", "follow_up"] },
            "state": string, "repeated": { "type": "boolean", "description": "An earlier call with this Idempotency-Key sent it" } } },
        "Transcript": { "type": "object", "properties": { "interaction_id": string, "messages": { "type": "array", "items": {
            "type": "object", "properties": { "direction": { "type": "string", "enum": ["inbound", "outbound"] }, "message_id": opt,
                "from": string, "from_name": opt, "to": { "type": "array", "items": string }, "cc": { "type": "array", "items": string },
                "subject": string, "at": { "type": "string", "format": "date-time" }, "date": string, "text": string,
                "attachments": { "type": "array", "items": { "type": "object" } },
                "delivery": { "type": ["object", "null"], "properties": { "kind": string, "agent": string, "state": string,
                    "attempts": { "type": "integer" }, "error": opt, "accepted": opt } } } } } } },
        "Profile": { "type": "object", "properties": { "agent_id": string, "workplace_email": opt, "display_name": opt,
            "smtp_user_id": opt, "smtp_password_set": { "type": "boolean" }, "date_format": string,
            "signatures": { "type": "array", "items": { "type": "object", "properties": { "name": string, "html": string } } },
            "default_signature": opt, "default_from": { "type": "string", "enum": ["channel", "agent"] },
            "interaction_sound": string, "interaction_sounds": { "type": "array", "items": string } } },
        "ProfileChanges": { "type": "object", "additionalProperties": false, "properties": {
            "workplace_email": string, "display_name": string, "smtp_user_id": string,
            "date_format": { "type": "string", "description": "iso, european, us, long or a strftime pattern" },
            "signatures": { "type": "array", "items": { "type": "object", "required": ["name", "html"], "properties": { "name": string, "html": string } } },
            "default_signature": string, "default_from": { "type": "string", "enum": ["channel", "agent"] }, "interaction_sound": string } },
        "Password": { "type": "object", "required": ["password"], "additionalProperties": false, "properties": { "password": string } },
        "TestEmail": { "type": "object", "required": ["channel"], "additionalProperties": false, "properties": { "channel": string } },
        "TestEmailReport": { "type": "object", "properties": { "sent": { "type": "boolean" }, "path": string, "from": opt, "to": opt,
            "message_id": opt, "detail": string,
            "failure": { "type": ["string", "null"], "enum": ["no_password", "not_configured", "rejected", "account", "temporary", null] } } },
        "ConnectionReport": { "type": "object", "properties": { "ok": { "type": "boolean" }, "server": string, "detail": string } },
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::domain::presence::Presence;

    use mail_parser::MessageParser;

    use super::*;
    use crate::adapters::embedded::EmbeddedBackend;
    use crate::adapters::outbound::outbox::OutboxSender;
    use crate::adapters::outbound::{EmbeddedOutbound, OutboundConfig, SmtpSender, StoredChannels};
    use crate::api::auth::mint_local_token;
    use crate::config::AppConfig;
    use crate::domain::agent::Role;
    use crate::domain::ids::AgentId;
    use crate::domain::interaction::{Interaction, InteractionState};
    use crate::domain::journal::Source;
    use crate::domain::outbound::ChannelOutbound;
    use crate::ports::routing::{AgentRecord, RoutingStore};
    use crate::usecases::ingest::InboundEmail;
    use crate::usecases::send_mail::SendWorker;

    const SECRET: &[u8] = b"mail-api-test-secret-0123456789abcdef";

    const QUESTION: &[u8] = b"From: Alice Doe <alice@example.org>\r\nTo: support@example.com\r\nCc: carol@example.org\r\nSubject: Broken vase\r\nMessage-ID: <q1@example.org>\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nMy vase arrived broken.\r\n";

    struct Setup {
        base: String,
        http: reqwest::Client,
        routing: RoutingService,
        worker: SendWorker,
        outbox: OutboxSender,
        interaction: InteractionId,
        _dir: tempfile::TempDir,
    }

    /// The demo (ana, ben, sam, admin ada; channel support) on an embedded backend in a temp
    /// dir, with Alice's email assigned to ana, served on a local port.
    async fn setup(outbound: OutboundConfig) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let backend = EmbeddedBackend::open(dir.path()).unwrap();
        let config = AppConfig::demo();
        let routing = crate::app::embedded_routing_service(&backend);
        routing.seed(&config.agents, &config.queues).await.unwrap();
        let ingest = crate::app::embedded_ingest_service(&config, &backend).unwrap();
        let outcome = ingest.ingest(InboundEmail::new(QUESTION.to_vec(), Source::Smtp)).await.unwrap();
        let interaction = outcome.entry.interaction_id.clone().expect("an interaction");
        let ana = AgentId::parse("ana").unwrap();
        let assign = move |i: Option<&mut Interaction>, _: Option<&mut AgentRecord>| {
            let i = i.expect("the interaction exists");
            i.state = InteractionState::Assigned;
            i.routing.agent = Some(ana.clone());
            Ok(())
        };
        backend.transition(Some(&interaction), None, &assign).await.unwrap().unwrap();

        // The channels as `mailroom serve` has them: seeded into the channel store (with the
        // outgoing side of `outbound`), administered by the channels module beside this one.
        let config = AppConfig { outbound: Some(outbound.clone()), ..config };
        let mailboxes = crate::app::embedded_mailboxes(&config, &backend).await.unwrap();
        let secrets = Arc::new(crate::adapters::secrets::EmbeddedSecretStore::open(&backend).unwrap());
        let outbox = OutboxSender::in_data_dir(dir.path());
        let smtp = SmtpSender::new(None, Duration::from_secs(5)).unwrap();
        let mail = EmbeddedOutbound::build(
            &backend,
            StoredChannels::new(mailboxes.store.clone()),
            outbound.attachments,
            secrets,
            smtp,
            Some(Arc::new(outbox.clone())),
        )
        .unwrap();
        let auth = Arc::new(Authenticator::local(SECRET));
        let m = module(Arc::new(mail.outbound), Arc::new(mail.profiles), routing.clone(), auth.clone());
        let admin = crate::api::channels::module(mailboxes.admin.clone(), auth.clone());
        let app =
            crate::api::router(crate::api::AppState { routing: routing.clone(), auth, handoff: None }, vec![m, admin]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Setup { base, http: reqwest::Client::new(), routing, worker: mail.worker, outbox, interaction, _dir: dir }
    }

    impl Setup {
        fn token(&self, agent: &str, role: Role) -> String {
            mint_local_token(SECRET, &AgentId::parse(agent).unwrap(), role, chrono::Duration::hours(1))
        }

        async fn call(&self, method: &str, agent: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
            self.call_with(method, agent, Role::Agent, path, body, None).await
        }

        async fn call_with(
            &self,
            method: &str,
            agent: &str,
            role: Role,
            path: &str,
            body: Option<Value>,
            key: Option<&str>,
        ) -> (StatusCode, Value) {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request =
                self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.token(agent, role));
            if let Some(body) = body {
                request = request.json(&body);
            }
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            let response = request.send().await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let text = response.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }

        fn outbox_files(&self) -> Vec<std::path::PathBuf> {
            match std::fs::read_dir(self.outbox.dir()) {
                Ok(entries) => {
                    let mut files: Vec<_> = entries
                        .map(|e| e.unwrap().path())
                        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                        .collect();
                    files.sort();
                    files
                }
                Err(_) => Vec::new(),
            }
        }
    }

    #[tokio::test]
    async fn a_reply_is_queued_sent_to_the_outbox_once_and_shown_in_the_transcript() {
        let s = setup(OutboundConfig::default()).await;
        let path = format!("/v1/interactions/{}/reply", s.interaction);
        let body = json!({ "text": "Dear Alice,\n\nA new vase is on its way.", "all": true });
        let (status, queued) =
            s.call_with("POST", "ana", Role::Agent, &path, Some(body.clone()), Some("reply-1")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
        assert_eq!((queued["kind"].as_str(), queued["state"].as_str()), (Some("reply_all"), Some("queued")));
        assert_eq!(queued["repeated"], json!(false));

        let report = s.worker.step(10, Duration::ZERO).await.unwrap();
        assert_eq!(report.received, 1);
        let files = s.outbox_files();
        assert_eq!(files.len(), 1, "{files:?}");
        let raw = std::fs::read(&files[0]).unwrap();
        let message = MessageParser::default().parse(&raw).expect("an email");
        let first = |a: Option<&mail_parser::Address<'_>>| {
            a.and_then(|a| a.first()).and_then(|m| m.address()).map(str::to_owned).unwrap_or_default()
        };
        assert_eq!(first(message.from()), "support@example.com");
        assert_eq!(first(message.to()), "alice@example.org");
        assert_eq!(first(message.cc()), "carol@example.org");
        assert_eq!(message.in_reply_to().as_text(), Some("q1@example.org"));
        let subject = message.subject().unwrap_or_default();
        assert!(subject.starts_with("Re: Broken vase") && subject.contains("[MR-"), "{subject}");
        assert!(message.body_text(0).unwrap_or_default().contains("A new vase is on its way."));
        assert_eq!(
            message.message_id().map(|id| format!("{id}.eml")),
            files[0].file_name().and_then(|n| n.to_str()).map(str::to_owned)
        );

        // The same Idempotency-Key: recorded and sent once.
        let (status, again) = s.call_with("POST", "ana", Role::Agent, &path, Some(body), Some("reply-1")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        assert_eq!(
            (again["repeated"].clone(), again["message_id"].clone()),
            (json!(true), queued["message_id"].clone())
        );
        s.worker.step(10, Duration::ZERO).await.unwrap();
        assert_eq!(s.outbox_files().len(), 1);

        let (status, transcript) =
            s.call("GET", "ana", &format!("/v1/interactions/{}/transcript", s.interaction), None).await;
        assert_eq!(status, StatusCode::OK, "{transcript}");
        let messages = transcript["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "{transcript}");
        assert_eq!(messages[1]["direction"], json!("outbound"));
        assert_eq!(messages[1]["delivery"]["state"], json!("sent"), "{transcript}");
    }

    #[tokio::test]
    async fn agents_act_only_on_their_own_interactions() {
        let s = setup(OutboundConfig::default()).await;
        let id = &s.interaction;
        for (method, path, body) in [
            ("POST", format!("/v1/interactions/{id}/reply"), Some(json!({ "text": "hi" }))),
            ("POST", format!("/v1/interactions/{id}/forward"), Some(json!({ "to": ["claims@example.net"] }))),
            ("POST", format!("/v1/interactions/{id}/follow-ups"), Some(json!({ "text": "hi" }))),
            ("GET", format!("/v1/interactions/{id}/transcript"), None),
        ] {
            let (status, answer) = s.call(method, "ben", &path, body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        }
        // A supervisor reads any transcript; only admins test channels.
        let path = format!("/v1/interactions/{id}/transcript");
        assert_eq!(s.call_with("GET", "sam", Role::Supervisor, &path, None, None).await.0, StatusCode::OK);
        let path = "/v1/admin/channels/support/test-outgoing";
        assert_eq!(s.call("POST", "ana", path, None).await.0, StatusCode::FORBIDDEN);
        let (status, report) = s.call_with("POST", "ada", Role::Admin, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["ok"], json!(true), "{report}");
        let (status, outgoing) =
            s.call_with("GET", "ada", Role::Admin, "/v1/admin/channels/support/outgoing", None, None).await;
        assert_eq!(status, StatusCode::OK, "{outgoing}");
        assert_eq!(outgoing["server"]["kind"], json!("internal"));
    }

    #[tokio::test]
    async fn bad_input_names_the_field() {
        let s = setup(OutboundConfig::default()).await;
        let (status, answer) = s
            .call(
                "POST",
                "ana",
                "/v1/emails",
                Some(json!({ "channel": "support", "to": ["not an address"], "subject": "Hello", "text": "hi" })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"]["field"], json!("to"), "{answer}");
        let path = format!("/v1/interactions/{}/forward", s.interaction);
        let (status, answer) = s.call("POST", "ana", &path, Some(json!({ "to": [], "text": "fyi" }))).await;
        assert_eq!((status, answer["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("to")));
        let path = format!("/v1/interactions/{}/reply", s.interaction);
        let (status, answer) = s.call("POST", "ana", &path, Some(json!({ "text": "hi", "colour": "red" }))).await;
        assert_eq!((status, answer["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("colour")));
        // Our own address never receives our mail.
        let (status, answer) =
            s.call("POST", "ana", &path, Some(json!({ "text": "hi", "cc": ["support@example.com"] }))).await;
        assert_eq!((status, answer["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("cc")));
        // A body over the global 256 KB limit is fine here (attachments travel in base64).
        let big = "x".repeat(400 * 1024);
        let (status, answer) = s.call("POST", "ana", &path, Some(json!({ "text": big }))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }

    #[tokio::test]
    async fn a_new_email_opens_an_interaction_and_makes_the_agent_busy() {
        let s = setup(OutboundConfig::default()).await;
        let body = json!({ "channel": "support", "to": [{ "address": "bob@example.org", "name": "Bob" }],
                           "subject": "Your refund", "text": "Your refund was paid today." });
        let (status, queued) = s.call_with("POST", "ana", Role::Agent, "/v1/emails", Some(body), Some("new-1")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
        assert_eq!(queued["kind"], json!("new_email"));
        let ana = s.routing.agent(&AgentId::parse("ana").unwrap()).await.unwrap();
        assert_eq!((ana.state.presence, ana.state.active), (Presence::Busy, 1));
        // Ending it frees her.
        let id = queued["interaction_id"].as_str().unwrap();
        let (status, ended) = s.call("POST", "ana", &format!("/v1/interactions/{id}/end"), None).await;
        assert_eq!(status, StatusCode::OK, "{ended}");
        let ana = s.routing.agent(&AgentId::parse("ana").unwrap()).await.unwrap();
        assert_eq!((ana.state.presence, ana.state.active), (Presence::Available, 0));
        s.worker.step(10, Duration::ZERO).await.unwrap();
        assert_eq!(s.outbox_files().len(), 1);
    }

    #[tokio::test]
    async fn a_disabled_channel_still_answers_but_starts_no_new_conversations() {
        let s = setup(OutboundConfig::default()).await;
        let (status, _) =
            s.call_with("POST", "ada", Role::Admin, "/v1/admin/channels/support/disable", None, None).await;
        assert_eq!(status, StatusCode::OK);
        let body = json!({ "channel": "support", "to": ["bob@example.org"], "subject": "Hi", "text": "hi" });
        let (status, answer) = s.call("POST", "ana", "/v1/emails", Some(body)).await;
        assert_eq!((status, answer["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("channel")));
        assert!(answer["error"]["message"].as_str().unwrap().contains("disabled"), "{answer}");
        let path = format!("/v1/interactions/{}/reply", s.interaction);
        let (status, queued) = s.call("POST", "ana", &path, Some(json!({ "text": "Still here." }))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
        s.worker.step(10, Duration::ZERO).await.unwrap();
        assert_eq!(s.outbox_files().len(), 1, "the reply went out");
    }

    #[tokio::test]
    async fn the_profile_never_shows_the_password_and_the_test_email_says_what_is_missing() {
        let smtp: ChannelOutbound = serde_json::from_value(json!({ "agent_accounts": true,
            "server": { "kind": "smtp", "host": "127.0.0.1", "port": 1, "security": "starttls" } }))
        .unwrap();
        let outbound =
            OutboundConfig { channels: [(ChannelName::parse("support").unwrap(), smtp)].into(), ..Default::default() };
        let s = setup(outbound).await;
        let (status, profile) = s
            .call(
                "PATCH",
                "ana",
                "/v1/me/profile",
                Some(json!({ "signatures": [{ "name": "default", "html": "<p>Ana<script>x()</script></p>" }],
                             "default_signature": "default", "date_format": "european",
                             "smtp_user_id": "ana", "default_from": "agent" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{profile}");
        assert_eq!(profile["date_format"], json!("%d/%m/%Y %H:%M"), "european is shown as its pattern");
        assert!(!profile.to_string().contains("script"), "{profile}");

        let (status, report) =
            s.call("POST", "ana", "/v1/me/profile/test-email", Some(json!({ "channel": "support" }))).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!((report["sent"].clone(), report["failure"].clone()), (json!(false), json!("no_password")));
        assert!(report["detail"].as_str().unwrap().contains("password"), "{report}");

        let (status, _) =
            s.call("PUT", "ana", "/v1/me/profile/smtp-password", Some(json!({ "password": "hunter2-Secret" }))).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, profile) = s.call("GET", "ana", "/v1/me/profile", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(profile["smtp_password_set"], json!(true));
        assert!(!profile.to_string().contains("hunter2"), "{profile}");
        let (status, answer) =
            s.call("PUT", "ana", "/v1/me/profile/smtp-password", Some(json!({ "password": "a\nb" }))).await;
        assert_eq!((status, answer["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("password")));
        assert_eq!(s.call("DELETE", "ana", "/v1/me/profile/smtp-password", None).await.0, StatusCode::NO_CONTENT);
        let (_, profile) = s.call("GET", "ana", "/v1/me/profile", None).await;
        assert_eq!(profile["smtp_password_set"], json!(false));

        // The channel's own password: write-only, admin only.
        let path = "/v1/admin/channels/support/outgoing/password";
        let body = json!({ "password": "channel-Secret" });
        assert_eq!(s.call("PUT", "ana", path, Some(body.clone())).await.0, StatusCode::FORBIDDEN);
        let (status, _) = s.call_with("PUT", "ada", Role::Admin, path, Some(body), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, outgoing) =
            s.call_with("GET", "ada", Role::Admin, "/v1/admin/channels/support/outgoing", None, None).await;
        assert_eq!(
            (outgoing["server"]["kind"].clone(), outgoing["password_set"].clone()),
            (json!("smtp"), json!(true))
        );
        assert!(!outgoing.to_string().contains("channel-Secret"));
    }

    #[tokio::test]
    async fn the_test_email_through_the_internal_server_lands_in_the_outbox() {
        let s = setup(OutboundConfig::default()).await;
        let (status, report) =
            s.call("POST", "ana", "/v1/me/profile/test-email", Some(json!({ "channel": "support" }))).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["sent"], json!(true), "{report}");
        assert_eq!(s.outbox_files().len(), 1);
    }

    #[tokio::test]
    async fn every_route_is_documented_and_served_in_the_document() {
        let doc = json!({ "paths": openapi_paths() });
        let problems = crate::api::openapi::check_routes(&doc, ROUTES);
        assert!(problems.is_empty(), "{problems:?}");
        let s = setup(OutboundConfig::default()).await;
        let document: Value =
            s.http.get(format!("{}/v1/openapi.json", s.base)).send().await.unwrap().json().await.unwrap();
        // This module's routes and the channel admin's beside it (the outgoing server is set
        // there, its password here): every one in the served document.
        for (method, path) in ROUTES.iter().chain(crate::api::channels::ROUTES) {
            assert!(document["paths"][path][method].is_object(), "{method} {path}");
        }
        for name in ["Reply", "Queued", "Profile", "ConnectionReport", "ChannelOutgoing", "OutboundInput"] {
            assert!(document["components"]["schemas"][name].is_object(), "{name}");
        }
    }
}
