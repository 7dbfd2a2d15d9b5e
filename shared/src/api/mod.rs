//! The hosted HTTP API: one axum `Router`, served by `lambda_http` behind an API Gateway HTTP
//! API in AWS (`functions/agent-api`) and by `axum::serve` in `mailroom serve`.
//! Versioned under `/v1`, JSON in and out, described by `/v1/openapi.json`.

pub mod auth;
pub mod error;
pub mod json;
pub mod openapi;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::usecases::routing::RoutingService;

#[derive(Clone)]
pub struct AppState {
    pub routing: RoutingService,
    pub auth: Arc<auth::Authenticator>,
}

/// Every route, as (method, path) in OpenAPI's path syntax; the OpenAPI document is checked
/// against this list so the two cannot drift apart.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/health"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/me"),
    ("get", "/v1/me/presence"),
    ("put", "/v1/me/presence"),
    ("get", "/v1/me/offers"),
    ("post", "/v1/me/offers/{interaction_id}/accept"),
    ("post", "/v1/me/offers/{interaction_id}/reject"),
    ("get", "/v1/me/interactions"),
    ("get", "/v1/interactions/{interaction_id}"),
    ("post", "/v1/interactions/{interaction_id}/end"),
    ("post", "/v1/interactions/{interaction_id}/transfer"),
    ("get", "/v1/queues"),
    ("get", "/v1/agents"),
];

/// Request bodies are small JSON documents; attachments will get their own limit.
const BODY_LIMIT: usize = 256 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(routes::health))
        .route("/v1/openapi.json", get(routes::openapi))
        .route("/v1/me", get(routes::me))
        .route("/v1/me/presence", get(routes::get_presence).put(routes::put_presence))
        .route("/v1/me/offers", get(routes::offers))
        .route("/v1/me/offers/{interaction_id}/accept", post(routes::accept))
        .route("/v1/me/offers/{interaction_id}/reject", post(routes::reject))
        .route("/v1/me/interactions", get(routes::my_interactions))
        .route("/v1/interactions/{interaction_id}", get(routes::interaction))
        .route("/v1/interactions/{interaction_id}/end", post(routes::end))
        .route("/v1/interactions/{interaction_id}/transfer", post(routes::transfer))
        .route("/v1/queues", get(routes::queues))
        .route("/v1/agents", get(routes::agents))
        .fallback(|| async { error::ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}
