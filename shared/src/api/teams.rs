//! The Teams part of the agent API: the contacts directory, connecting an agent's Teams account,
//! chats with Teams users, and (for `mailroom serve`) the Graph webhook.
//!
//! Agents receive new messages, edits, deletions and reactions by polling (`/v1/teams/updates`,
//! or one chat's `/messages`), with an optional long-poll `wait`; there are no push channels. The
//! webhook routes take no bearer token (Graph cannot send one): every notification item must carry
//! the `clientState` of its subscription, and a validation request is answered with its token.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiModule;
use super::auth::{Authenticator, Caller};
use super::error::ApiError;
use super::json::ValidJson;
use super::openapi::ok as openapi_ok;
use super::openapi::{json_body, path_param, query_param};
use crate::adapters::graph::aadsts_code;
use crate::adapters::graph::notifications::{parse_notifications, validation_response};
use crate::domain::ids::{AgentId, EmailAddress};
use crate::domain::teams::{
    Availability, ChatEntry, ChatId, ConnectionStatus, ContactId, ContactQuery, IdentityKind, OtherDirectoryEntry,
    OtherDirectoryId, TeamsUserId, parse_directory_csv,
};
use crate::ports::teams::GraphError;
use crate::usecases::teams::{ChatTarget, SignInOutcome, TeamsError, TeamsService};

#[derive(Clone, FromRef)]
pub struct TeamsApiState {
    pub teams: Arc<TeamsService>,
    pub auth: Arc<Authenticator>,
}

/// The routes of this module, as (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/contacts"),
    ("get", "/v1/contacts/{contact_id}"),
    ("post", "/v1/contacts/sync"),
    ("put", "/v1/contacts/other-directory"),
    ("get", "/v1/me/teams"),
    ("post", "/v1/me/teams/connect"),
    ("get", "/v1/teams/oauth/callback"),
    ("get", "/v1/agents/{agent_id}/teams"),
    ("delete", "/v1/agents/{agent_id}/teams"),
    ("get", "/v1/teams/chats"),
    ("post", "/v1/teams/chats"),
    ("get", "/v1/teams/chats/{chat_id}"),
    ("get", "/v1/teams/chats/{chat_id}/messages"),
    ("post", "/v1/teams/chats/{chat_id}/messages"),
    ("post", "/v1/teams/chats/{chat_id}/resync"),
    ("get", "/v1/teams/updates"),
    ("post", "/v1/teams/subscriptions/renew"),
    ("post", "/v1/teams/notifications"),
    ("post", "/v1/teams/lifecycle"),
];

/// The directory file may be large (one line per person); everything else stays small.
const IMPORT_LIMIT: usize = 16 * 1024 * 1024;
/// The longest long-poll.
const MAX_WAIT_SECS: u64 = 25;

/// The Teams module for `api::router`: `mailroom serve` and the agent-api function pass it the
/// service built once at start (`adapters::graph::embedded_teams` locally).
pub fn module(teams: Arc<TeamsService>, auth: Arc<Authenticator>) -> ApiModule {
    let state = TeamsApiState { teams, auth };
    let router = axum::Router::new()
        .route("/v1/contacts", get(contacts))
        .route("/v1/contacts/sync", post(sync))
        .route("/v1/contacts/other-directory", put(import).layer(DefaultBodyLimit::max(IMPORT_LIMIT)))
        .route("/v1/contacts/{contact_id}", get(contact))
        .route("/v1/me/teams", get(my_connection))
        .route("/v1/me/teams/connect", post(connect))
        .route("/v1/teams/oauth/callback", get(callback))
        .route("/v1/agents/{agent_id}/teams", get(agent_connection).delete(disconnect))
        .route("/v1/teams/chats", get(chats).post(start_chat))
        .route("/v1/teams/chats/{chat_id}", get(chat))
        .route("/v1/teams/chats/{chat_id}/messages", get(chat_messages).post(send))
        .route("/v1/teams/chats/{chat_id}/resync", post(resync))
        .route("/v1/teams/updates", get(updates))
        .route("/v1/teams/subscriptions/renew", post(renew))
        .route("/v1/teams/notifications", post(webhook))
        .route("/v1/teams/lifecycle", post(webhook))
        .with_state(state);
    ApiModule { router, routes: ROUTES, openapi_paths: openapi_paths(), openapi_schemas: openapi_schemas() }
}

impl From<TeamsError> for ApiError {
    fn from(e: TeamsError) -> Self {
        let message = e.to_string();
        match e {
            TeamsError::NotConnected(status) => {
                let code = match status {
                    ConnectionStatus::NoTeamsLicense => "teams_no_license",
                    ConnectionStatus::SignInFailed => "teams_sign_in_failed",
                    ConnectionStatus::WrongAccount => "teams_wrong_account",
                    _ => "teams_not_connected",
                };
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            TeamsError::UnknownAgent => ApiError::forbidden(message),
            TeamsError::UnknownContact | TeamsError::UnknownChat => ApiError::not_found(message),
            TeamsError::NoTeamsIdentity => ApiError::new(StatusCode::CONFLICT, "no_teams_identity", message),
            TeamsError::UnknownSignIn => ApiError::new(StatusCode::BAD_REQUEST, "sign_in_expired", message),
            TeamsError::Invalid { field, message } => ApiError::field(field, message),
            TeamsError::Backend(e) => e.into(),
            TeamsError::Graph(GraphError::Throttled { retry_after }) => {
                tracing::warn!(retry_after_ms = retry_after.as_millis() as u64, "Graph is throttling");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "teams_throttled",
                    "Microsoft Teams is busy; try again shortly",
                )
            }
            TeamsError::Graph(GraphError::Forbidden { code, .. }) => {
                tracing::warn!(graph_code = %code, "Graph refused a request");
                ApiError::new(StatusCode::CONFLICT, "teams_refused", format!("Microsoft Teams refused this ({code})"))
            }
            TeamsError::Graph(e) if e.is_transient() => {
                tracing::warn!(error = %e, "Graph is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "teams_unavailable",
                    "Microsoft Teams is unavailable; try again",
                )
            }
            TeamsError::Graph(e) => {
                tracing::error!(error = %e, "a Graph request failed");
                ApiError::new(StatusCode::BAD_GATEWAY, "teams_failed", "Microsoft Teams could not complete the request")
            }
            TeamsError::Token(e) if e.is_transient() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sign_in_unavailable",
                "Microsoft sign-in is unavailable; try again",
            ),
            TeamsError::Token(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "sign_in_failed", "Microsoft sign-in refused the request")
            }
        }
    }
}

fn query_error(e: axum::extract::rejection::QueryRejection) -> ApiError {
    let text = e.body_text();
    let field = text.split('`').nth(1).unwrap_or("query").to_owned();
    ApiError::field(field, text.rsplit(": ").next().unwrap_or(&text).to_owned())
}

fn chat_id(raw: &str) -> Result<ChatId, ApiError> {
    ChatId::parse(raw).map_err(|e| ApiError::field("chat_id", e.to_string()))
}

fn entry_view(e: &ChatEntry) -> Value {
    json!({
        "id": e.key,
        "kind": e.kind,
        "chat_id": e.chat,
        "message_id": e.message_id,
        "reacts_to": e.reacts_to,
        "reaction": e.reaction,
        "direction": e.direction,
        "from": { "teams_user_id": e.from, "name": e.from_name },
        "content_type": e.content_type,
        "content": e.content,
        "created_at": e.created_at,
        "edited_at": e.edited_at,
        "deleted_at": e.deleted_at,
        "seq": e.seq,
    })
}

fn entries_json(entries: &[ChatEntry], after: u64) -> Value {
    let next = entries.iter().map(|e| e.seq).max().unwrap_or(after).max(after);
    json!({ "messages": entries.iter().map(entry_view).collect::<Vec<_>>(), "next_after": next })
}

// ------------------------------------------------------------------ directory

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactsParams {
    search: Option<String>,
    identity: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn contacts(
    State(s): State<TeamsApiState>,
    _caller: Caller,
    params: Result<Query<ContactsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let identity = p
        .identity
        .as_deref()
        .filter(|i| !i.is_empty())
        .map(|i| {
            IdentityKind::parse(i)
                .ok_or_else(|| ApiError::field("identity", "identity must be contact_centre, teams or other_directory"))
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "limit must be between 1 and 200"));
    }
    let query = ContactQuery { search: p.search.filter(|s| !s.trim().is_empty()), identity };
    Ok(Json(json!(s.teams.contacts(&query, p.offset.unwrap_or(0), limit).await?)))
}

async fn contact(
    State(s): State<TeamsApiState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = ContactId::parse(&id).map_err(|e| ApiError::field("contact_id", e.to_string()))?;
    Ok(Json(json!(s.teams.contact(&id).await?)))
}

async fn sync(State(s): State<TeamsApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!(s.teams.sync_teams_directory().await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonBody {
    id: String,
    name: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    job_title: Option<String>,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    presence: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryBody {
    people: Vec<PersonBody>,
}

/// Replaces the other directory with a file: CSV (`text/csv`, header row with id, name, email,
/// job_title, department, phone, presence) or JSON (`{"people": [...]}`).
async fn import(
    State(s): State<TeamsApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let (entries, rejected) = match media.as_str() {
        "text/csv" | "text/plain" => {
            let text = std::str::from_utf8(&body).map_err(|_| ApiError::field("body", "the file must be UTF-8"))?;
            parse_directory_csv(text).map_err(|m| ApiError::field("body", m))?
        }
        "application/json" => {
            let parsed: DirectoryBody = super::json::parse(&body)?;
            let mut entries = Vec::with_capacity(parsed.people.len());
            for (i, p) in parsed.people.into_iter().enumerate() {
                let field = |name: &str| format!("people[{i}].{name}");
                let email = p
                    .email
                    .filter(|e| !e.trim().is_empty())
                    .map(|e| EmailAddress::parse(&e).map_err(|e| ApiError::field(field("email"), e.to_string())))
                    .transpose()?;
                if p.name.trim().is_empty() {
                    return Err(ApiError::field(field("name"), "name is empty"));
                }
                let id = OtherDirectoryId::parse(&p.id).map_err(|e| ApiError::field(field("id"), e.to_string()))?;
                if entries.iter().any(|e: &OtherDirectoryEntry| e.id == id) {
                    return Err(ApiError::field(field("id"), "this id appears twice"));
                }
                entries.push(OtherDirectoryEntry {
                    id,
                    name: p.name.trim().to_owned(),
                    email,
                    job_title: p.job_title,
                    department: p.department,
                    phone: p.phone,
                    presence: p.presence.as_deref().map(Availability::from_directory),
                });
            }
            (entries, Vec::new())
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the directory as text/csv or application/json",
            ));
        }
    };
    Ok(Json(json!(s.teams.import_other_directory(entries, rejected).await?)))
}

// ------------------------------------------------------------------ connecting Teams

async fn my_connection(State(s): State<TeamsApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.teams.connection(&caller.id).await?)))
}

async fn connect(State(s): State<TeamsApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.teams.start_sign_in(&caller.id).await?)))
}

#[derive(Deserialize)]
struct CallbackParams {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Microsoft's redirect after sign-in (the agent's browser: no bearer token; the one-time `state`
/// identifies the sign-in).
async fn callback(
    State(s): State<TeamsApiState>,
    params: Result<Query<CallbackParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let state = p.state.filter(|s| !s.is_empty()).ok_or_else(|| ApiError::field("state", "state is missing"))?;
    let outcome = match (p.code.filter(|c| !c.is_empty()), p.error) {
        (Some(code), None) => SignInOutcome::Code(secrecy::SecretString::from(code)),
        (_, Some(error)) => {
            SignInOutcome::Refused { error, aadsts: p.error_description.as_deref().and_then(aadsts_code) }
        }
        (None, None) => return Err(ApiError::field("code", "neither code nor error was given")),
    };
    Ok(Json(json!(s.teams.finish_sign_in(&state, outcome).await?)))
}

fn agent_id(raw: &str) -> Result<AgentId, ApiError> {
    AgentId::parse(raw).map_err(|e| ApiError::field("agent_id", e.to_string()))
}

async fn agent_connection(
    State(s): State<TeamsApiState>,
    caller: Caller,
    Path(agent): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = agent_id(&agent)?;
    if agent != caller.id {
        caller.require_supervisor()?;
    }
    Ok(Json(json!(s.teams.connection(&agent).await?)))
}

async fn disconnect(
    State(s): State<TeamsApiState>,
    caller: Caller,
    Path(agent): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Only an admin: an agent's own Teams account stays connected until an admin removes it.
    caller.require_admin()?;
    let agent = agent_id(&agent)?;
    Ok(Json(json!(s.teams.disconnect(&agent, &caller.id).await?)))
}

// ------------------------------------------------------------------ chats

async fn chats(State(s): State<TeamsApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "chats": s.teams.chats(&caller.id).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartChatBody {
    #[serde(default)]
    contact_id: Option<String>,
    #[serde(default)]
    teams_user_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

async fn start_chat(
    State(s): State<TeamsApiState>,
    caller: Caller,
    ValidJson(body): ValidJson<StartChatBody>,
) -> Result<Response, ApiError> {
    let target = match (body.contact_id, body.teams_user_id, body.email) {
        (Some(c), None, None) => {
            ChatTarget::Contact(ContactId::parse(&c).map_err(|e| ApiError::field("contact_id", e.to_string()))?)
        }
        (None, Some(t), None) => {
            ChatTarget::TeamsUser(TeamsUserId::parse(&t).map_err(|e| ApiError::field("teams_user_id", e.to_string()))?)
        }
        (None, None, Some(e)) => {
            ChatTarget::Email(EmailAddress::parse(&e).map_err(|e| ApiError::field("email", e.to_string()))?)
        }
        _ => return Err(ApiError::field("contact_id", "give exactly one of contact_id, teams_user_id or email")),
    };
    let (chat, created) = s.teams.start_chat(&caller.id, &target).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!(chat))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatParams {
    limit: Option<usize>,
}

async fn chat(
    State(s): State<TeamsApiState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<ChatParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "limit must be between 1 and 500"));
    }
    let (chat, entries) = s.teams.chat(&caller.id, &chat_id(&id)?, limit).await?;
    let mut body = entries_json(&entries, 0);
    body["chat"] = json!(chat);
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesParams {
    after: Option<u64>,
    limit: Option<usize>,
    wait: Option<u64>,
}

fn changes_args(p: &ChangesParams) -> Result<(u64, usize, Duration), ApiError> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "limit must be between 1 and 500"));
    }
    let wait = p.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::field("wait", format!("wait must be at most {MAX_WAIT_SECS} seconds")));
    }
    Ok((p.after.unwrap_or(0), limit, Duration::from_secs(wait)))
}

async fn chat_messages(
    State(s): State<TeamsApiState>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<ChangesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let (after, limit, wait) = changes_args(&p)?;
    let entries = s.teams.changes(&caller.id, Some(&chat_id(&id)?), after, limit, wait).await?;
    Ok(Json(entries_json(&entries, after)))
}

async fn updates(
    State(s): State<TeamsApiState>,
    caller: Caller,
    params: Result<Query<ChangesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = params.map_err(query_error)?;
    let (after, limit, wait) = changes_args(&p)?;
    let entries = s.teams.changes(&caller.id, None, after, limit, wait).await?;
    Ok(Json(entries_json(&entries, after)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    text: String,
}

async fn send(
    State(s): State<TeamsApiState>,
    caller: Caller,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<SendBody>,
) -> Result<Response, ApiError> {
    let entry = s.teams.send(&caller.id, &chat_id(&id)?, &body.text).await?;
    Ok((StatusCode::CREATED, Json(entry_view(&entry))).into_response())
}

async fn resync(
    State(s): State<TeamsApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "changed": s.teams.resync_chat(&caller.id, &chat_id(&id)?).await? })))
}

async fn renew(State(s): State<TeamsApiState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(json!(s.teams.renew_subscriptions().await?)))
}

// ------------------------------------------------------------------ the webhook (local)

#[derive(Deserialize)]
struct WebhookParams {
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

/// Graph's change and lifecycle notifications for `mailroom serve`. The validation handshake is
/// answered at once; items are checked, then processed after the 202 (Graph wants an answer
/// within 3 seconds). In AWS the teams-webhook function does this, with a queue in between.
async fn webhook(State(s): State<TeamsApiState>, Query(p): Query<WebhookParams>, body: Bytes) -> Response {
    if let Some(token) = validation_response(p.validation_token.as_deref()) {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response();
    }
    let items = match parse_notifications(&body) {
        Ok((items, _skipped)) => items,
        Err(e) => return ApiError::field("body", e.to_string()).into_response(),
    };
    let accepted = match s.teams.intake().accept(items).await {
        Ok(a) => a,
        // 5xx: Graph delivers again later.
        Err(e) => return ApiError::from(e).into_response(),
    };
    let teams = s.teams.clone();
    tokio::spawn(async move {
        for n in accepted.notifications {
            for attempt in 1..=3u32 {
                match teams.process(&n).await {
                    Ok(()) => break,
                    Err(e) if e.is_transient() && attempt < 3 => {
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                    Err(e) => {
                        // A later re-read (lifecycle event, renewal, resync) catches up.
                        tracing::warn!(error = %e, subscription_id = %n.subscription, "a notification could not be processed");
                        break;
                    }
                }
            }
        }
    });
    StatusCode::ACCEPTED.into_response()
}

// ------------------------------------------------------------------ OpenAPI

const POLLING: &str = "Agents receive new messages, edits, deletions and reactions by polling: pass the \
    `next_after` of the previous answer as `after`; `wait` (up to 25 s) holds the request open until something \
    changes (long polling). There is no push channel. Edits and deletions change an entry in place and show their \
    time (`edited_at`, `deleted_at`; a deleted message's content is empty); each reaction is an entry of its own \
    (`kind: reaction`). Teams read receipts are not available: nothing here says whether the Teams user has read a \
    message.";

fn openapi_paths() -> Value {
    let after = || {
        vec![
            query_param(
                "after",
                json!({ "type": "integer", "minimum": 0 }),
                "Only changes after this `seq` (the previous `next_after`).",
            ),
            query_param(
                "limit",
                json!({ "type": "integer", "minimum": 1, "maximum": 500 }),
                "At most this many (default 100).",
            ),
            query_param(
                "wait",
                json!({ "type": "integer", "minimum": 0, "maximum": 25 }),
                "Seconds to wait for a first change (default 0).",
            ),
        ]
    };
    let chat = || path_param("chat_id", "The chat, as returned when it was started.");
    let chat_and_after: Vec<Value> = std::iter::once(chat()).chain(after()).collect();
    let webhook = |what: &str| {
        json!({ "post": { "summary": format!("Microsoft Graph {what} (local server; AWS uses the teams-webhook function)"),
            "description": "Called by Graph, not by agents: no bearer token. `POST ?validationToken=...` is answered 200 text/plain with the decoded token; a notification batch is answered 202 after each item's clientState is checked against its subscription (items that fail are dropped).",
            "security": [],
            "parameters": [query_param("validationToken", json!({ "type": "string" }), "Graph's validation handshake.")],
            "responses": { "200": { "description": "The validation token", "content": { "text/plain": { "schema": { "type": "string" } } } },
                           "202": { "description": "Accepted" }, "400": { "$ref": "#/components/responses/BadRequest" } } } })
    };
    json!({
        "/v1/contacts": { "get": {
            "summary": "The contacts directory: everyone in the organisation, each person once with every identity",
            "description": "Contact-centre agents, Microsoft Teams users (synced from Microsoft Graph) and the other directory (imported from a file), merged by email address. Order: contact-centre agents (with or without other identities) first, then people only in the other directory, only in Teams, and in Teams and the other directory; alphabetically within each group. Presence is the main identity's: contact centre, else Teams, else the other directory.",
            "parameters": [
                query_param("search", json!({ "type": "string" }), "Part of a name (any case, accents ignored)."),
                query_param("identity", json!({ "type": "string", "enum": ["contact_centre", "teams", "other_directory"] }), "Only people with this identity."),
                query_param("limit", json!({ "type": "integer", "minimum": 1, "maximum": 200 }), "Page size (default 50)."),
                query_param("offset", json!({ "type": "integer", "minimum": 0 }), "Skip this many (default 0)."),
            ],
            "responses": openapi_ok("ContactPage", "A page of contacts") } },
        "/v1/contacts/{contact_id}": { "get": { "summary": "One contact with presence",
            "parameters": [path_param("contact_id", "The contact's id.")], "responses": openapi_ok("Contact", "The contact") } },
        "/v1/contacts/sync": { "post": { "summary": "Import every Teams user from Microsoft Graph now (admin; also runs on a schedule)",
            "responses": openapi_ok("SyncReport", "What the sync stored") } },
        "/v1/contacts/other-directory": { "put": { "summary": "Replace the other directory with a file (admin)",
            "description": "CSV (`text/csv`): a header row naming the columns id, name (required), email, job_title, department, phone, presence; RFC 4180 quoting. Rows with a problem are skipped and reported with their line. Or JSON: `{\"people\": [{\"id\", \"name\", ...}]}`.",
            "requestBody": { "required": true, "content": { "text/csv": { "schema": { "type": "string" } },
                "application/json": { "schema": { "$ref": "#/components/schemas/DirectoryFile" } } } },
            "responses": openapi_ok("ImportReport", "What was imported") } },
        "/v1/me/teams": { "get": { "summary": "The caller's Teams account connection",
            "description": "`status`: not_connected, pending, connected, sign_in_failed (sign in again), no_teams_license (contact your admin), wrong_account; `action` says what to do.",
            "responses": openapi_ok("TeamsConnection", "The connection") } },
        "/v1/me/teams/connect": { "post": { "summary": "Connect (or reconnect) the caller's Microsoft Teams account",
            "description": "Starts Microsoft's sign-in (authorization code with PKCE): open `authorize_url` in the browser within 10 minutes. Microsoft sends the browser back to /v1/teams/oauth/callback, which finishes the connection.",
            "responses": openapi_ok("SignInStart", "Where to sign in") } },
        "/v1/teams/oauth/callback": { "get": { "summary": "Microsoft's redirect after sign-in (the browser's; no bearer token)",
            "security": [],
            "parameters": [query_param("state", json!({ "type": "string" }), "The one-time sign-in state."),
                           query_param("code", json!({ "type": "string" }), "The authorization code."),
                           query_param("error", json!({ "type": "string" }), "Microsoft's error, when sign-in failed."),
                           query_param("error_description", json!({ "type": "string" }), "Its description.")],
            "responses": openapi_ok("TeamsConnection", "The connection after the sign-in") } },
        "/v1/agents/{agent_id}/teams": {
            "get": { "summary": "An agent's Teams connection (the agent, a supervisor or an admin)",
                     "parameters": [path_param("agent_id", "The agent.")], "responses": openapi_ok("TeamsConnection", "The connection") },
            "delete": { "summary": "Disconnect an agent's Teams account (admin only)",
                     "description": "Deletes the agent's chat subscriptions and stored tokens; chats stay readable.",
                     "parameters": [path_param("agent_id", "The agent.")], "responses": openapi_ok("TeamsConnection", "The connection, now not_connected") } },
        "/v1/teams/chats": {
            "get": { "summary": "The caller's Teams chats, most recent activity first", "responses": openapi_ok("Chats", "Chats") },
            "post": { "summary": "Start a chat with a Teams user (or the Teams identity of a contact)",
                      "description": "Give one of contact_id, teams_user_id or email. One chat per Teams user (starting again returns it, 200). The agent writes first: until the first message is sent, nothing reaches Teams and the Teams user cannot answer (state awaiting_first_message).",
                      "requestBody": json_body("StartChat"),
                      "responses": { "201": { "description": "Started", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Chat" } } } },
                                     "200": { "description": "The existing chat", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Chat" } } } },
                                     "400": { "$ref": "#/components/responses/BadRequest" }, "401": { "$ref": "#/components/responses/Unauthorized" },
                                     "404": { "$ref": "#/components/responses/NotFound" }, "409": { "$ref": "#/components/responses/Conflict" } } } },
        "/v1/teams/chats/{chat_id}": { "get": { "summary": "A chat with its newest messages (oldest first)",
            "description": POLLING,
            "parameters": [chat(), query_param("limit", json!({ "type": "integer", "minimum": 1, "maximum": 500 }), "At most this many messages (default 100).")],
            "responses": openapi_ok("ChatWithMessages", "The chat") } },
        "/v1/teams/chats/{chat_id}/messages": {
            "get": { "summary": "New and changed messages of one chat (polling)", "description": POLLING,
                     "parameters": chat_and_after, "responses": openapi_ok("Messages", "Changes in seq order") },
            "post": { "summary": "Send a message (plain text) as the caller's Teams account",
                      "description": "The first message creates the Teams chat (or finds the existing one) and subscribes to it. No read receipts: delivery is confirmed, reading is not.",
                      "parameters": [chat()], "requestBody": json_body("SendMessage"),
                      "responses": { "201": { "description": "Sent", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ChatMessage" } } } },
                                     "400": { "$ref": "#/components/responses/BadRequest" }, "401": { "$ref": "#/components/responses/Unauthorized" },
                                     "404": { "$ref": "#/components/responses/NotFound" }, "409": { "$ref": "#/components/responses/Conflict" } } } },
        "/v1/teams/chats/{chat_id}/resync": { "post": { "summary": "Re-read the chat from Teams now (after downtime)",
            "parameters": [chat()], "responses": openapi_ok("Resync", "How many messages changed") } },
        "/v1/teams/updates": { "get": { "summary": "New and changed messages of all the caller's chats (polling)", "description": POLLING,
            "parameters": after(), "responses": openapi_ok("Messages", "Changes in seq order") } },
        "/v1/teams/subscriptions/renew": { "post": { "summary": "Renew chat subscriptions that expire within a day now (admin; also runs on a schedule)",
            "responses": openapi_ok("RenewReport", "What was renewed") } },
        "/v1/teams/notifications": webhook("change notifications"),
        "/v1/teams/lifecycle": webhook("lifecycle notifications"),
    })
}

fn openapi_schemas() -> Value {
    let string = json!({ "type": "string" });
    let opt = json!({ "type": ["string", "null"] });
    let time = json!({ "type": ["string", "null"], "format": "date-time" });
    json!({
        "Identity": { "type": "object", "properties": {
            "kind": { "type": "string", "enum": ["contact_centre", "teams", "other_directory"] },
            "id": string, "name": string, "emails": { "type": "array", "items": string },
            "job_title": opt, "department": opt, "phone": opt } },
        "ContactPresence": { "type": "object", "properties": {
            "availability": { "type": "string", "enum": ["available", "busy", "away", "do_not_disturb", "offline", "unknown"] },
            "source": { "type": ["string", "null"], "enum": ["contact_centre", "teams", "other_directory", null] },
            "detail": opt, "as_of": time } },
        "Contact": { "type": "object", "properties": {
            "id": string, "name": string, "job_title": opt, "emails": { "type": "array", "items": string },
            "identities": { "type": "array", "items": { "$ref": "#/components/schemas/Identity" } },
            "presence": { "$ref": "#/components/schemas/ContactPresence" } } },
        "ContactPage": { "type": "object", "properties": {
            "contacts": { "type": "array", "items": { "$ref": "#/components/schemas/Contact" } },
            "total": { "type": "integer" }, "offset": { "type": "integer" }, "limit": { "type": "integer" },
            "sources": { "type": "object", "properties": { "teams_synced_at": time, "teams_count": { "type": "integer" },
                "other_imported_at": time, "other_count": { "type": "integer" } } } } },
        "SyncReport": { "type": "object", "properties": { "users": { "type": "integer" }, "removed": { "type": "integer" } } },
        "DirectoryFile": { "type": "object", "required": ["people"], "properties": { "people": { "type": "array", "items": {
            "type": "object", "required": ["id", "name"], "properties": { "id": string, "name": string, "email": string,
            "job_title": string, "department": string, "phone": string, "presence": string } } } } },
        "ImportReport": { "type": "object", "properties": { "imported": { "type": "integer" }, "removed": { "type": "integer" },
            "rejected": { "type": "array", "items": { "type": "object", "properties": { "line": { "type": "integer" }, "reason": string } } } } },
        "TeamsConnection": { "type": "object", "properties": {
            "agent_id": string,
            "status": { "type": "string", "enum": ["not_connected", "pending", "connected", "sign_in_failed", "no_teams_license", "wrong_account"] },
            "message": string, "action": { "type": ["string", "null"], "enum": ["sign_in", "contact_admin", null] },
            "teams_user_id": opt, "teams_user_name": opt, "updated_at": time, "error_code": opt } },
        "SignInStart": { "type": "object", "properties": { "authorize_url": string, "expires_at": { "type": "string", "format": "date-time" } } },
        "StartChat": { "type": "object", "additionalProperties": false, "properties": {
            "contact_id": string, "teams_user_id": string, "email": string }, "description": "Exactly one of the three." },
        "Chat": { "type": "object", "properties": {
            "chat_id": string, "state": { "type": "string", "enum": ["awaiting_first_message", "open"] },
            "peer": string, "peer_name": string, "created_at": { "type": "string", "format": "date-time" },
            "opened_at": time, "last_activity_at": { "type": "string", "format": "date-time" } } },
        "Chats": { "type": "object", "properties": { "chats": { "type": "array", "items": { "$ref": "#/components/schemas/Chat" } } } },
        "ChatMessage": { "type": "object", "description": "A message or a reaction. No read receipts.", "properties": {
            "id": string, "kind": { "type": "string", "enum": ["message", "reaction"] }, "chat_id": string, "message_id": string,
            "reacts_to": opt, "reaction": opt, "direction": { "type": "string", "enum": ["outbound", "inbound"] },
            "from": { "type": "object", "properties": { "teams_user_id": opt, "name": opt } },
            "content_type": { "type": "string", "enum": ["text", "html"] }, "content": string,
            "created_at": { "type": "string", "format": "date-time" }, "edited_at": time, "deleted_at": time,
            "seq": { "type": "integer", "description": "Changes with every edit, deletion or reaction change" } } },
        "Messages": { "type": "object", "properties": {
            "messages": { "type": "array", "items": { "$ref": "#/components/schemas/ChatMessage" } },
            "next_after": { "type": "integer", "description": "Pass as `after` to get what changes next" } } },
        "ChatWithMessages": { "type": "object", "properties": { "chat": { "$ref": "#/components/schemas/Chat" },
            "messages": { "type": "array", "items": { "$ref": "#/components/schemas/ChatMessage" } },
            "next_after": { "type": "integer" } } },
        "SendMessage": { "type": "object", "required": ["text"], "additionalProperties": false, "properties": { "text": string } },
        "Resync": { "type": "object", "properties": { "changed": { "type": "integer" } } },
        "RenewReport": { "type": "object", "properties": { "renewed": { "type": "integer" }, "recreated": { "type": "integer" },
            "skipped": { "type": "integer" }, "failed": { "type": "integer" } } },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = json!({ "paths": openapi_paths() });
        let problems = crate::api::openapi::check_routes(&doc, ROUTES);
        assert!(problems.is_empty(), "{problems:?}");
        let text = openapi_paths().to_string();
        assert!(text.contains("read receipts are not available"));
    }
}
