//! Access tokens for Microsoft services (Exchange Online mailboxes, Dataverse, Graph).

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

/// A bearer token. Its value is never printed: `Debug` shows only when it expires.
#[derive(Clone)]
pub struct AccessToken {
    value: SecretString,
    pub expires_at: DateTime<Utc>,
}

impl AccessToken {
    pub fn new(value: SecretString, expires_at: DateTime<Utc>) -> Self {
        Self { value, expires_at }
    }

    /// The token, for an `Authorization` header or an XOAUTH2 exchange. Keep it out of logs.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The authority refused the credentials or the request (`invalid_client`, an expired
    /// secret, an unknown tenant): retrying will not help until an admin fixes the settings.
    #[error("the sign-in was refused: {code}: {description}")]
    Refused { code: String, description: String },
    /// The authority could not be reached or failed; worth retrying.
    #[error("the token endpoint is unavailable")]
    Unavailable {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl TokenError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A source of access tokens for one client and scope, cached by the implementation.
#[async_trait]
pub trait AccessTokenSource: Send + Sync {
    /// A token valid for a while yet: the cached one, or a new one when it nears expiry.
    async fn access_token(&self) -> Result<AccessToken, TokenError>;
    /// Drops the cached token, e.g. after a 401, so the next call asks for a new one.
    fn invalidate(&self);
}
