//! From API Gateway to the router: the claims that the HTTP API's JWT authorizer verified are
//! handed to `mailroom::api` as [`VerifiedClaims`], the only thing `Authenticator::Gateway`
//! trusts.
//!
//! They are read from the request context that `lambda_http` builds from the invocation event,
//! which only API Gateway writes. Nothing a client sends (headers, body, query) can produce them,
//! and any `VerifiedClaims` already on the request are dropped first.

use axum::Router;
use axum::extract::Request;
use lambda_http::request::RequestContext;
use mailroom::api::auth::VerifiedClaims;
use serde_json::{Map, Value};

/// The router, with each request's verified claims inserted before it is routed.
pub fn with_verified_claims(router: Router) -> Router {
    router.layer(axum::middleware::map_request(insert_verified_claims))
}

async fn insert_verified_claims(mut request: Request) -> Request {
    let claims = verified_claims(request.extensions().get::<RequestContext>());
    request.extensions_mut().remove::<VerifiedClaims>();
    if let Some(claims) = claims {
        request.extensions_mut().insert(claims);
    }
    request
}

/// The JWT authorizer's claims, when the request passed one (routes without an authorizer, such
/// as `/v1/health`, have none). API Gateway gives every claim as a string.
fn verified_claims(context: Option<&RequestContext>) -> Option<VerifiedClaims> {
    let jwt = context?.authorizer()?.jwt.as_ref()?;
    if jwt.claims.is_empty() {
        return None;
    }
    let claims: Map<String, Value> = jwt.claims.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    Some(VerifiedClaims(claims))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::StatusCode;
    use mailroom::adapters::memory::{MemoryIngestStore, MemoryWorkQueue};
    use mailroom::api::auth::Authenticator;
    use mailroom::api::{AppState, router};
    use mailroom::config::AppConfig;
    use mailroom::domain::routing::RoutingRequest;
    use mailroom::ports::{SystemClock, WorkQueue};
    use mailroom::usecases::routing::RoutingService;
    use tower::ServiceExt;

    use super::*;

    struct Setup {
        app: Router,
        work: Arc<MemoryWorkQueue>,
    }

    /// The demo directory (agents ana and ben, supervisor sam) on in-memory adapters, with the
    /// role read from `role_claim`.
    async fn setup(role_claim: &str) -> Setup {
        let store = Arc::new(MemoryIngestStore::default());
        let work = Arc::new(MemoryWorkQueue::new("routing", 5));
        let routing = RoutingService {
            store: store.clone(),
            transcripts: store,
            work: work.clone(),
            clock: Arc::new(SystemClock),
        };
        let config = AppConfig::demo();
        routing.seed(&config.agents, &config.queues).await.unwrap();
        let state = AppState {
            routing,
            auth: Arc::new(Authenticator::Gateway { role_claim: role_claim.into() }),
            handoff: None,
        };
        Setup { app: with_verified_claims(router(state, Vec::new())), work }
    }

    fn event(name: &str) -> lambda_http::Request {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/events").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        lambda_http::request::from_str(&text).expect("fixture is an API Gateway event")
    }

    async fn call(app: &Router, request: lambda_http::Request) -> (StatusCode, Value) {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn the_authorizer_claims_identify_the_agent() {
        let s = setup("role").await;
        let (status, body) = call(&s.app, event("apigw-v2-put-presence.json")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!((body["agent_id"].as_str(), body["presence"].as_str()), (Some("ana"), Some("available")));
        // Coming available asks the offer worker for work.
        let sent = s.work.receive(10, Duration::from_secs(30), Duration::ZERO).await.unwrap();
        assert_eq!(sent.len(), 1);
        assert!(matches!(
            RoutingRequest::from_body(&sent[0].body),
            Ok(RoutingRequest::AgentAvailable { agent_id }) if agent_id.as_str() == "ana"
        ));
    }

    #[tokio::test]
    async fn the_role_comes_from_the_configured_claim() {
        let s = setup("custom:role").await;
        let (status, body) = call(&s.app, event("apigw-v2-get-queues-supervisor.json")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.to_string().contains("support"), "{body}");
        // With the default claim name the same token carries no role: an agent may not list queues.
        let s = setup("role").await;
        let (status, _) = call(&s.app, event("apigw-v2-get-queues-supervisor.json")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn claims_from_client_headers_are_not_trusted() {
        let s = setup("role").await;
        let (status, body) = call(&s.app, event("apigw-v2-forged-headers.json")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }

    #[tokio::test]
    async fn public_routes_need_no_token() {
        let s = setup("role").await;
        let (status, body) = call(&s.app, event("apigw-v2-health.json")).await;
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    }

    #[tokio::test]
    async fn claims_already_on_the_request_are_replaced() {
        let s = setup("role").await;
        let mut request = event("apigw-v2-forged-headers.json");
        let forged = serde_json::json!({ "sub": "sam", "role": "admin" });
        request.extensions_mut().insert(VerifiedClaims(forged.as_object().cloned().unwrap()));
        let (status, _) = call(&s.app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
