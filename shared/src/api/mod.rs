//! The hosted HTTP API: one axum `Router`, served by `lambda_http` behind an API Gateway HTTP
//! API in AWS (`functions/agent-api`) and by `axum::serve` in `mailroom serve`.
//! Versioned under `/v1`, JSON in and out, described by `/v1/openapi.json`.

pub mod auth;
pub mod channels;
pub mod crm;
pub mod error;
pub mod json;
pub mod mail;
pub mod openapi;
mod routes;
pub mod teams;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::{get, post};

use crate::usecases::routing::RoutingService;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub routing: RoutingService,
    pub auth: Arc<auth::Authenticator>,
    /// The CRM handoff, where this deployment has one: `accept` then answers with the screen pop
    /// and `end` refuses while the case still needs its contact.
    pub handoff: Option<Arc<crate::usecases::handoff::HandoffService>>,
}

/// A capability's part of the API (mailbox administration, outbound mail, CRM, Teams...): its
/// routes with their own state already applied, the (method, path) list, and its OpenAPI paths.
/// `router` merges them, and the OpenAPI document and its route check cover them too.
pub struct ApiModule {
    pub router: Router,
    pub routes: &'static [(&'static str, &'static str)],
    /// An OpenAPI `paths` object for `routes`.
    pub openapi_paths: serde_json::Value,
    /// Extra OpenAPI `components.schemas` entries.
    pub openapi_schemas: serde_json::Value,
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

/// The whole API: the core routes (agents, offers, interactions, supervisors) and each module's.
pub fn router(state: AppState, modules: Vec<ApiModule>) -> Router {
    let document = openapi::document_with(&modules);
    let mut router = core_router(state, document);
    for m in modules {
        router = router.merge(m.router);
    }
    router
        .fallback(|| async { error::ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

fn core_router(state: AppState, document: serde_json::Value) -> Router {
    let document = Arc::new(document);
    Router::new()
        .route(
            "/v1/openapi.json",
            get(move || {
                let document = document.clone();
                async move { axum::Json((*document).clone()) }
            }),
        )
        .route("/v1/health", get(routes::health))
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
        .with_state(state)
}
