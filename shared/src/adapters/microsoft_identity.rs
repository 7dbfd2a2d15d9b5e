//! OAuth 2.0 client credentials against a Microsoft-identity-shaped token endpoint
//! (`{authority}/{tenant}/oauth2/v2.0/token`), with the token cached until shortly before it
//! expires. The authority is configurable so tests and demos can use a local one.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ports::identity::{AccessToken, AccessTokenSource, TokenError};

/// The public Microsoft identity platform.
pub const MICROSOFT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// A token is renewed this long before it expires, so a request never starts with a token that
/// dies on the way.
const REFRESH_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

#[derive(Clone)]
pub struct ClientCredentials {
    /// e.g. `https://login.microsoftonline.com` or `http://127.0.0.1:45680`.
    pub authority: String,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// e.g. `https://outlook.office365.com/.default` or `https://org.crm.dynamics.com/.default`.
    pub scope: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("authority", &self.authority)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority.trim_end_matches('/'), self.tenant)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

pub struct ClientCredentialsTokens {
    credentials: ClientCredentials,
    http: reqwest::Client,
    cached: Mutex<Option<AccessToken>>,
}

impl ClientCredentialsTokens {
    pub fn new(credentials: ClientCredentials, http: reqwest::Client) -> Self {
        Self { credentials, http, cached: Mutex::new(None) }
    }

    /// An HTTP client with the time-outs every Microsoft call should have.
    pub fn default_http() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("the TLS backend initializes")
    }

    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let c = &self.credentials;
        let response = self
            .http
            .post(c.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", c.client_id.as_str()),
                ("client_secret", c.client_secret.expose_secret()),
                ("scope", c.scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| TokenError::Unavailable { source: e.into() })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| TokenError::Unavailable { source: e.into() })?;
        if status.is_success() {
            let token: TokenResponse =
                serde_json::from_slice(&body).map_err(|e| TokenError::Unavailable { source: e.into() })?;
            let expires_at = Utc::now() + chrono::Duration::seconds(token.expires_in.max(0));
            return Ok(AccessToken::new(SecretString::from(token.access_token), expires_at));
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(TokenError::Unavailable { source: format!("token endpoint answered {status}").into() });
        }
        match serde_json::from_slice::<TokenErrorResponse>(&body) {
            Ok(e) => Err(TokenError::Refused {
                code: e.error,
                // Microsoft's descriptions start with an AADSTS code and never contain the secret.
                description: e.error_description.lines().next().unwrap_or_default().to_owned(),
            }),
            Err(_) => {
                Err(TokenError::Refused { code: status.as_str().to_owned(), description: "unexpected answer".into() })
            }
        }
    }
}

#[async_trait]
impl AccessTokenSource for ClientCredentialsTokens {
    async fn access_token(&self) -> Result<AccessToken, TokenError> {
        if let Some(token) = self.cached.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && token.expires_at - REFRESH_MARGIN > Utc::now()
        {
            return Ok(token.clone());
        }
        let token = self.fetch().await?;
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(token)
    }

    fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
