//! The CRM part of the agent API (Dynamics 365 handoff): the screen pop and the case of an
//! interaction, linking or creating its contact, the AI assistants' handoff, the admin's CRM
//! settings, and (for `mailroom serve`) browsing the Local CRM.
//!
//! Who may do what:
//! - the screen pop and the contact of an interaction: only the agent who holds it (assigned);
//! - the case of an interaction: that agent, or a supervisor or admin;
//! - `POST /v1/ai/handoffs`: only callers with the `ai_assistant` role (and they can do nothing else
//!   here);
//! - the CRM settings and the connection check: admins;
//! - the Local CRM (cases, contacts, note files): every agent, supervisor and admin, as agents
//!   look customers and cases up in the CRM all day; not AI assistants.
//!
//! The Dynamics client secret is write-only: it is accepted by `PUT /v1/admin/crm` and never
//! appears in an answer or a log (`client_secret_set` says whether one is stored).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiModule;
use super::auth::{Authenticator, Caller};
use super::error::ApiError;
use super::json::ValidJson;
use super::openapi::{json_body, path_param, query_param};
use crate::adapters::local_crm::LocalCrm;
use crate::domain::agent::Role;
use crate::domain::crm::{ContactId, HandoffRecord};
use crate::domain::ids::{EmailAddress, InteractionId};
use crate::domain::interaction::InteractionState;
use crate::usecases::crm_settings::{self, CrmSettingsInput, SettingsError};
use crate::usecases::handoff::{AiHandoffRequest, HandoffError, HandoffService, NewContactInput};

#[derive(Clone, FromRef)]
pub struct CrmApiState {
    pub handoff: Arc<HandoffService>,
    /// The Local CRM, where this deployment has one (`mailroom serve`).
    pub local: Option<Arc<LocalCrm>>,
    pub auth: Arc<Authenticator>,
}

/// The routes of this module, as (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/interactions/{interaction_id}/screen-pop"),
    ("post", "/v1/interactions/{interaction_id}/contact"),
    ("post", "/v1/interactions/{interaction_id}/contact/new"),
    ("get", "/v1/interactions/{interaction_id}/case"),
    ("post", "/v1/ai/handoffs"),
    ("get", "/v1/admin/crm"),
    ("put", "/v1/admin/crm"),
    ("post", "/v1/admin/crm/verify"),
    ("get", "/v1/crm/cases"),
    ("get", "/v1/crm/cases/{case_id}"),
    ("get", "/v1/crm/contacts"),
    ("get", "/v1/crm/notes/{note_id}/file"),
];

/// An AI conversation may be long (up to 1,000 messages); everything else stays small.
const AI_HANDOFF_LIMIT: usize = 8 * 1024 * 1024;
/// The header that may carry an AI handoff's idempotency key instead of the body.
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The CRM module for `api::router`: `mailroom serve` passes the service and the Local CRM from
/// `adapters::local_crm::embedded_handoff_service`; a deployment without a Local CRM passes `None`
/// (the `/v1/crm/...` routes then answer 404).
pub fn module(handoff: Arc<HandoffService>, local: Option<Arc<LocalCrm>>, auth: Arc<Authenticator>) -> ApiModule {
    let state = CrmApiState { handoff, local, auth };
    let router = axum::Router::new()
        .route("/v1/interactions/{interaction_id}/screen-pop", get(screen_pop))
        .route("/v1/interactions/{interaction_id}/contact", post(link_contact))
        .route("/v1/interactions/{interaction_id}/contact/new", post(create_contact))
        .route("/v1/interactions/{interaction_id}/case", get(case))
        .route("/v1/ai/handoffs", post(ai_handoff).layer(DefaultBodyLimit::max(AI_HANDOFF_LIMIT)))
        .route("/v1/admin/crm", get(get_settings).put(put_settings))
        .route("/v1/admin/crm/verify", post(verify))
        .route("/v1/crm/cases", get(local_cases))
        .route("/v1/crm/cases/{case_id}", get(local_case))
        .route("/v1/crm/contacts", get(local_contacts))
        .route("/v1/crm/notes/{note_id}/file", get(local_note_file))
        .with_state(state);
    ApiModule { router, routes: ROUTES, openapi_paths: openapi_paths(), openapi_schemas: openapi_schemas() }
}

// ------------------------------------------------------------------ errors

fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_field",
        message: message.into(),
        field: Some(field.into()),
    }
}

fn with_field(mut e: ApiError, field: &str) -> ApiError {
    e.field = Some(field.to_owned());
    e
}

impl From<HandoffError> for ApiError {
    fn from(e: HandoffError) -> Self {
        let message = e.to_string();
        let field = e.field().map(str::to_owned);
        match e {
            HandoffError::NotConfigured(inner) => {
                if inner.is_transient() {
                    tracing::warn!(error = %crate::usecases::handoff::error_text(&inner), "CRM settings unavailable");
                }
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "crm_not_configured", message)
            }
            HandoffError::InteractionNotFound(_) => ApiError::not_found(message),
            HandoffError::Crm { ref source, .. } if source.is_transient() => {
                tracing::warn!(error = %crate::usecases::handoff::error_text(&e), "Dynamics is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "crm_unavailable",
                    "Dynamics is busy or unreachable; try again shortly",
                )
            }
            HandoffError::Crm { .. } => {
                tracing::error!(error = %crate::usecases::handoff::error_text(&e), "Dynamics refused a request");
                ApiError::new(StatusCode::BAD_GATEWAY, "crm_failed", message)
            }
            HandoffError::Store(e) => e.into(),
            HandoffError::InvalidTicketProperties(_)
            | HandoffError::ContactNotFound(_)
            | HandoffError::Invalid { .. } => unprocessable(field.unwrap_or_default(), message),
            HandoffError::ContactRequired { .. } => {
                with_field(ApiError::new(StatusCode::CONFLICT, "contact_required", message), "contact_id")
            }
            HandoffError::AlreadyLinked(_) => {
                with_field(ApiError::new(StatusCode::CONFLICT, "already_linked", message), "contact_id")
            }
            HandoffError::IdempotencyKeyReused(_) => {
                with_field(ApiError::new(StatusCode::CONFLICT, "idempotency_key_reused", message), "idempotency_key")
            }
            HandoffError::Busy(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "crm_busy",
                "the case is being updated by another request; try again",
            ),
        }
    }
}

impl From<SettingsError> for ApiError {
    fn from(e: SettingsError) -> Self {
        let message = e.to_string();
        match e {
            SettingsError::Invalid { field, .. } | SettingsError::Properties { field, .. } => {
                unprocessable(field, message)
            }
            SettingsError::CannotValidate { field, source } => {
                let detail = crate::usecases::handoff::error_text(&source);
                let (status, code) = if source.is_transient() {
                    (StatusCode::SERVICE_UNAVAILABLE, "crm_unavailable")
                } else {
                    (StatusCode::BAD_GATEWAY, "crm_failed")
                };
                tracing::warn!(field, error = %detail, "cannot validate the CRM settings");
                with_field(ApiError::new(status, code, format!("{message}: {detail}")), field)
            }
            SettingsError::Store(e) => e.into(),
        }
    }
}

/// A handoff error as an HTTP answer, keeping the wait Dynamics asked for in `Retry-After`.
pub struct CrmApiError {
    error: ApiError,
    retry_after: Option<Duration>,
}

impl From<ApiError> for CrmApiError {
    fn from(error: ApiError) -> Self {
        Self { error, retry_after: None }
    }
}

impl From<HandoffError> for CrmApiError {
    fn from(e: HandoffError) -> Self {
        let retry_after = e.retry_after();
        Self { error: e.into(), retry_after }
    }
}

impl From<SettingsError> for CrmApiError {
    fn from(e: SettingsError) -> Self {
        Self { error: e.into(), retry_after: None }
    }
}

impl From<crate::ports::BackendError> for CrmApiError {
    fn from(e: crate::ports::BackendError) -> Self {
        Self { error: e.into(), retry_after: None }
    }
}

impl IntoResponse for CrmApiError {
    fn into_response(self) -> Response {
        let status = self.error.status;
        let mut response = self.error.into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE
            && let Some(wait) = self.retry_after
        {
            let secs = wait.as_secs().max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// What the accept answer shows when the screen pop failed: plain words, no internals.
pub(crate) fn screen_pop_problem(e: HandoffError) -> String {
    ApiError::from(e).message
}

// ------------------------------------------------------------------ who holds what

fn interaction_id(raw: &str) -> Result<InteractionId, ApiError> {
    InteractionId::parse(raw).map_err(|e| ApiError::field("interaction_id", e.to_string()))
}

/// Whether `caller` is the agent the interaction is assigned to (404 when it does not exist).
pub(crate) async fn holds(handoff: &HandoffService, caller: &Caller, id: &InteractionId) -> Result<bool, ApiError> {
    let interaction = handoff
        .interactions
        .interaction(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("interaction {id} does not exist")))?;
    Ok(interaction.state == InteractionState::Assigned && interaction.routing.agent.as_ref() == Some(&caller.id))
}

async fn require_holder(s: &CrmApiState, caller: &Caller, raw: &str) -> Result<InteractionId, ApiError> {
    let id = interaction_id(raw)?;
    if !holds(&s.handoff, caller, &id).await? {
        return Err(ApiError::forbidden("only the agent who holds this interaction can do this"));
    }
    Ok(id)
}

/// Agents, supervisors and admins; not AI assistants.
fn require_staff(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == Role::AiAssistant {
        Err(ApiError::forbidden("AI assistants can only hand conversations off (POST /v1/ai/handoffs)"))
    } else {
        Ok(())
    }
}

fn case_view(r: &HandoffRecord) -> Value {
    json!({
        "incident_id": r.incident_id,
        "ticket_number": r.ticket_number,
        "stage": r.stage,
        "contact_id": r.contact,
        "contact_resolution": r.contact_resolution,
        "candidates": r.candidates,
        "ambiguity": r.ambiguity,
        "queued_in": r.queued_in,
        "emails_on_case": r.appended.len(),
        "description_truncated": r.description_truncated,
        "transcript_note_added": r.transcript_note_added,
        "attachments": r.attachments,
        "last_error": r.last_error,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    })
}

// ------------------------------------------------------------------ interactions

async fn screen_pop(
    State(s): State<CrmApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, CrmApiError> {
    let id = require_holder(&s, &caller, &id).await?;
    Ok(Json(json!(s.handoff.screen_pop(&id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    contact_id: String,
}

async fn link_contact(
    State(s): State<CrmApiState>,
    caller: Caller,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<LinkBody>,
) -> Result<Json<Value>, CrmApiError> {
    let id = require_holder(&s, &caller, &id).await?;
    let contact = ContactId::parse(&body.contact_id).map_err(|e| ApiError::field("contact_id", e.to_string()))?;
    Ok(Json(case_view(&s.handoff.link_contact(&id, &contact).await?)))
}

async fn create_contact(
    State(s): State<CrmApiState>,
    caller: Caller,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<NewContactInput>,
) -> Result<Response, CrmApiError> {
    let id = require_holder(&s, &caller, &id).await?;
    let record = s.handoff.create_contact_and_link(&id, body).await?;
    Ok((StatusCode::CREATED, Json(case_view(&record))).into_response())
}

async fn case(
    State(s): State<CrmApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, CrmApiError> {
    require_staff(&caller)?;
    let id = interaction_id(&id)?;
    if !caller.role.supervises() && !holds(&s.handoff, &caller, &id).await? {
        return Err(ApiError::forbidden(
            "only the agent who holds this interaction, or a supervisor, can see its case",
        )
        .into());
    }
    match s.handoff.case_for_interaction(&id).await? {
        Some(record) => Ok(Json(case_view(&record))),
        None => {
            Err(ApiError::not_found("this interaction has no case yet (it gets one when an agent accepts it)").into())
        }
    }
}

// ------------------------------------------------------------------ AI handoff

async fn ai_handoff(
    State(s): State<CrmApiState>,
    caller: Caller,
    headers: HeaderMap,
    ValidJson(mut body): ValidJson<Value>,
) -> Result<Response, CrmApiError> {
    if caller.role != Role::AiAssistant {
        return Err(ApiError::forbidden("only AI assistants (role ai_assistant) hand conversations off here").into());
    }
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::field("body", "the body must be a JSON object").into());
    };
    if let Some(raw) = headers.get(IDEMPOTENCY_HEADER) {
        let key = raw
            .to_str()
            .map_err(|_| ApiError::field("idempotency_key", "the Idempotency-Key header must be printable text"))?
            .trim()
            .to_owned();
        match object.get("idempotency_key") {
            Some(Value::String(k)) if k.trim() != key => {
                return Err(ApiError::field(
                    "idempotency_key",
                    "the Idempotency-Key header and the body's idempotency_key differ",
                )
                .into());
            }
            _ => {
                object.insert("idempotency_key".into(), Value::String(key));
            }
        }
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::field("body", e.to_string()))?;
    let request: AiHandoffRequest = super::json::parse(&bytes)?;
    let result = s.handoff.ai_handoff(&caller.id, request).await?;
    let status = if result.replayed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!(result))).into_response())
}

// ------------------------------------------------------------------ admin settings

async fn get_settings(State(s): State<CrmApiState>, caller: Caller) -> Result<Json<Value>, CrmApiError> {
    caller.require_admin()?;
    match crm_settings::settings_view(&s.handoff.runtime).await? {
        Some(view) => Ok(Json(json!(view))),
        None => {
            Err(ApiError::not_found("no CRM is configured yet: PUT /v1/admin/crm with the Dynamics settings").into())
        }
    }
}

async fn put_settings(
    State(s): State<CrmApiState>,
    caller: Caller,
    ValidJson(input): ValidJson<CrmSettingsInput>,
) -> Result<Json<Value>, CrmApiError> {
    caller.require_admin()?;
    let view = crm_settings::save_settings(&s.handoff.runtime, input).await?;
    tracing::info!(admin = %caller.id, backend = ?view.backend, revision = view.revision, "CRM settings saved");
    Ok(Json(json!(view)))
}

async fn verify(State(s): State<CrmApiState>, caller: Caller) -> Result<Json<Value>, CrmApiError> {
    caller.require_admin()?;
    Ok(Json(json!(crm_settings::verify_connection(&s.handoff.runtime).await)))
}

// ------------------------------------------------------------------ Local CRM

fn local(s: &CrmApiState, caller: &Caller) -> Result<Arc<LocalCrm>, ApiError> {
    require_staff(caller)?;
    s.local
        .clone()
        .ok_or_else(|| ApiError::not_found("this deployment has no Local CRM: look the case up in Dynamics 365"))
}

fn query_error(e: axum::extract::rejection::QueryRejection) -> ApiError {
    let text = e.body_text();
    let field = text.split('`').nth(1).unwrap_or("query").to_owned();
    ApiError::field(field, text.rsplit(": ").next().unwrap_or(&text).to_owned())
}

fn limit(raw: Option<usize>) -> Result<usize, ApiError> {
    let limit = raw.unwrap_or(50);
    if (1..=200).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::field("limit", "limit must be between 1 and 200"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesParams {
    limit: Option<usize>,
}

async fn local_cases(
    State(s): State<CrmApiState>,
    caller: Caller,
    params: Result<Query<CasesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, CrmApiError> {
    let crm = local(&s, &caller)?;
    let Query(p) = params.map_err(query_error)?;
    Ok(Json(json!({ "cases": crm.list_cases(limit(p.limit)?)? })))
}

async fn local_case(
    State(s): State<CrmApiState>,
    caller: Caller,
    Path(case_id): Path<String>,
) -> Result<Json<Value>, CrmApiError> {
    let crm = local(&s, &caller)?;
    match crm.case_detail(&case_id)? {
        Some(detail) => Ok(Json(json!(detail))),
        None => Err(ApiError::not_found(format!("no case has the id or case number {:?}", case_id.trim())).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactsParams {
    email: Option<String>,
    limit: Option<usize>,
}

async fn local_contacts(
    State(s): State<CrmApiState>,
    caller: Caller,
    params: Result<Query<ContactsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, CrmApiError> {
    let crm = local(&s, &caller)?;
    let Query(p) = params.map_err(query_error)?;
    let email = p
        .email
        .filter(|e| !e.trim().is_empty())
        .map(|e| EmailAddress::parse(&e).map_err(|e| ApiError::field("email", e.to_string())))
        .transpose()?;
    Ok(Json(json!({ "contacts": crm.list_contacts(email.as_ref(), limit(p.limit)?)? })))
}

async fn local_note_file(
    State(s): State<CrmApiState>,
    caller: Caller,
    Path(note_id): Path<String>,
) -> Result<Response, CrmApiError> {
    let crm = local(&s, &caller)?;
    let Some((name, mime, bytes)) = crm.note_file(&note_id)? else {
        return Err(ApiError::not_found("this note has no file").into());
    };
    let mime = HeaderValue::from_str(&mime).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let safe: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' }).collect();
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or(HeaderValue::from_static("attachment"));
    Ok(([(header::CONTENT_TYPE, mime), (header::CONTENT_DISPOSITION, disposition)], Bytes::from(bytes)).into_response())
}

// ------------------------------------------------------------------ OpenAPI

fn error_response(description: &str) -> Value {
    json!({ "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn responses(status: &str, schema: &str, description: &str) -> Value {
    json!({ status: { "description": description,
                      "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } },
            "400": { "$ref": "#/components/responses/BadRequest" },
            "401": { "$ref": "#/components/responses/Unauthorized" },
            "403": { "$ref": "#/components/responses/Forbidden" },
            "404": { "$ref": "#/components/responses/NotFound" },
            "409": { "$ref": "#/components/responses/Conflict" },
            "422": error_response("A field the CRM would refuse (`error.field` names it)"),
            "502": error_response("Dynamics refused the request (the message names the privilege or property)"),
            "503": error_response("No CRM is configured, or Dynamics is busy or unreachable (see Retry-After)") })
}

fn openapi_paths() -> Value {
    let interaction = || path_param("interaction_id", "The interaction.");
    let limit = || {
        query_param(
            "limit",
            json!({ "type": "integer", "minimum": 1, "maximum": 200 }),
            "At most this many (default 50).",
        )
    };
    let mut ai = responses("201", "AiHandoffResult", "The case was created");
    ai["200"] = json!({ "description": "This idempotency key was handed off before: the same case (`replayed: true`)",
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AiHandoffResult" } } } });
    json!({
        "/v1/interactions/{interaction_id}/screen-pop": { "get": {
            "summary": "The screen pop of an interaction (the agent who holds it)",
            "description": "What `POST /v1/me/offers/{id}/accept` also returns as `screen_pop`: how many CRM contacts carry the sender's address and which, the case (created and linked when exactly one matched; `awaiting_contact` when none or several did: pick one with `/contact` or create it with `/contact/new`; `pending` while Dynamics is busy), a prefilled new-contact form when none matched, and the inbound email. Safe to call again.",
            "parameters": [interaction()], "responses": responses("200", "ScreenPop", "The screen pop") } },
        "/v1/interactions/{interaction_id}/contact": { "post": {
            "summary": "Link the case to the contact the agent picked (the agent who holds the interaction)",
            "description": "422 (`contact_id`) when the contact does not exist in the CRM; 409 when the case is already linked to another contact.",
            "parameters": [interaction()], "requestBody": json_body("LinkContact"),
            "responses": responses("200", "Case", "The case, linked") } },
        "/v1/interactions/{interaction_id}/contact/new": { "post": {
            "summary": "Create the missing contact and link the case to it (the agent who holds the interaction)",
            "description": "`email` defaults to the customer's address. 422 names the field (`last_name`, `first_name`: at most 50 characters).",
            "parameters": [interaction()], "requestBody": json_body("NewContact"),
            "responses": responses("201", "Case", "The contact was created and the case linked to it") } },
        "/v1/interactions/{interaction_id}/case": { "get": {
            "summary": "The CRM case of an interaction (the agent who holds it, supervisors, admins)",
            "description": "404 until the interaction has been handed off (on accept).",
            "parameters": [interaction()], "responses": responses("200", "Case", "The case") } },
        "/v1/ai/handoffs": { "post": {
            "summary": "An AI assistant hands a conversation off to the CRM (role ai_assistant only)",
            "description": "Creates one case per (assistant, idempotency key), with the contact matched or created from `sender`, the transcript in the description (and in full in the note \"Full transcript\" when it is longer), and `ticket_properties` checked against the CRM's option sets (422 `ticket_properties` with every problem). The key may be sent as the `Idempotency-Key` header instead of the body's `idempotency_key`. Repeating the call answers 200 with the same case; the same key with another conversation is 409 `idempotency_key`.",
            "parameters": [{ "name": "Idempotency-Key", "in": "header", "required": false, "schema": { "type": "string" },
                             "description": "The idempotency key, when the body does not carry it." }],
            "requestBody": json_body("AiHandoff"), "responses": ai } },
        "/v1/admin/crm": {
            "get": { "summary": "The CRM settings (admin); the client secret is never shown, only `client_secret_set`",
                     "responses": responses("200", "CrmSettings", "The settings") },
            "put": { "summary": "Save the CRM settings (admin)",
                     "description": "The whole settings. `backend`: `local` (the built-in Local CRM of `mailroom serve`) or `dataverse` with `environment_url`, `tenant`, `client_id` and `client_secret` (write-only; omit it to keep the stored one). `ticket_properties` and `default_priority` are checked against Dynamics' option sets now (422 naming the field; 502/503 when they cannot be read). A missing default queue is a warning, not an error.",
                     "requestBody": json_body("CrmSettingsInput"), "responses": responses("200", "CrmSettings", "The saved settings") } },
        "/v1/admin/crm/verify": { "post": {
            "summary": "Verify the connection to the CRM (admin)",
            "description": "Gets a token, calls WhoAmI, checks the privileges the handoff needs, the default queue and owner and the ticket properties. Always 200: `status` is `active` or `problem`, with each problem in plain words.",
            "responses": responses("200", "ConnectionReport", "The report") } },
        "/v1/crm/cases": { "get": {
            "summary": "Cases in the Local CRM, newest first (mailroom serve; agents, supervisors, admins)",
            "parameters": [limit()], "responses": responses("200", "LocalCases", "Cases") } },
        "/v1/crm/cases/{case_id}": { "get": {
            "summary": "A Local CRM case by id or case number, with its contact, emails and notes",
            "parameters": [path_param("case_id", "The incident id or the case number (CAS-01000-...).")],
            "responses": responses("200", "LocalCaseDetail", "The case") } },
        "/v1/crm/contacts": { "get": {
            "summary": "Contacts in the Local CRM, newest first (mailroom serve; agents, supervisors, admins)",
            "parameters": [query_param("email", json!({ "type": "string" }), "Only contacts carrying this address."), limit()],
            "responses": responses("200", "LocalContacts", "Contacts") } },
        "/v1/crm/notes/{note_id}/file": { "get": {
            "summary": "The file attached to a Local CRM note (a customer attachment)",
            "parameters": [path_param("note_id", "The note's id.")],
            "responses": { "200": { "description": "The file, with its MIME type", "content": { "application/octet-stream": {} } },
                           "401": { "$ref": "#/components/responses/Unauthorized" },
                           "403": { "$ref": "#/components/responses/Forbidden" },
                           "404": { "$ref": "#/components/responses/NotFound" } } } },
    })
}

fn openapi_schemas() -> Value {
    let string = json!({ "type": "string" });
    let opt = json!({ "type": ["string", "null"] });
    let time = json!({ "type": "string", "format": "date-time" });
    let candidate = json!({ "type": "object", "properties": { "id": string, "name": string,
        "matched_on": { "type": "integer", "description": "Which email column (1, 2 or 3) carries the sender's address" } } });
    json!({
        "ContactCandidate": candidate,
        "ScreenPop": { "type": "object", "properties": {
            "interaction_id": string,
            "matches": { "type": ["integer", "null"], "description": "How many contacts carry the sender's address (null: the lookup could not run)" },
            "contacts": { "type": "array", "items": { "$ref": "#/components/schemas/ContactCandidate" } },
            "case": { "type": "object", "properties": {
                "status": { "type": "string", "enum": ["created", "awaiting_contact", "pending", "failed"] },
                "incident_id": string, "ticket_number": string, "contact_id": string, "reason": string } },
            "new_contact": { "type": ["object", "null"], "properties": { "first_name": opt, "last_name": string, "email": string } },
            "inbound_email": { "type": ["object", "null"], "properties": { "from": string, "from_name": opt, "subject": string,
                "received_at": time, "text": string } } } },
        "LinkContact": { "type": "object", "required": ["contact_id"], "additionalProperties": false,
            "properties": { "contact_id": string } },
        "NewContact": { "type": "object", "required": ["last_name"], "additionalProperties": false,
            "properties": { "first_name": string, "last_name": string, "email": string } },
        "Case": { "type": "object", "properties": {
            "incident_id": string, "ticket_number": opt,
            "stage": { "type": "string", "enum": ["started", "awaiting_contact", "created"] },
            "contact_id": opt,
            "contact_resolution": { "type": ["string", "null"], "enum": ["matched", "matched_ambiguous", "created_from_sender", "picked_by_agent", "created_by_agent", null] },
            "candidates": { "type": "array", "items": { "$ref": "#/components/schemas/ContactCandidate" } },
            "ambiguity": opt, "queued_in": opt, "emails_on_case": { "type": "integer" },
            "description_truncated": { "type": "boolean" }, "transcript_note_added": { "type": "boolean" },
            "attachments": { "type": "array", "items": { "type": "object" } },
            "last_error": opt, "created_at": time, "updated_at": time } },
        "AiHandoff": { "type": "object", "required": ["sender", "messages", "classification"], "additionalProperties": false,
            "properties": {
                "idempotency_key": { "type": "string", "description": "1 to 200 printable characters (or the Idempotency-Key header)" },
                "sender": { "type": "object", "required": ["email"], "properties": { "email": string, "name": opt } },
                "messages": { "type": "array", "minItems": 1, "maxItems": 1000, "items": { "type": "object",
                    "required": ["timestamp", "role", "text"], "properties": { "timestamp": time,
                    "role": { "type": "string", "enum": ["customer", "user", "assistant", "agent"] }, "text": string } } },
                "classification": { "type": "string", "minLength": 1, "maxLength": 100 },
                "sentiment": { "type": ["string", "null"] },
                "summary": { "type": ["string", "null"], "maxLength": 1000 },
                "ticket_properties": { "type": "object", "description": "Column logical name to an option value (integer) or an unambiguous label",
                    "additionalProperties": { "type": ["integer", "string"] } } } },
        "AiHandoffResult": { "type": "object", "properties": {
            "incident_id": string, "ticket_number": string, "contact_id": string,
            "contact_resolution": opt, "ambiguity": opt,
            "transcript_in_note": { "type": "boolean" }, "replayed": { "type": "boolean" } } },
        "CrmSettingsInput": { "type": "object", "additionalProperties": false, "properties": {
            "backend": { "type": "string", "enum": ["local", "dataverse"] },
            "environment_url": string, "tenant": string, "client_id": string,
            "client_secret": { "type": "string", "writeOnly": true }, "authority": string,
            "default_queue_id": string, "default_owner_id": string,
            "default_owner_type": { "type": "string", "enum": ["systemuser", "team"] },
            "default_priority": { "type": "integer" }, "map_mailroom_priority": { "type": "boolean" },
            "ticket_properties": { "type": "object", "additionalProperties": { "type": ["integer", "string"] } } } },
        "CrmSettings": { "type": "object", "properties": {
            "backend": { "type": "string", "enum": ["local", "dataverse"] },
            "environment_url": opt, "tenant": opt, "client_id": opt,
            "client_secret_set": { "type": "boolean", "description": "The secret itself is never returned" },
            "authority": opt, "default_queue_id": opt, "default_owner_id": opt, "default_owner_type": opt,
            "default_priority": { "type": "integer" }, "map_mailroom_priority": { "type": "boolean" },
            "ticket_properties": { "type": "object" }, "revision": { "type": "integer" }, "updated_at": time,
            "warnings": { "type": "array", "items": string } } },
        "ConnectionReport": { "type": "object", "properties": {
            "status": { "type": "string", "enum": ["active", "problem"] },
            "crm": opt, "user_id": opt,
            "checks": { "type": "array", "items": { "type": "object", "properties": {
                "name": string, "ok": { "type": "boolean" }, "detail": string } } },
            "problems": { "type": "array", "items": string } } },
        "LocalCase": { "type": "object", "properties": {
            "id": string, "ticket_number": string, "title": string, "customer_id": string, "customer_name": string,
            "origin": { "type": "integer" }, "priority": { "type": ["integer", "null"] }, "owner": opt, "queue_id": opt,
            "properties": { "type": "object" }, "created_on": string } },
        "LocalCases": { "type": "object", "properties": { "cases": { "type": "array", "items": { "$ref": "#/components/schemas/LocalCase" } } } },
        "LocalContact": { "type": "object", "properties": {
            "id": string, "first_name": opt, "last_name": opt, "full_name": opt,
            "emails": { "type": "array", "items": opt }, "created_on": { "type": ["string", "null"], "format": "date-time" } } },
        "LocalContacts": { "type": "object", "properties": { "contacts": { "type": "array", "items": { "$ref": "#/components/schemas/LocalContact" } } } },
        "LocalCaseDetail": { "allOf": [{ "$ref": "#/components/schemas/LocalCase" }, { "type": "object", "properties": {
            "description": string, "customer": { "$ref": "#/components/schemas/LocalContact" },
            "activities": { "type": "array", "items": { "type": "object", "properties": { "id": string, "subject": string,
                "body": string, "incoming": { "type": "boolean" }, "from": string,
                "recipients": { "type": "array", "items": string }, "sent_at": string } } },
            "notes": { "type": "array", "items": { "type": "object", "properties": { "id": string, "subject": string,
                "text": string, "file_name": opt, "mime_type": opt, "size": { "type": ["integer", "null"] }, "created_on": string } } } } }] },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::embedded::EmbeddedBackend;
    use crate::api::auth::mint_local_token;
    use crate::api::{AppState, router};
    use crate::config::AppConfig;
    use crate::domain::ids::{AgentId, QueueName};
    use crate::domain::journal::Source;
    use crate::ports::crm::{Crm, NewContact};
    use crate::usecases::ingest::{InboundEmail, IngestService};
    use crate::usecases::routing::RoutingService;

    const SECRET: &[u8] = b"a-test-signing-key-of-32-bytes-or-more";

    struct Setup {
        base: String,
        http: reqwest::Client,
        ingest: IngestService,
        routing: RoutingService,
        local: Arc<LocalCrm>,
        _dir: tempfile::TempDir,
    }

    impl Setup {
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let backend = EmbeddedBackend::open(dir.path()).unwrap();
            let config = AppConfig::demo();
            let ingest = crate::app::embedded_ingest_service(&config, &backend).unwrap();
            let routing = crate::app::embedded_routing_service(&backend);
            routing.seed(&config.agents, &config.queues).await.unwrap();
            let (handoff, local) = crate::adapters::local_crm::embedded_handoff_service(&backend).unwrap();
            let auth = Arc::new(Authenticator::local(SECRET));
            let state = AppState { routing: routing.clone(), auth: auth.clone(), handoff: Some(handoff.clone()) };
            let app = router(state, vec![module(handoff, Some(local.clone()), auth)]);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            Setup { base, http: reqwest::Client::new(), ingest, routing, local, _dir: dir }
        }

        fn token(agent: &str, role: Role) -> String {
            mint_local_token(SECRET, &AgentId::parse(agent).unwrap(), role, chrono::Duration::hours(1))
        }

        async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
            self.call_with(method, path, token, body, &[]).await
        }

        async fn call_with(
            &self,
            method: &str,
            path: &str,
            token: &str,
            body: Option<Value>,
            headers: &[(&str, &str)],
        ) -> (u16, Value) {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }

        /// Sends an email from `from` and offers it to ana; returns the interaction id.
        async fn offer_to_ana(&self, from: &str, subject: &str) -> String {
            let raw = format!(
                "From: {from}\r\nTo: support@example.com\r\nSubject: {subject}\r\nMessage-ID: <{}@example.org>\r\nDate: Mon, 6 Jan 2025 10:00:00 +0000\r\n\r\nHello, {subject}.\r\n",
                uuid::Uuid::new_v4()
            );
            let outcome = self.ingest.ingest(InboundEmail::new(raw.into_bytes(), Source::Replay)).await.unwrap();
            let id = outcome.entry.interaction_id.clone().expect("an interaction").to_string();
            let ana = Self::token("ana", Role::Agent);
            let (status, _) = self.call("PUT", "/v1/me/presence", &ana, Some(json!({ "presence": "available" }))).await;
            assert_eq!(status, 200);
            self.routing.dispatch(&QueueName::parse("support").unwrap()).await.unwrap();
            let (_, offers) = self.call("GET", "/v1/me/offers", &ana, None).await;
            assert!(offers.to_string().contains(&id), "{offers}");
            id
        }
    }

    #[tokio::test]
    async fn accept_shows_the_screen_pop_and_the_agent_settles_the_contact() {
        let s = Setup::new().await;
        let ana = Setup::token("ana", Role::Agent);
        let ben = Setup::token("ben", Role::Agent);
        let id = s.offer_to_ana("Alice Moreau <alice@example.org>", "Order 48213").await;

        let (status, body) = s.call("POST", &format!("/v1/me/offers/{id}/accept"), &ana, None).await;
        assert_eq!(status, 200, "{body}");
        let pop = &body["screen_pop"];
        assert_eq!(pop["matches"], json!(0), "{body}");
        assert_eq!(pop["case"]["status"], json!("awaiting_contact"), "{body}");
        assert_eq!(pop["new_contact"]["last_name"], json!("Moreau"), "{body}");
        assert!(pop["inbound_email"]["subject"].as_str().unwrap().contains("Order 48213"));

        // Only the agent holding it.
        let (status, _) = s.call("GET", &format!("/v1/interactions/{id}/screen-pop"), &ben, None).await;
        assert_eq!(status, 403);
        let (status, _) = s
            .call("POST", &format!("/v1/interactions/{id}/contact/new"), &ben, Some(json!({ "last_name": "X" })))
            .await;
        assert_eq!(status, 403);
        let (status, body) = s.call("GET", &format!("/v1/interactions/{id}/screen-pop"), &ana, None).await;
        assert_eq!((status, &body["matches"]), (200, &json!(0)), "{body}");

        // No wrap-up while the case waits for its contact.
        let (status, body) = s.call("POST", &format!("/v1/interactions/{id}/end"), &ana, None).await;
        assert_eq!((status, &body["error"]["field"]), (409, &json!("contact_id")), "{body}");

        // Bad input names its field.
        let unknown = ContactId::derive("nobody");
        let (status, body) = s
            .call("POST", &format!("/v1/interactions/{id}/contact"), &ana, Some(json!({ "contact_id": unknown })))
            .await;
        assert_eq!((status, &body["error"]["field"]), (422, &json!("contact_id")), "{body}");
        let (status, body) = s
            .call("POST", &format!("/v1/interactions/{id}/contact"), &ana, Some(json!({ "contact_id": "nope" })))
            .await;
        assert_eq!((status, &body["error"]["field"]), (400, &json!("contact_id")), "{body}");
        let (status, body) = s
            .call("POST", &format!("/v1/interactions/{id}/contact/new"), &ana, Some(json!({ "last_name": " " })))
            .await;
        assert_eq!((status, &body["error"]["field"]), (422, &json!("last_name")), "{body}");
        let (status, body) = s
            .call(
                "POST",
                &format!("/v1/interactions/{id}/contact/new"),
                &ana,
                Some(json!({ "last_name": "Moreau", "colour": "blue" })),
            )
            .await;
        assert_eq!((status, &body["error"]["field"]), (400, &json!("colour")), "{body}");

        // Create the contact: the case is created, linked to it, and shows in the Local CRM.
        let (status, body) = s
            .call(
                "POST",
                &format!("/v1/interactions/{id}/contact/new"),
                &ana,
                Some(json!({ "first_name": "Alice", "last_name": "Moreau-Leroy" })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!((&body["stage"], &body["contact_resolution"]), (&json!("created"), &json!("created_by_agent")));
        let ticket = body["ticket_number"].as_str().unwrap().to_owned();
        let (status, case) = s.call("GET", &format!("/v1/interactions/{id}/case"), &ana, None).await;
        assert_eq!((status, &case["ticket_number"]), (200, &json!(ticket)), "{case}");
        let (status, _) = s.call("GET", &format!("/v1/interactions/{id}/case"), &ben, None).await;
        assert_eq!(status, 403, "another agent does not see it");
        let (status, cases) = s.call("GET", "/v1/crm/cases", &ben, None).await;
        assert_eq!((status, cases["cases"].as_array().unwrap().len()), (200, 1), "{cases}");
        let (status, detail) = s.call("GET", &format!("/v1/crm/cases/{ticket}"), &ana, None).await;
        assert_eq!((status, &detail["customer"]["last_name"]), (200, &json!("Moreau-Leroy")), "{detail}");
        let (status, contacts) = s.call("GET", "/v1/crm/contacts?email=alice@example.org", &ana, None).await;
        assert_eq!((status, contacts["contacts"].as_array().unwrap().len()), (200, 1), "{contacts}");
        let (status, body) = s.call("GET", "/v1/crm/cases?limit=0", &ana, None).await;
        assert_eq!((status, &body["error"]["field"]), (400, &json!("limit")), "{body}");
        let (status, body) = s.call("POST", &format!("/v1/interactions/{id}/end"), &ana, None).await;
        assert_eq!(status, 200, "{body}");

        // Several matches: the agent picks one.
        let sender = EmailAddress::parse("priya@example.net").unwrap();
        let mut ids = Vec::new();
        for last in ["Shah", "Shah-Patel"] {
            let contact = ContactId::derive(&format!("priya-{last}"));
            s.local
                .create_contact(&NewContact {
                    id: contact.clone(),
                    first_name: Some("Priya".into()),
                    last_name: last.into(),
                    email: sender.clone(),
                })
                .await
                .unwrap();
            ids.push(contact);
        }
        let id = s.offer_to_ana("Priya Shah <priya@example.net>", "Refund").await;
        let (status, body) = s.call("POST", &format!("/v1/me/offers/{id}/accept"), &ana, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["screen_pop"]["matches"], json!(2), "{body}");
        let (status, body) = s
            .call("POST", &format!("/v1/interactions/{id}/contact"), &ana, Some(json!({ "contact_id": ids[1] })))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((&body["contact_id"], &body["contact_resolution"]), (&json!(ids[1]), &json!("picked_by_agent")));
        let (status, body) = s
            .call("POST", &format!("/v1/interactions/{id}/contact"), &ana, Some(json!({ "contact_id": ids[0] })))
            .await;
        assert_eq!((status, &body["error"]["field"]), (409, &json!("contact_id")), "{body}");
    }

    fn ai_body(classification: &str) -> Value {
        json!({
            "sender": { "email": "dana@example.org", "name": "Dana Smith" },
            "messages": [
                { "timestamp": "2025-01-06T10:00:00Z", "role": "customer", "text": "My parcel never arrived." },
                { "timestamp": "2025-01-06T10:00:05Z", "role": "assistant", "text": "I am handing you to an agent." }
            ],
            "classification": classification,
            "summary": "Parcel lost"
        })
    }

    #[tokio::test]
    async fn ai_handoffs_are_idempotent_and_for_assistants_only() {
        let s = Setup::new().await;
        let bot = Setup::token("bot", Role::AiAssistant);
        let ana = Setup::token("ana", Role::Agent);
        let key = [("Idempotency-Key", "conv-1")];
        let (status, first) = s.call_with("POST", "/v1/ai/handoffs", &bot, Some(ai_body("delivery")), &key).await;
        assert_eq!(status, 201, "{first}");
        assert_eq!(first["replayed"], json!(false));
        let (status, again) = s.call_with("POST", "/v1/ai/handoffs", &bot, Some(ai_body("delivery")), &key).await;
        assert_eq!((status, &again["replayed"]), (200, &json!(true)), "{again}");
        assert_eq!(again["incident_id"], first["incident_id"]);
        let (status, body) = s.call_with("POST", "/v1/ai/handoffs", &bot, Some(ai_body("billing")), &key).await;
        assert_eq!((status, &body["error"]["field"]), (409, &json!("idempotency_key")), "{body}");
        let (status, _) = s.call_with("POST", "/v1/ai/handoffs", &ana, Some(ai_body("delivery")), &key).await;
        assert_eq!(status, 403);
        let (status, body) = s.call("POST", "/v1/ai/handoffs", &bot, Some(ai_body("delivery"))).await;
        assert_eq!((status, &body["error"]["field"]), (400, &json!("idempotency_key")), "{body}");
        let (status, body) =
            s.call_with("POST", "/v1/ai/handoffs", &bot, Some(ai_body(" ")), &[("Idempotency-Key", "conv-2")]).await;
        assert_eq!((status, &body["error"]["field"]), (422, &json!("classification")), "{body}");
        let mut props = ai_body("delivery");
        props["ticket_properties"] = json!({ "caseorigincode": "Carrier pigeon" });
        let (status, body) =
            s.call_with("POST", "/v1/ai/handoffs", &bot, Some(props), &[("Idempotency-Key", "conv-3")]).await;
        assert_eq!((status, &body["error"]["field"]), (422, &json!("ticket_properties")), "{body}");
        // An assistant may not browse the CRM.
        let (status, _) = s.call("GET", "/v1/crm/cases", &bot, None).await;
        assert_eq!(status, 403);
        assert_eq!(s.local.list_cases(10).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn admins_set_the_crm_and_never_see_the_secret() {
        let s = Setup::new().await;
        let admin = Setup::token("sam", Role::Admin);
        let ana = Setup::token("ana", Role::Agent);
        let (status, body) = s.call("GET", "/v1/admin/crm", &admin, None).await;
        assert_eq!((status, &body["backend"]), (200, &json!("local")), "{body}");
        let (status, _) = s.call("GET", "/v1/admin/crm", &ana, None).await;
        assert_eq!(status, 403);

        let secret = "very-secret-client-value-123";
        let settings = json!({
            "backend": "dataverse",
            "environment_url": "http://127.0.0.1:45690",
            "tenant": "00000000-0000-0000-0000-000000000001",
            "client_id": "mailroom-app",
            "client_secret": secret,
            "authority": "http://127.0.0.1:45690"
        });
        let mut bad = settings.clone();
        bad["environment_url"] = json!("ftp://crm.example.com");
        let (status, body) = s.call("PUT", "/v1/admin/crm", &admin, Some(bad)).await;
        assert_eq!((status, &body["error"]["field"]), (422, &json!("environment_url")), "{body}");
        let (status, body) = s.call("PUT", "/v1/admin/crm", &admin, Some(settings)).await;
        assert_eq!(status, 200, "{body}");
        assert!(!body.to_string().contains(secret), "{body}");
        let (status, body) = s.call("GET", "/v1/admin/crm", &admin, None).await;
        assert_eq!((status, &body["client_secret_set"]), (200, &json!(true)), "{body}");
        assert_eq!(body["backend"], json!("dataverse"));
        assert!(!body.to_string().contains(secret), "{body}");
        let (status, body) = s.call("PUT", "/v1/admin/crm", &admin, Some(json!({ "backend": "local" }))).await;
        assert_eq!((status, &body["backend"]), (200, &json!("local")), "{body}");
        let (status, report) = s.call("POST", "/v1/admin/crm/verify", &admin, None).await;
        assert_eq!(status, 200, "{report}");
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = json!({ "paths": openapi_paths() });
        let problems = crate::api::openapi::check_routes(&doc, ROUTES);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(openapi_paths().to_string().contains("Idempotency-Key"));
    }
}
