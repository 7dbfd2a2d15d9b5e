//! `TeamsSignIn`: Microsoft identity platform's authorization-code flow with PKCE, for a
//! confidential client (the Mailroom app registration with a client secret).

use async_trait::async_trait;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::teams::DelegatedTokens;
use crate::ports::identity::TokenError;
use crate::ports::teams::TeamsSignIn;

/// The delegated permissions Mailroom asks for: read the signed-in user and their licenses, create
/// 1:1 chats, send and read chat messages, and keep signing in without the agent (`offline_access`).
pub const DELEGATED_SCOPES: &str = "openid profile offline_access User.Read Chat.ReadWrite ChatMessage.Send";

#[derive(Clone)]
pub struct SignInSettings {
    /// e.g. `https://login.microsoftonline.com` or the emulator's URL.
    pub authority: String,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Registered with the app: where Microsoft sends the browser back (`/v1/teams/oauth/callback`).
    pub redirect_uri: String,
    pub scopes: String,
}

impl std::fmt::Debug for SignInSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInSettings")
            .field("authority", &self.authority)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

pub struct MicrosoftSignIn {
    settings: SignInSettings,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The AADSTS code at the start of Microsoft's error descriptions (`AADSTS70008: ...`).
pub fn aadsts_code(description: &str) -> Option<String> {
    let code: String = description.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    (code.starts_with("AADSTS") && code.len() > 6).then_some(code)
}

impl MicrosoftSignIn {
    pub fn new(settings: SignInSettings, http: reqwest::Client) -> Self {
        Self { settings, http }
    }

    fn endpoint(&self, which: &str) -> String {
        format!("{}/{}/oauth2/v2.0/{which}", self.settings.authority.trim_end_matches('/'), self.settings.tenant)
    }

    async fn token(&self, form: &[(&str, &str)]) -> Result<DelegatedTokens, TokenError> {
        let s = &self.settings;
        let mut all = vec![
            ("client_id", s.client_id.as_str()),
            ("client_secret", s.client_secret.expose_secret()),
            ("scope", s.scopes.as_str()),
        ];
        all.extend_from_slice(form);
        let response = self
            .http
            .post(self.endpoint("token"))
            .form(&all)
            .send()
            .await
            .map_err(|e| TokenError::Unavailable { source: e.into() })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| TokenError::Unavailable { source: e.into() })?;
        if status.is_success() {
            let t: TokenResponse =
                serde_json::from_slice(&body).map_err(|e| TokenError::Unavailable { source: e.into() })?;
            return Ok(DelegatedTokens {
                access_token: SecretString::from(t.access_token),
                expires_at: Utc::now() + chrono::Duration::seconds(t.expires_in.max(0)),
                refresh_token: t.refresh_token.map(SecretString::from),
            });
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(TokenError::Unavailable { source: format!("token endpoint answered {status}").into() });
        }
        match serde_json::from_slice::<TokenErrorResponse>(&body) {
            Ok(e) => Err(TokenError::Refused {
                // The AADSTS code says more than `invalid_grant` and carries nothing personal.
                code: aadsts_code(&e.error_description).unwrap_or(e.error),
                description: e.error_description.lines().next().unwrap_or_default().to_owned(),
            }),
            Err(_) => {
                Err(TokenError::Refused { code: status.as_str().to_owned(), description: "unexpected answer".into() })
            }
        }
    }
}

#[async_trait]
impl TeamsSignIn for MicrosoftSignIn {
    fn authorize_url(&self, state: &str, code_challenge: &str, login_hint: Option<&str>) -> String {
        let s = &self.settings;
        let mut params = vec![
            ("client_id", s.client_id.as_str()),
            ("response_type", "code"),
            ("redirect_uri", s.redirect_uri.as_str()),
            ("response_mode", "query"),
            ("scope", s.scopes.as_str()),
            ("state", state),
            ("code_challenge", code_challenge),
            ("code_challenge_method", "S256"),
            ("prompt", "select_account"),
        ];
        if let Some(hint) = login_hint {
            params.push(("login_hint", hint));
        }
        match reqwest::Url::parse_with_params(&self.endpoint("authorize"), &params) {
            Ok(url) => url.to_string(),
            // The authority is checked when the settings are read; keep a usable string anyway.
            Err(_) => self.endpoint("authorize"),
        }
    }

    async fn exchange_code(&self, code: &str, code_verifier: &str) -> Result<DelegatedTokens, TokenError> {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_uri.as_str()),
            ("code_verifier", code_verifier),
        ])
        .await
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<DelegatedTokens, TokenError> {
        self.token(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose_secret())]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_codes_are_taken_from_descriptions() {
        assert_eq!(aadsts_code("AADSTS700082: The refresh token has expired").as_deref(), Some("AADSTS700082"));
        assert_eq!(aadsts_code("Something else"), None);
        assert_eq!(aadsts_code("AADSTS"), None);
    }

    #[test]
    fn the_authorize_url_carries_pkce_state_and_hint() {
        let s = MicrosoftSignIn::new(
            SignInSettings {
                authority: "https://login.example/".into(),
                tenant: "t1".into(),
                client_id: "app".into(),
                client_secret: SecretString::from("s"),
                redirect_uri: "http://127.0.0.1:8080/v1/teams/oauth/callback".into(),
                scopes: DELEGATED_SCOPES.into(),
            },
            reqwest::Client::new(),
        );
        let url = reqwest::Url::parse(&s.authorize_url("st", "ch", Some("ana@example.com"))).unwrap();
        assert_eq!(url.path(), "/t1/oauth2/v2.0/authorize");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["state"], "st");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["login_hint"], "ana@example.com");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:8080/v1/teams/oauth/callback");
        assert!(!url.as_str().contains("client_secret"));
    }
}
