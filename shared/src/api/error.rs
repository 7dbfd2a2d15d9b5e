//! API errors: a status and `{"error": {"code", "message", "field"}}`, with `field` naming the
//! request field at fault on every 400.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::presence::Refusal;
use crate::ports::BackendError;
use crate::usecases::routing::RoutingError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None }
    }

    /// A 400 for one field of the request.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(field) = &self.field {
            body["error"]["field"] = json!(field);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        if e.is_transient() {
            tracing::warn!(error = %e, "a dependency is unavailable");
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "a dependency is briefly unavailable; try again")
        } else {
            tracing::error!(error = %e, "a dependency failed");
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request could not be completed")
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let message = r.to_string();
        match r {
            Refusal::UnknownInteraction => Self::not_found(message),
            Refusal::UnknownAgent => Self::forbidden("you are not a known agent"),
            Refusal::NotYours => Self::forbidden(message),
            Refusal::RejectNotAllowed(_) => Self::new(StatusCode::FORBIDDEN, "reject_not_allowed", message),
            Refusal::SameQueue(_) => Self::field("queue", message),
            Refusal::NotWaiting
            | Refusal::AgentNotFree
            | Refusal::NoPendingOffer
            | Refusal::OfferGone
            | Refusal::OfferPending => Self::new(StatusCode::CONFLICT, "conflict", message),
        }
    }
}

impl From<RoutingError> for ApiError {
    fn from(e: RoutingError) -> Self {
        match e {
            RoutingError::Backend(e) => e.into(),
            RoutingError::Refused(r) => r.into(),
            RoutingError::UnknownQueue(q) => Self::field("queue", format!("there is no queue named {q:?}")),
            RoutingError::BadRequest(e) => Self::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
        }
    }
}
