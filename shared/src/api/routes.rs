//! `/v1` routes for agents and supervisors. Each handler extracts, calls one use-case function,
//! and maps the result: nothing else.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::json::ValidJson;
use crate::domain::ids::{InteractionId, QueueName};
use crate::domain::presence::ChosenPresence;
use crate::usecases::handoff::HandoffError;

fn interaction_id(raw: &str) -> Result<InteractionId, ApiError> {
    InteractionId::parse(raw).map_err(|e| ApiError::field("interaction_id", e.to_string()))
}

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn me(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let record = s.routing.agent(&caller.id).await?;
    Ok(Json(json!({
        "agent_id": record.agent.id,
        "name": record.agent.name,
        "email": record.agent.email,
        "role": caller.role.as_str(),
        "queues": record.agent.queues,
        "capacity": record.agent.capacity,
    })))
}

pub async fn get_presence(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let record = s.routing.agent(&caller.id).await?;
    Ok(Json(json!(crate::usecases::routing::PresenceView::from(&record))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceBody {
    presence: ChosenPresence,
}

pub async fn put_presence(
    State(s): State<AppState>,
    caller: Caller,
    ValidJson(body): ValidJson<PresenceBody>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.routing.set_presence(&caller.id, body.presence).await?)))
}

pub async fn offers(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "offers": s.routing.offers(&caller.id).await? })))
}

pub async fn accept(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = interaction_id(&id)?;
    let mut body = json!(s.routing.accept(&caller.id, &id).await?);
    if let Some(handoff) = &s.handoff {
        // The accept has happened: a CRM problem is shown in the screen pop, never a failed accept.
        body["screen_pop"] = match handoff.screen_pop(&id).await {
            Ok(pop) => json!(pop),
            Err(e) => {
                tracing::warn!(interaction_id = %id, error = %crate::usecases::handoff::error_text(&e), "no screen pop on accept");
                json!({ "error": super::crm::screen_pop_problem(e) })
            }
        };
    }
    Ok(Json(body))
}

pub async fn reject(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.routing.reject(&caller.id, &interaction_id(&id)?).await?)))
}

pub async fn my_interactions(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "interactions": s.routing.interactions(&caller.id).await? })))
}

pub async fn interaction(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (view, messages) = s.routing.interaction(&caller.id, caller.role, &interaction_id(&id)?).await?;
    let transcript: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "direction": m.direction,
                "message_id": m.message_id,
                "from": m.from,
                "from_name": m.from_name,
                "to": m.to,
                "cc": m.cc,
                "subject": m.subject,
                "sent_at": m.sent_at,
                "received_at": m.received_at,
                "text": m.text_body,
                "text_truncated": m.body_truncated,
                "attachments": m.attachments,
            })
        })
        .collect();
    Ok(Json(json!({ "interaction": view, "messages": transcript })))
}

pub async fn end(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = interaction_id(&id)?;
    if let Some(handoff) = &s.handoff {
        match handoff.check_wrap_up(&id).await {
            Ok(_) => {}
            // Only the agent holding it hears about its case; anyone else gets routing's refusal.
            Err(e @ HandoffError::ContactRequired { .. }) => {
                if super::crm::holds(handoff, &caller, &id).await? {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(json!(s.routing.end(&caller.id, &id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    queue: QueueName,
}

pub async fn transfer(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<TransferBody>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.routing.transfer(&caller.id, &interaction_id(&id)?, &body.queue).await?)))
}

pub async fn queues(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_supervisor()?;
    Ok(Json(json!({ "queues": s.routing.queue_views().await? })))
}

pub async fn agents(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_supervisor()?;
    Ok(Json(json!({ "agents": s.routing.agent_views().await? })))
}
