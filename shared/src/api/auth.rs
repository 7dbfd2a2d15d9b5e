//! Who is calling: a JWT bearer token naming the agent (`sub`) and their role.
//!
//! In AWS, API Gateway's JWT authorizer verifies the token (issuer and audience from the
//! template's parameters; Cognito or any OIDC provider) and the Lambda entry point passes the
//! verified claims in as a request extension; headers from the client are never trusted for this.
//! Locally, `mailroom serve` verifies HS256 tokens itself with a secret kept in the data
//! directory, and `mailroom token` mints them for development.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::domain::agent::Role;
use crate::domain::ids::AgentId;

/// The local issuer and audience of development tokens.
pub const LOCAL_ISSUER: &str = "mailroom-local";
pub const LOCAL_AUDIENCE: &str = "mailroom-api";

/// Claims verified by API Gateway, inserted by the Lambda entry point.
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub serde_json::Map<String, serde_json::Value>);

pub enum Authenticator {
    /// Verify HS256 tokens with a local secret (`mailroom serve`).
    Local { key: DecodingKey, validation: Box<Validation> },
    /// Trust the claims API Gateway's authorizer verified (`functions/agent-api`).
    Gateway { role_claim: String },
}

impl Authenticator {
    pub fn local(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[LOCAL_ISSUER]);
        validation.set_audience(&[LOCAL_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        Self::Local { key: DecodingKey::from_secret(secret), validation: Box::new(validation) }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
    iss: String,
    aud: String,
    exp: i64,
    iat: i64,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: AgentId,
    pub role: Role,
}

impl Caller {
    pub fn require_supervisor(&self) -> Result<(), ApiError> {
        if self.role.supervises() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs the supervisor or admin role"))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin { Ok(()) } else { Err(ApiError::forbidden("this needs the admin role")) }
    }
}

fn caller_from(sub: &str, role: Option<&str>) -> Result<Caller, ApiError> {
    let id = AgentId::parse(sub).map_err(|_| ApiError::unauthorized("the token's subject is not a valid agent id"))?;
    let role = match role {
        None | Some("") => Role::Agent,
        Some(r) => Role::parse(r).ok_or_else(|| ApiError::forbidden(format!("unknown role {r:?} in the token")))?,
    };
    Ok(Caller { id, role })
}

/// Works with any router state that can hand out the authenticator, so each capability's routes
/// can keep a state of their own.
impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Authenticator>::from_ref(state);
        match auth.as_ref() {
            Authenticator::Gateway { role_claim } => {
                let claims = parts
                    .extensions
                    .get::<VerifiedClaims>()
                    .ok_or_else(|| ApiError::unauthorized("no verified token reached the function"))?;
                let sub = claims.0.get("sub").and_then(|v| v.as_str()).unwrap_or_default();
                caller_from(sub, claims.0.get(role_claim).and_then(|v| v.as_str()))
            }
            Authenticator::Local { key, validation } => {
                let header = parts
                    .headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| ApiError::unauthorized("send a bearer token: Authorization: Bearer <token>"))?;
                let token = header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
                    .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <token>'"))?;
                let data = jsonwebtoken::decode::<Claims>(token.trim(), key, validation).map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind;
                    match e.kind() {
                        ErrorKind::ExpiredSignature => ApiError::unauthorized("the token has expired"),
                        _ => ApiError::unauthorized("the token is not valid"),
                    }
                })?;
                caller_from(&data.claims.sub, data.claims.role.as_deref())
            }
        }
    }
}

/// Mints a development token for the local server.
pub fn mint_local_token(secret: &[u8], agent: &AgentId, role: Role, ttl: chrono::Duration) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: agent.to_string(),
        role: Some(role.as_str().to_owned()),
        iss: LOCAL_ISSUER.to_owned(),
        aud: LOCAL_AUDIENCE.to_owned(),
        exp: now + ttl.num_seconds(),
        iat: now,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing cannot fail")
}

/// The local signing secret, created on first use in the data directory (readable by the owner
/// only).
pub fn local_secret(data_dir: &Path) -> std::io::Result<Arc<Vec<u8>>> {
    let path = data_dir.join("api-signing-key");
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(Arc::new(key)),
        Ok(_) | Err(_) => {}
    }
    std::fs::create_dir_all(data_dir)?;
    let key: Vec<u8> = (0..2).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).collect();
    let key = hex::encode(key).into_bytes();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&path)?, &key)?;
    Ok(Arc::new(key))
}
