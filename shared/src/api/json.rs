//! A JSON body extractor whose errors name the field: `{"presence": "sleepy"}` answers
//! 400 with `"field": "presence"`, not a generic deserialization message.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(axum::http::StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.body_text()))?;
        parse(&bytes).map(ValidJson)
    }
}

/// Deserializes JSON, naming the field at fault on failure.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let field = if path.is_empty() || path == "." {
            // serde reports missing and unknown fields at the parent: take the name from the message.
            message.split('`').nth(1).map(str::to_owned).unwrap_or_else(|| "body".to_owned())
        } else {
            path
        };
        let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
        ApiError::field(field, message)
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        presence: crate::domain::presence::ChosenPresence,
        note: Option<String>,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<Body>(br#"{"presence": "sleepy"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("presence"), "{e:?}");
        let e = parse::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("presence"), "{e:?}");
        let e = parse::<Body>(br#"{"presence": "busy", "colour": 1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"), "{e:?}");
        let e = parse::<Body>(br#"not json"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"), "{e:?}");
        assert!(parse::<Body>(br#"{"presence": "busy"}"#).is_ok());
    }
}
