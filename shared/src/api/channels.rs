//! The channel administration part of the admin API: list, read, create, update, disable and
//! enable channels, "test connection" for a channel's incoming server (IMAP or POP3), and the
//! channel's outgoing server (read and set; its password and "test outgoing" are in `api::mail`).
//!
//! Admin role only (403 otherwise). Passwords and client secrets are write-only: a password is
//! entered twice (`password`, `password_confirmation`), stored in the secret store, and never
//! appears in an answer or a log line; a view says only whether one is set. Errors name the
//! field at fault (`mailbox.auth.password_confirmation`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::{FromRef, Path, Query};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiModule;
use super::auth::{Authenticator, Caller};
use super::error::ApiError;
use super::json::ValidJson;
use super::openapi::ok as openapi_ok;
use crate::usecases::channel_admin::{
    AdminError, ChannelAdmin, ChannelInput, ConnectionTestRequest, MailboxInput, OutboundInput,
};

#[derive(Clone, FromRef)]
pub struct ChannelsApiState {
    pub admin: Arc<ChannelAdmin>,
    pub auth: Arc<Authenticator>,
}

/// The routes of this module, as (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/admin/channels"),
    ("post", "/v1/admin/channels"),
    ("post", "/v1/admin/channels/test-connection"),
    ("get", "/v1/admin/channels/{name}"),
    ("put", "/v1/admin/channels/{name}"),
    ("post", "/v1/admin/channels/{name}/disable"),
    ("post", "/v1/admin/channels/{name}/enable"),
    ("post", "/v1/admin/channels/{name}/test-connection"),
    ("get", "/v1/admin/channels/{name}/outgoing"),
    ("put", "/v1/admin/channels/{name}/outgoing"),
];

/// The channel admin module for `api::router`: `mailroom serve` passes the `ChannelAdmin` of
/// `app::embedded_mailboxes`.
pub fn module(admin: Arc<ChannelAdmin>, auth: Arc<Authenticator>) -> ApiModule {
    let state = ChannelsApiState { admin, auth };
    let router = axum::Router::new()
        .route("/v1/admin/channels", get(list).post(create))
        .route("/v1/admin/channels/test-connection", post(test_unsaved))
        .route("/v1/admin/channels/{name}", get(channel).put(update))
        .route("/v1/admin/channels/{name}/disable", post(disable))
        .route("/v1/admin/channels/{name}/enable", post(enable))
        .route("/v1/admin/channels/{name}/test-connection", post(test_saved))
        .route("/v1/admin/channels/{name}/outgoing", get(outgoing).put(set_outgoing))
        .with_state(state);
    ApiModule { router, routes: ROUTES, openapi_paths: openapi_paths(), openapi_schemas: openapi_schemas() }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let message = e.to_string();
        match e {
            AdminError::Invalid { field, problem } => ApiError::field(field, problem),
            AdminError::NotFound(_) => ApiError::not_found(message),
            AdminError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            AdminError::Backend(e) => e.into(),
        }
    }
}

/// The fields whose values are secrets: a parse error about them must not echo what was sent.
const SECRET_FIELDS: &[&str] = &["password", "password_confirmation", "client_secret"];

/// A body parse error, without the offending value when it may be a secret: serde quotes it
/// (`invalid type: integer `1234`, expected a string`), and errors inside the tagged `auth`
/// object are reported at `mailbox.auth`, not at the secret's own field.
fn scrub(mut e: ApiError) -> ApiError {
    let about_secret = e.field.as_deref().is_some_and(|f| {
        f == "auth"
            || f.ends_with(".auth")
            || f.contains("auth.")
            || SECRET_FIELDS.iter().any(|s| f == *s || f.ends_with(&format!(".{s}")))
    });
    let quotes_a_value = e.message.starts_with("invalid type") || e.message.starts_with("invalid value");
    if about_secret && quotes_a_value {
        let kind = e.message.split(':').next().unwrap_or("invalid value").to_owned();
        e.message = match e.message.rsplit_once(", expected ") {
            Some((_, expected)) => format!("{kind}, expected {expected} (the value sent is not repeated)"),
            None => format!("{kind} (the value sent is not repeated)"),
        };
    }
    e
}

/// The admin check comes before the body is looked at: an agent gets 403, whatever they send.
fn admin_body<T>(caller: &Caller, body: Result<ValidJson<T>, ApiError>) -> Result<T, ApiError> {
    caller.require_admin()?;
    body.map(|ValidJson(b)| b).map_err(scrub)
}

async fn list(State(s): State<ChannelsApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!({ "channels": s.admin.list().await? })))
}

async fn create(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    body: Result<ValidJson<ChannelInput>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let input = admin_body(&caller, body)?;
    let view = s.admin.create(input).await?;
    tracing::info!(channel_id = %view.name, agent_id = %caller.id, "channel created through the admin API");
    Ok((StatusCode::CREATED, Json(json!(view))))
}

async fn channel(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!(s.admin.get(&name).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateParams {
    /// The `version` of the view the change was made on; a different stored version is a 409.
    version: Option<u64>,
}

async fn update(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<UpdateParams>, axum::extract::rejection::QueryRejection>,
    body: Result<ValidJson<ChannelInput>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let input = admin_body(&caller, body)?;
    let Query(p) = params.map_err(|e| ApiError::field("version", e.body_text()))?;
    let view = s.admin.update(&name, input, p.version).await?;
    tracing::info!(channel_id = %view.name, agent_id = %caller.id, "channel updated through the admin API");
    Ok(Json(json!(view)))
}

async fn disable(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!(s.admin.set_enabled(&name, false).await?)))
}

async fn enable(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!(s.admin.set_enabled(&name, true).await?)))
}

/// Settings not saved yet: `{"mailbox": {...}}`, optionally with `"channel"` to take a secret
/// left out from that saved channel.
async fn test_unsaved(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    body: Result<ValidJson<ConnectionTestRequest>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let request = admin_body(&caller, body)?;
    if request.mailbox.is_none() {
        return Err(ApiError::field(
            "mailbox",
            "give the incoming server settings (to test a saved channel, use /v1/admin/channels/{name}/test-connection)",
        ));
    }
    Ok(Json(json!(s.admin.test_connection(request).await?)))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedTestBody {
    #[serde(default)]
    mailbox: Option<MailboxInput>,
}

/// The saved channel's server; with a body `{"mailbox": {...}}`, edited settings of that channel
/// (a secret left out is the saved one).
async fn test_saved(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let body: SavedTestBody = if body.iter().all(u8::is_ascii_whitespace) {
        SavedTestBody::default()
    } else {
        super::json::parse(&body).map_err(scrub)?
    };
    let request = ConnectionTestRequest { channel: Some(name), mailbox: body.mailbox };
    Ok(Json(json!(s.admin.test_connection(request).await?)))
}

/// The outgoing server, the "override server configuration" flag, and whether the password is
/// set (never the password).
async fn outgoing(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!(s.admin.outgoing(&name).await?)))
}

/// `{"server": {"kind": "internal"}}` or `{"server": {"kind": "smtp", "host": ..., "port": ...,
/// "security": ..., "login": ...}, "agent_accounts": true}`; `?version=N` as for an update.
async fn set_outgoing(
    State(s): State<ChannelsApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<UpdateParams>, axum::extract::rejection::QueryRejection>,
    body: Result<ValidJson<OutboundInput>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let input = admin_body(&caller, body)?;
    let Query(p) = params.map_err(|e| ApiError::field("version", e.body_text()))?;
    let view = s.admin.set_outbound(&name, input, p.version).await?;
    tracing::info!(channel_id = %view.channel, agent_id = %caller.id, "channel outgoing server set through the admin API");
    Ok(Json(json!(view)))
}

// ------------------------------------------------------------------ OpenAPI

fn name_param() -> Value {
    json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" }, "description": "The channel's name." })
}

fn json_body(schema: &str, required: bool) -> Value {
    json!({ "required": required, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

const TEST_DESCRIPTION: &str = "Connects to the incoming server (only addresses the network policy allows), \
    signs in, and opens the mailbox (IMAP `SELECT INBOX`, POP3 `STAT`); nothing is read or changed. The answer is \
    200 either way: `ok` says whether Mailroom can read the mailbox, `summary` says so in plain words, and `steps` \
    lists what was tried (settings, resolve, connect, sign_in, open_mailbox), the failed step last. Invalid \
    settings are a 400 naming the field.";

fn openapi_paths() -> Value {
    let name = name_param;
    json!({
        "/v1/admin/channels": {
            "get": { "summary": "Every channel, with its incoming server and mailbox health (admin)",
                     "description": "Secrets are never shown: `password_set` / `client_secret_set` say whether one is stored.",
                     "responses": openapi_ok("Channels", "The channels") },
            "post": { "summary": "Create a channel (admin)",
                      "description": "With `mailbox`, its incoming server is read from the next poll on (IDLE for IMAP). A password must be typed twice (`password_confirmation`). Write-only: it goes to the secret store and is never returned.",
                      "requestBody": json_body("ChannelInput", true),
                      "responses": { "201": { "description": "Created", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Channel" } } } },
                                     "400": { "$ref": "#/components/responses/BadRequest" }, "401": { "$ref": "#/components/responses/Unauthorized" },
                                     "403": { "$ref": "#/components/responses/Forbidden" }, "409": { "$ref": "#/components/responses/Conflict" } } } },
        "/v1/admin/channels/test-connection": { "post": {
            "summary": "Test an incoming server before saving it (admin)",
            "description": format!("{TEST_DESCRIPTION} With `channel`, a secret left out is that saved channel's."),
            "requestBody": json_body("ConnectionTest", true),
            "responses": openapi_ok("ConnectionTestResult", "What the test found") } },
        "/v1/admin/channels/{name}": {
            "get": { "summary": "One channel (admin)", "parameters": [name()], "responses": openapi_ok("Channel", "The channel") },
            "put": { "summary": "Replace a channel's settings (admin)",
                     "description": "The name cannot change. A password or client secret left out keeps its stored value; a new password must be typed twice. Pass the `version` of the view you edited to refuse (409) overwriting someone else's change.",
                     "parameters": [name(), version()],
                     "requestBody": json_body("ChannelInput", true),
                     "responses": openapi_ok("Channel", "The channel as saved") } },
        "/v1/admin/channels/{name}/disable": { "post": {
            "summary": "Disable a channel (admin): its mailbox is no longer read, and mail for it is quarantined",
            "parameters": [name()], "responses": openapi_ok("Channel", "The channel, disabled") } },
        "/v1/admin/channels/{name}/enable": { "post": {
            "summary": "Enable a channel again (admin)", "parameters": [name()], "responses": openapi_ok("Channel", "The channel, enabled") } },
        "/v1/admin/channels/{name}/test-connection": { "post": {
            "summary": "Test a saved channel's incoming server (admin)",
            "description": format!("{TEST_DESCRIPTION} Without a body the saved settings are tested; with `{{\"mailbox\": {{...}}}}`, edited settings (a secret left out is the saved one)."),
            "parameters": [name()], "requestBody": json_body("SavedConnectionTest", false),
            "responses": openapi_ok("ConnectionTestResult", "What the test found") } },
        "/v1/admin/channels/{name}/outgoing": {
            "get": { "summary": "A channel's outgoing server (admin); the password is write-only",
                     "description": "`password_set` says whether the channel's SMTP password is stored (`null` for the internal server). Set the password with PUT /v1/admin/channels/{name}/outgoing/password; test the server with POST /v1/admin/channels/{name}/test-outgoing.",
                     "parameters": [name()], "responses": openapi_ok("ChannelOutgoing", "The outgoing side") },
            "put": { "summary": "Set a channel's outgoing server: internal, or a custom SMTP server (admin)",
                     "description": "Applies to the next message sent, mail already queued included, without a restart. Pass the channel's `version` to refuse (409) overwriting someone else's change. The password is not part of it: set it with PUT .../outgoing/password (write-only). Mistakes are a 400 naming the field (`server.port`).",
                     "parameters": [name(), version()],
                     "requestBody": json_body("OutboundInput", true),
                     "responses": openapi_ok("ChannelOutgoing", "The outgoing side as saved") } },
    })
}

fn version() -> Value {
    json!({ "name": "version", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0 },
            "description": "The version you edited (from the channel's view)." })
}

fn openapi_schemas() -> Value {
    let string = json!({ "type": "string" });
    let opt = json!({ "type": ["string", "null"] });
    let time = json!({ "type": ["string", "null"], "format": "date-time" });
    let protocols =
        json!({ "type": "string", "enum": ["imap", "imap+starttls", "imaps", "pop3", "pop3+stls", "pop3s"] });
    let after_fetch = json!({ "type": "string", "enum": ["mark_seen", "delete"] });
    let write_only = json!({ "type": "string", "writeOnly": true });
    let outgoing_server = json!({ "type": "object", "properties": {
        "kind": { "type": "string", "enum": ["internal", "smtp"] }, "host": string, "port": { "type": "integer" },
        "security": { "type": "string", "enum": ["starttls", "tls"] }, "login": string,
        "login_is_default": { "type": "boolean" } } });
    json!({
        "ChannelInput": { "type": "object", "required": ["name", "address", "default_queue"], "additionalProperties": false, "properties": {
            "name": string, "address": { "type": "string", "format": "email" },
            "enabled": { "type": "boolean", "default": true },
            "default_queue": string,
            "default_priority": { "type": "integer", "minimum": 1, "maximum": 10 },
            "script": { "type": "array", "items": { "type": "object" }, "description": "Routing rules, as in the config file." },
            "mailbox": { "$ref": "#/components/schemas/MailboxInput" },
            "outbound": { "$ref": "#/components/schemas/OutboundInput",
                          "description": "The outgoing server. Left out: the internal server for a new channel; an update keeps the channel's." } } },
        "OutboundInput": { "type": "object", "required": ["server"], "additionalProperties": false, "properties": {
            "server": { "oneOf": [
                { "type": "object", "required": ["kind"], "additionalProperties": false, "properties": { "kind": { "const": "internal" } },
                  "description": "Amazon SES (locally: the outbox directory)." },
                { "type": "object", "required": ["kind", "host", "security"], "additionalProperties": false, "properties": {
                    "kind": { "const": "smtp" }, "host": string,
                    "port": { "type": "integer", "minimum": 1, "maximum": 65535, "description": "Default: 587 for starttls, 465 for tls." },
                    "security": { "type": "string", "enum": ["starttls", "tls"] },
                    "login": { "type": "string", "description": "The channel's login on the server; default: the channel address." } } } ] },
            "agent_accounts": { "type": "boolean", "default": false,
                                "description": "Override server configuration: agents may send as their own workplace address with their own account." } } },
        "ChannelOutgoing": { "type": "object", "properties": { "channel": string, "address": string,
            "version": { "type": "integer", "description": "The channel's version: pass it as `version` with a change" },
            "server": outgoing_server.clone(), "agent_accounts": { "type": "boolean" },
            "password_set": { "type": ["boolean", "null"], "description": "Whether the SMTP password is stored; null for the internal server" } } },
        "MailboxInput": { "type": "object", "required": ["protocol", "host", "user", "auth"], "additionalProperties": false, "properties": {
            "protocol": protocols, "host": string,
            "port": { "type": "integer", "minimum": 1, "maximum": 65535, "description": "Default: 143, 993, 110 or 995 by protocol." },
            "user": string, "after_fetch": after_fetch,
            "auth": { "oneOf": [
                { "type": "object", "required": ["type"], "additionalProperties": false, "properties": {
                    "type": { "const": "normal" }, "password": write_only, "password_confirmation": write_only } },
                { "type": "object", "required": ["type", "tenant", "client_id"], "additionalProperties": false, "properties": {
                    "type": { "const": "oauth2" }, "authority": { "type": "string", "default": "https://login.microsoftonline.com" },
                    "tenant": string, "client_id": string, "client_secret": write_only } } ] } } },
        "Channel": { "type": "object", "properties": {
            "name": string, "address": string, "enabled": { "type": "boolean" }, "default_queue": string,
            "default_priority": { "type": "integer" }, "script": { "type": "array", "items": { "type": "object" } },
            "mailbox": { "oneOf": [{ "type": "null" }, { "type": "object", "properties": {
                "protocol": protocols, "host": string, "port": { "type": "integer" }, "port_is_default": { "type": "boolean" },
                "user": string, "after_fetch": after_fetch,
                "auth": { "type": "object", "properties": { "type": { "type": "string", "enum": ["normal", "oauth2"] },
                    "password_set": { "type": "boolean" }, "authority": string, "tenant": string, "client_id": string,
                    "client_secret_set": { "type": "boolean" } } } } }] },
            "outbound": { "type": "object", "properties": { "server": outgoing_server, "agent_accounts": { "type": "boolean" },
                "password_set": { "type": ["boolean", "null"] } } },
            "version": { "type": "integer", "description": "Pass as `version` with an update" },
            "health": { "oneOf": [{ "type": "null" }, { "type": "object", "properties": {
                "status": { "type": "string", "enum": ["unknown", "healthy", "failing"] },
                "last_attempt_at": time, "last_success_at": time, "last_error": opt, "last_error_at": time,
                "consecutive_failures": { "type": "integer" }, "last_run": { "type": "object" } } }] } } },
        "Channels": { "type": "object", "properties": { "channels": { "type": "array", "items": { "$ref": "#/components/schemas/Channel" } } } },
        "ConnectionTest": { "type": "object", "required": ["mailbox"], "additionalProperties": false, "properties": {
            "channel": { "type": "string", "description": "A saved channel whose secret to use when none is given." },
            "mailbox": { "$ref": "#/components/schemas/MailboxInput" } } },
        "SavedConnectionTest": { "type": "object", "additionalProperties": false, "properties": {
            "mailbox": { "$ref": "#/components/schemas/MailboxInput" } } },
        "ConnectionTestResult": { "type": "object", "properties": {
            "ok": { "type": "boolean" }, "summary": string,
            "steps": { "type": "array", "items": { "type": "object", "properties": {
                "step": { "type": "string", "enum": ["settings", "resolve", "connect", "sign_in", "open_mailbox"] },
                "ok": { "type": "boolean" }, "detail": string } } } } },
    })
}

#[cfg(test)]
mod tests {
    use reqwest::Method;

    use super::*;
    use crate::adapters::embedded::EmbeddedBackend;
    use crate::api::auth::mint_local_token;
    use crate::app::embedded_mailboxes;
    use crate::config::AppConfig;
    use crate::domain::agent::Role;
    use crate::domain::ids::AgentId;

    const SECRET: &[u8] = b"a test signing key of at least thirty-two bytes";
    const PASSWORD: &str = "hunter2-Correct-Horse";

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = json!({ "paths": openapi_paths() });
        let problems = crate::api::openapi::check_routes(&doc, ROUTES);
        assert!(problems.is_empty(), "{problems:?}");
    }

    /// The module served over HTTP on loopback, on an embedded backend with the demo config.
    struct Server {
        base: String,
        client: reqwest::Client,
        admin: Arc<ChannelAdmin>,
        _dir: tempfile::TempDir,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let backend = EmbeddedBackend::open(dir.path()).unwrap();
        let mailboxes = embedded_mailboxes(&AppConfig::demo(), &backend).await.unwrap();
        let auth = Arc::new(Authenticator::local(SECRET));
        let module = module(mailboxes.admin.clone(), auth);
        // The whole API's fallback and body limit around it, as `api::router` adds them.
        let app = module
            .router
            .fallback(|| async { ApiError::not_found("no such endpoint") })
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { base, client: reqwest::Client::new(), admin: mailboxes.admin.clone(), _dir: dir, task }
    }

    fn token(agent: &str, role: Role) -> String {
        mint_local_token(SECRET, &AgentId::parse(agent).unwrap(), role, chrono::Duration::minutes(5))
    }

    impl Server {
        async fn call(
            &self,
            method: Method,
            path: &str,
            role: Option<Role>,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let mut request = self.client.request(method, format!("{}{path}", self.base));
            if let Some(role) = role {
                let who = if role == Role::Admin { "ada" } else { "ana" };
                request = request.bearer_auth(token(who, role));
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let text = response.text().await.unwrap();
            assert!(!text.contains(PASSWORD), "a password came back: {text}");
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        }
    }

    fn channel_body(name: &str, protocol: &str, confirmation: &str) -> Value {
        json!({
            "name": name,
            "address": format!("{name}@example.com"),
            "default_queue": "support",
            "mailbox": {
                "protocol": protocol,
                "host": "mail.example.com",
                "user": format!("{name}@example.com"),
                "auth": { "type": "normal", "password": PASSWORD, "password_confirmation": confirmation },
            },
        })
    }

    #[tokio::test]
    async fn admins_create_read_update_and_disable_channels_and_passwords_stay_write_only() {
        let s = serve().await;
        let admin = Some(Role::Admin);

        // Only admins, whatever they send.
        let (status, _) = s.call(Method::GET, "/v1/admin/channels", None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = s.call(Method::GET, "/v1/admin/channels", Some(Role::Agent), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, _) = s.call(Method::GET, "/v1/admin/channels", Some(Role::Supervisor), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let create = channel_body("pop", "pop3s", PASSWORD);
        let (status, _) = s.call(Method::POST, "/v1/admin/channels", Some(Role::Agent), Some(create.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = s.call(Method::POST, "/v1/admin/channels", Some(Role::Agent), Some(json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "403 before the body is looked at");

        // Bad input names the field.
        let (status, body) = s
            .call(Method::POST, "/v1/admin/channels", admin, Some(channel_body("pop", "pop3s", "something else")))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["field"], "mailbox.auth.password_confirmation", "{body}");
        let mut no_confirmation = create.clone();
        no_confirmation["mailbox"]["auth"].as_object_mut().unwrap().remove("password_confirmation");
        let (status, body) = s.call(Method::POST, "/v1/admin/channels", admin, Some(no_confirmation)).await;
        assert_eq!(
            (status, &body["error"]["field"]),
            (StatusCode::BAD_REQUEST, &json!("mailbox.auth.password_confirmation"))
        );
        let (status, body) =
            s.call(Method::POST, "/v1/admin/channels", admin, Some(channel_body("pop", "smtp", PASSWORD))).await;
        assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("mailbox.protocol")));
        let mut numeric = create.clone();
        numeric["mailbox"]["auth"]["password"] = json!(31415926);
        let (status, body) = s.call(Method::POST, "/v1/admin/channels", admin, Some(numeric)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!body.to_string().contains("31415926"), "a rejected secret is not echoed: {body}");
        let mut unknown = create.clone();
        unknown["colour"] = json!("blue");
        let (status, body) = s.call(Method::POST, "/v1/admin/channels", admin, Some(unknown)).await;
        assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("colour")));
        let mut bad_queue = create.clone();
        bad_queue["default_queue"] = json!("nowhere");
        let (status, body) = s.call(Method::POST, "/v1/admin/channels", admin, Some(bad_queue)).await;
        assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("default_queue")));

        // Created: 201, the password only as password_set.
        let (status, pop) = s.call(Method::POST, "/v1/admin/channels", admin, Some(create.clone())).await;
        assert_eq!(status, StatusCode::CREATED, "{pop}");
        assert_eq!(pop["mailbox"]["port"], 995);
        assert_eq!(pop["mailbox"]["auth"], json!({ "type": "normal", "password_set": true }));
        let (status, _) = s.call(Method::POST, "/v1/admin/channels", admin, Some(create.clone())).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, imap) =
            s.call(Method::POST, "/v1/admin/channels", admin, Some(channel_body("imap", "imaps", PASSWORD))).await;
        assert_eq!(status, StatusCode::CREATED, "{imap}");

        let (status, list) = s.call(Method::GET, "/v1/admin/channels", admin, None).await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> =
            list["channels"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["support", "pop", "imap"]);
        let (status, one) = s.call(Method::GET, "/v1/admin/channels/imap", admin, None).await;
        assert_eq!((status, &one["mailbox"]["protocol"]), (StatusCode::OK, &json!("imaps")));
        let (status, _) = s.call(Method::GET, "/v1/admin/channels/nope", admin, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Update: a password left out keeps the stored one; a stale version is refused.
        let mut change = channel_body("pop", "pop3s", PASSWORD);
        change["mailbox"]["auth"] = json!({ "type": "normal" });
        change["mailbox"]["after_fetch"] = json!("delete");
        let version = pop["version"].as_u64().unwrap();
        let (status, updated) = s
            .call(Method::PUT, &format!("/v1/admin/channels/pop?version={version}"), admin, Some(change.clone()))
            .await;
        assert_eq!(status, StatusCode::OK, "{updated}");
        assert_eq!(updated["mailbox"]["after_fetch"], "delete");
        assert_eq!(updated["mailbox"]["auth"]["password_set"], true);
        let (status, body) = s
            .call(Method::PUT, &format!("/v1/admin/channels/pop?version={version}"), admin, Some(change.clone()))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let mut renamed = change.clone();
        renamed["name"] = json!("other");
        let (status, body) = s.call(Method::PUT, "/v1/admin/channels/pop", admin, Some(renamed)).await;
        assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("name")));

        // Disable and enable.
        let (status, _) = s.call(Method::POST, "/v1/admin/channels/pop/disable", Some(Role::Agent), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, disabled) = s.call(Method::POST, "/v1/admin/channels/pop/disable", admin, None).await;
        assert_eq!((status, &disabled["enabled"]), (StatusCode::OK, &json!(false)));
        let (_, again) = s.call(Method::GET, "/v1/admin/channels/pop", admin, None).await;
        assert_eq!(again["enabled"], false);
        let (status, enabled) = s.call(Method::POST, "/v1/admin/channels/pop/enable", admin, None).await;
        assert_eq!((status, &enabled["enabled"]), (StatusCode::OK, &json!(true)));
        let (status, _) = s.call(Method::POST, "/v1/admin/channels/nope/disable", admin, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn test_connection_answers_in_plain_words_and_respects_the_network_policy() {
        let s = serve().await;
        let admin = Some(Role::Admin);
        // A cloud metadata address is never connected to, whatever the policy.
        let metadata = json!({ "mailbox": { "protocol": "imaps", "host": "169.254.169.254", "user": "ops@example.com",
            "auth": { "type": "normal", "password": PASSWORD } } });
        let (status, _) =
            s.call(Method::POST, "/v1/admin/channels/test-connection", Some(Role::Agent), Some(metadata.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, result) =
            s.call(Method::POST, "/v1/admin/channels/test-connection", admin, Some(metadata.clone())).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert_eq!(result["ok"], false, "{result}");
        let summary = result["summary"].as_str().unwrap();
        assert!(summary.starts_with("The connection test failed") && summary.contains("metadata"), "{summary}");
        let last = result["steps"].as_array().unwrap().last().unwrap().clone();
        assert_eq!((last["step"].as_str(), last["ok"].as_bool()), (Some("resolve"), Some(false)), "{result}");

        // Invalid settings are a 400 naming the field; no settings at all too.
        let mut bad = metadata.clone();
        bad["mailbox"]["port"] = json!(0);
        let (status, body) = s.call(Method::POST, "/v1/admin/channels/test-connection", admin, Some(bad)).await;
        assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("mailbox.port")));
        let (status, body) = s.call(Method::POST, "/v1/admin/channels/test-connection", admin, Some(json!({}))).await;
        assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("mailbox")));

        // A saved channel: its stored settings, or edited ones with the stored password.
        let mut create = channel_body("meta", "pop3s", PASSWORD);
        create["mailbox"]["host"] = json!("169.254.169.254");
        let (status, _) = s.call(Method::POST, "/v1/admin/channels", admin, Some(create)).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, result) = s.call(Method::POST, "/v1/admin/channels/meta/test-connection", admin, None).await;
        assert_eq!((status, &result["ok"]), (StatusCode::OK, &json!(false)), "{result}");
        let edited = json!({ "mailbox": { "protocol": "pop3s", "host": "169.254.169.254", "port": 1995,
            "user": "meta@example.com", "auth": { "type": "normal" } } });
        let (status, result) =
            s.call(Method::POST, "/v1/admin/channels/meta/test-connection", admin, Some(edited)).await;
        assert_eq!((status, &result["ok"]), (StatusCode::OK, &json!(false)), "{result}");
        let (status, body) = s.call(Method::POST, "/v1/admin/channels/support/test-connection", admin, None).await;
        assert_eq!(
            (status, &body["error"]["field"]),
            (StatusCode::BAD_REQUEST, &json!("mailbox")),
            "no incoming server"
        );
        let (status, _) = s.call(Method::POST, "/v1/admin/channels/nope/test-connection", admin, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn admins_set_the_outgoing_server_with_versions_and_the_field_named() {
        let s = serve().await;
        let admin = Some(Role::Admin);
        let path = "/v1/admin/channels/support/outgoing";
        let smtp = json!({ "server": { "kind": "smtp", "host": "smtp.example.com", "port": 587, "security": "starttls" },
                           "agent_accounts": true });

        // Read: the internal server, no password to speak of.
        let (status, outgoing) = s.call(Method::GET, path, admin, None).await;
        assert_eq!(status, StatusCode::OK, "{outgoing}");
        assert_eq!(
            (&outgoing["server"], &outgoing["agent_accounts"], &outgoing["password_set"]),
            (&json!({ "kind": "internal" }), &json!(false), &Value::Null)
        );
        let version = outgoing["version"].as_u64().unwrap();

        // Admins only (403 whatever the body); unknown channels 404.
        for role in [None, Some(Role::Agent), Some(Role::Supervisor)] {
            let (status, _) = s.call(Method::PUT, path, role, Some(smtp.clone())).await;
            assert_eq!(status, if role.is_none() { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN });
            let (status, _) = s.call(Method::PUT, path, role, Some(json!({ "colour": 1 }))).await;
            assert_ne!(status, StatusCode::BAD_REQUEST, "the role is checked before the body");
        }
        let (status, _) = s.call(Method::GET, path, Some(Role::Agent), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = s.call(Method::PUT, "/v1/admin/channels/nope/outgoing", admin, Some(smtp.clone())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = s.call(Method::GET, "/v1/admin/channels/nope/outgoing", admin, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Mistakes: 400 naming the field.
        let with = |key: &str, value: Value| {
            let mut body = smtp.clone();
            body["server"][key] = value;
            body
        };
        let mut no_host = smtp.clone();
        no_host["server"].as_object_mut().unwrap().remove("host");
        let mut extra = smtp.clone();
        extra["server"]["password"] = json!(PASSWORD);
        for (body, field) in [
            (with("port", json!(0)), "server.port"),
            (with("port", json!(70000)), "server.port"),
            (with("host", json!("smtp example com")), "server.host"),
            (with("host", json!("169.254.169.254")), "server.host"),
            (no_host, "server.host"),
            (with("security", json!("none")), "server.security"),
            (with("kind", json!("exchange")), "server.kind"),
            (with("login", json!("two words")), "server.login"),
            (json!({ "server": { "kind": "internal", "host": "smtp.example.com" } }), "server.host"),
            (extra, "server.password"),
            (json!({ "agent_accounts": true }), "server"),
        ] {
            let (status, answer) = s.call(Method::PUT, path, admin, Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
            assert_eq!(answer["error"]["field"], json!(field), "{body}: {answer}");
        }

        // Saved: the view, a new version; the password only as password_set.
        let (status, saved) =
            s.call(Method::PUT, &format!("{path}?version={version}"), admin, Some(smtp.clone())).await;
        assert_eq!(status, StatusCode::OK, "{saved}");
        assert_eq!(saved["version"], json!(version + 1));
        assert_eq!(
            saved["server"],
            json!({ "kind": "smtp", "host": "smtp.example.com", "port": 587, "security": "starttls",
                    "login": "support@example.com", "login_is_default": true })
        );
        assert_eq!((&saved["agent_accounts"], &saved["password_set"]), (&json!(true), &json!(false)));
        // Someone else's change meanwhile: 409.
        let (status, body) = s.call(Method::PUT, &format!("{path}?version={version}"), admin, Some(smtp.clone())).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let key = crate::domain::outbound::SecretKey::ChannelSmtpPassword(
            crate::domain::ids::ChannelName::parse("support").unwrap(),
        );
        s.admin.secrets.put(&key.secret_name(), &secrecy::SecretString::from(PASSWORD.to_owned())).await.unwrap();
        let (_, read) = s.call(Method::GET, path, admin, None).await;
        assert_eq!((&read["password_set"], &read["version"]), (&json!(true), &json!(version + 1)));
        let (_, channel) = s.call(Method::GET, "/v1/admin/channels/support", admin, None).await;
        assert_eq!(channel["outbound"]["server"]["kind"], json!("smtp"), "{channel}");
        assert_eq!(channel["outbound"]["password_set"], json!(true), "{channel}");

        // An update without `outbound` keeps it; implicit TLS defaults to port 465.
        let update = json!({ "name": "support", "address": "support@example.com", "default_queue": "support" });
        let (status, updated) = s.call(Method::PUT, "/v1/admin/channels/support", admin, Some(update)).await;
        assert_eq!((status, &updated["outbound"]["server"]["host"]), (StatusCode::OK, &json!("smtp.example.com")));
        let tls =
            json!({ "server": { "kind": "smtp", "host": "smtp.example.com", "security": "tls", "login": "helpdesk" } });
        let (_, saved) = s.call(Method::PUT, path, admin, Some(tls)).await;
        assert_eq!((&saved["server"]["port"], &saved["server"]["login"]), (&json!(465), &json!("helpdesk")));
        assert_eq!(saved["agent_accounts"], json!(false), "agent_accounts defaults to off");

        // Back to the internal server.
        let (status, saved) = s.call(Method::PUT, path, admin, Some(json!({ "server": { "kind": "internal" } }))).await;
        assert_eq!(
            (status, &saved["server"], &saved["password_set"]),
            (StatusCode::OK, &json!({ "kind": "internal" }), &Value::Null)
        );

        // A channel created with its outgoing server; a mistake there names `outbound.server...`.
        let mut create = channel_body("sales", "pop3s", PASSWORD);
        create["outbound"] = smtp.clone();
        create["outbound"]["server"]["port"] = json!(0);
        let (status, body) = s.call(Method::POST, "/v1/admin/channels", admin, Some(create.clone())).await;
        assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("outbound.server.port")));
        create["outbound"]["server"]["port"] = json!(2525);
        let (status, created) = s.call(Method::POST, "/v1/admin/channels", admin, Some(create)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(
            (&created["outbound"]["server"]["port"], &created["outbound"]["agent_accounts"]),
            (&json!(2525), &json!(true))
        );
        let (status, _) = s.call(Method::GET, "/v1/admin/channels/sales/outgoing", admin, None).await;
        assert_eq!(status, StatusCode::OK);
    }
}
