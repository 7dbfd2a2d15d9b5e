//! Microsoft Graph for Teams chat, and the stores Teams chat keeps its state in.
//!
//! - [`GraphClient`]: `TeamsGraph` on Graph v1.0 (users, presence, chats, messages, subscriptions).
//! - [`MicrosoftSignIn`]: the delegated authorization-code flow with PKCE.
//! - [`notifications`]: the webhook protocol (validation handshake, notification payloads).
//! - [`EmbeddedTeamsStore`] (SQLite) and [`DynamoTeamsStore`] (the DynamoDB state table).
//! - [`SealedSecretStore`]: AES-256-GCM over another secret store, for tokens kept locally.
//! - [`GraphConfig`]: the settings, read once from the environment; [`embedded_teams`] builds the
//!   service for `mailroom serve`.

mod client;
mod dynamodb;
mod embedded;
pub mod notifications;
mod sealed;
mod signin;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use self::client::{GRAPH_APP_SCOPE, GRAPH_URL, GraphClient, GraphOptions, PRESENCE_BATCH};
pub use self::dynamodb::DynamoTeamsStore;
pub use self::embedded::EmbeddedTeamsStore;
pub use self::sealed::{KEY_FILE, SealedSecretStore};
pub use self::signin::{DELEGATED_SCOPES, MicrosoftSignIn, SignInSettings, aadsts_code};
use secrecy::SecretString;

use crate::adapters::embedded::EmbeddedBackend;
use crate::adapters::microsoft_identity::{ClientCredentials, ClientCredentialsTokens, MICROSOFT_AUTHORITY};
use crate::adapters::secrets::EmbeddedSecretStore;
use crate::config::ConfigError;
use crate::domain::mailbox::SecretName;
use crate::ports::SystemClock;
use crate::ports::routing::RoutingStore;
use crate::ports::secrets::SecretStore;
use crate::usecases::teams::{TeamsPorts, TeamsService, TeamsSettings};

/// Teams chat settings, from the environment:
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `MAILROOM_GRAPH_TENANT` | the Microsoft 365 tenant (id or domain); unset: Teams is off | — |
/// | `MAILROOM_GRAPH_CLIENT_ID` | the app registration's client id | required |
/// | `MAILROOM_GRAPH_CLIENT_SECRET` | its client secret (locally) | — |
/// | `MAILROOM_GRAPH_CLIENT_SECRET_NAME` | or the secret store entry holding it (AWS) | — |
/// | `MAILROOM_GRAPH_URL` | Graph's v1.0 root | `https://graph.microsoft.com/v1.0` |
/// | `MAILROOM_GRAPH_AUTHORITY` | the identity platform | `https://login.microsoftonline.com` |
/// | `MAILROOM_TEAMS_PUBLIC_URL` | where Microsoft reaches this deployment's API (redirects, notifications) | `http://127.0.0.1:8080` |
/// | `MAILROOM_TEAMS_REDIRECT_URI` | the sign-in callback | `<public>/v1/teams/oauth/callback` |
/// | `MAILROOM_TEAMS_NOTIFICATION_URL` | change notifications | `<public>/v1/teams/notifications` |
/// | `MAILROOM_TEAMS_LIFECYCLE_URL` | lifecycle notifications | `<public>/v1/teams/lifecycle` |
/// | `MAILROOM_TEAMS_DIRECTORY_SYNC_MINUTES` | scheduled directory sync (0: only on demand) | `360` |
#[derive(Clone)]
pub struct GraphConfig {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub client_secret_name: Option<SecretName>,
    pub graph_url: String,
    pub authority: String,
    pub redirect_uri: String,
    pub notification_url: String,
    pub lifecycle_url: String,
    pub directory_sync: Option<Duration>,
}

impl std::fmt::Debug for GraphConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphConfig")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("graph_url", &self.graph_url)
            .field("authority", &self.authority)
            .field("redirect_uri", &self.redirect_uri)
            .field("notification_url", &self.notification_url)
            .finish_non_exhaustive()
    }
}

fn check_url(setting: &str, value: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(ConfigError::Invalid {
            setting: setting.to_owned(),
            problem: format!("{value:?} is not an http(s) URL"),
        }),
    }
}

impl GraphConfig {
    /// `None` when `MAILROOM_GRAPH_TENANT` is unset: Teams chat is off.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let Some(tenant) = get("MAILROOM_GRAPH_TENANT") else { return Ok(None) };
        let client_id =
            get("MAILROOM_GRAPH_CLIENT_ID").ok_or(ConfigError::MissingEnv { name: "MAILROOM_GRAPH_CLIENT_ID" })?;
        let client_secret = get("MAILROOM_GRAPH_CLIENT_SECRET").map(SecretString::from);
        let client_secret_name = get("MAILROOM_GRAPH_CLIENT_SECRET_NAME")
            .map(|n| {
                SecretName::parse(&n).map_err(|e| ConfigError::Invalid {
                    setting: "MAILROOM_GRAPH_CLIENT_SECRET_NAME".into(),
                    problem: e.to_string(),
                })
            })
            .transpose()?;
        if client_secret.is_none() && client_secret_name.is_none() {
            return Err(ConfigError::MissingEnv { name: "MAILROOM_GRAPH_CLIENT_SECRET" });
        }
        let public = get("MAILROOM_TEAMS_PUBLIC_URL").unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let public = public.trim_end_matches('/');
        let config = Self {
            tenant,
            client_id,
            client_secret,
            client_secret_name,
            graph_url: get("MAILROOM_GRAPH_URL").unwrap_or_else(|| GRAPH_URL.into()),
            authority: get("MAILROOM_GRAPH_AUTHORITY").unwrap_or_else(|| MICROSOFT_AUTHORITY.into()),
            redirect_uri: get("MAILROOM_TEAMS_REDIRECT_URI")
                .unwrap_or_else(|| format!("{public}/v1/teams/oauth/callback")),
            notification_url: get("MAILROOM_TEAMS_NOTIFICATION_URL")
                .unwrap_or_else(|| format!("{public}/v1/teams/notifications")),
            lifecycle_url: get("MAILROOM_TEAMS_LIFECYCLE_URL")
                .unwrap_or_else(|| format!("{public}/v1/teams/lifecycle")),
            directory_sync: match get("MAILROOM_TEAMS_DIRECTORY_SYNC_MINUTES") {
                None => Some(Duration::from_secs(360 * 60)),
                Some(m) => match m.parse::<u64>() {
                    Ok(0) => None,
                    Ok(m) => Some(Duration::from_secs(m * 60)),
                    Err(_) => {
                        return Err(ConfigError::Invalid {
                            setting: "MAILROOM_TEAMS_DIRECTORY_SYNC_MINUTES".into(),
                            problem: format!("{m:?} is not a whole number of minutes"),
                        });
                    }
                },
            },
        };
        for (setting, value) in [
            ("MAILROOM_GRAPH_URL", &config.graph_url),
            ("MAILROOM_GRAPH_AUTHORITY", &config.authority),
            ("MAILROOM_TEAMS_REDIRECT_URI", &config.redirect_uri),
            ("MAILROOM_TEAMS_NOTIFICATION_URL", &config.notification_url),
            ("MAILROOM_TEAMS_LIFECYCLE_URL", &config.lifecycle_url),
        ] {
            check_url(setting, value)?;
        }
        Ok(Some(config))
    }

    /// The app's client secret: from the environment, or from `secrets` by name.
    pub async fn client_secret(&self, secrets: &dyn SecretStore) -> anyhow::Result<SecretString> {
        if let Some(s) = &self.client_secret {
            return Ok(s.clone());
        }
        let name =
            self.client_secret_name.as_ref().ok_or_else(|| anyhow::anyhow!("no Graph client secret configured"))?;
        secrets
            .get(name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the secret {name} (the Graph client secret) does not exist"))
    }

    /// The Graph client and the sign-in, with one HTTP client (time-outs included).
    pub fn clients(
        &self,
        client_secret: SecretString,
        options: GraphOptions,
    ) -> (Arc<GraphClient>, Arc<MicrosoftSignIn>) {
        let http = ClientCredentialsTokens::default_http();
        let app = ClientCredentialsTokens::new(
            ClientCredentials {
                authority: self.authority.clone(),
                tenant: self.tenant.clone(),
                client_id: self.client_id.clone(),
                client_secret: client_secret.clone(),
                scope: GRAPH_APP_SCOPE.into(),
            },
            http.clone(),
        );
        let graph = Arc::new(GraphClient::new(&self.graph_url, Arc::new(app), http.clone(), options));
        let sign_in = Arc::new(MicrosoftSignIn::new(
            SignInSettings {
                authority: self.authority.clone(),
                tenant: self.tenant.clone(),
                client_id: self.client_id.clone(),
                client_secret,
                redirect_uri: self.redirect_uri.clone(),
                scopes: DELEGATED_SCOPES.into(),
            },
            http,
        ));
        (graph, sign_in)
    }

    pub fn settings(&self) -> TeamsSettings {
        TeamsSettings::new(self.notification_url.clone(), self.lifecycle_url.clone())
    }
}

/// The Teams service of `mailroom serve`: state in the data directory's database, each agent's
/// tokens in its secret table sealed with `<data_dir>/teams-token-key`.
pub async fn embedded_teams(
    backend: &EmbeddedBackend,
    data_dir: &Path,
    config: &GraphConfig,
) -> anyhow::Result<Arc<TeamsService>> {
    embedded_teams_with(backend, data_dir, config, config.settings(), GraphOptions::default()).await
}

/// As [`embedded_teams`], with the service's settings and Graph's retry options given (tests
/// shorten lifetimes and waits).
pub async fn embedded_teams_with(
    backend: &EmbeddedBackend,
    data_dir: &Path,
    config: &GraphConfig,
    settings: TeamsSettings,
    options: GraphOptions,
) -> anyhow::Result<Arc<TeamsService>> {
    let store = Arc::new(EmbeddedTeamsStore::open(backend)?);
    let plain: Arc<dyn SecretStore> = Arc::new(EmbeddedSecretStore::open(backend)?);
    let sealed = Arc::new(SealedSecretStore::with_key_file(plain.clone(), data_dir)?);
    let secret = config.client_secret(plain.as_ref()).await?;
    let (graph, sign_in) = config.clients(secret, options);
    let agents: Arc<dyn RoutingStore> = Arc::new(backend.clone());
    Ok(Arc::new(TeamsService::new(
        TeamsPorts {
            directory: store.clone(),
            connections: store.clone(),
            chats: store,
            agents,
            graph,
            sign_in,
            secrets: sealed,
            clock: Arc::new(SystemClock),
        },
        settings,
    )))
}

/// The Teams service in AWS: state in the DynamoDB state table, agents' tokens and the app's
/// client secret in Secrets Manager under `secrets_prefix` (encrypted with KMS). For the
/// teams-webhook worker and the agent-api function; built once at INIT.
pub async fn aws_teams(
    sdk: &aws_config::SdkConfig,
    table: &str,
    secrets_prefix: &str,
    config: &GraphConfig,
) -> anyhow::Result<Arc<TeamsService>> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let store = Arc::new(DynamoTeamsStore::new(dynamodb.clone(), table));
    let secrets: Arc<dyn SecretStore> =
        Arc::new(crate::adapters::secrets::SecretsManagerStore::from_sdk_config(sdk, secrets_prefix));
    let secret = config.client_secret(secrets.as_ref()).await?;
    let (graph, sign_in) = config.clients(secret, GraphOptions::default());
    let agents: Arc<dyn RoutingStore> = Arc::new(crate::adapters::aws::DynamoIngestStore::new(dynamodb, table));
    Ok(Arc::new(TeamsService::new(
        TeamsPorts {
            directory: store.clone(),
            connections: store.clone(),
            chats: store,
            agents,
            graph,
            sign_in,
            secrets,
            clock: Arc::new(SystemClock),
        },
        config.settings(),
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn settings_are_off_without_a_tenant_and_name_what_is_missing() {
        assert!(GraphConfig::from_lookup(|_| None).unwrap().is_none());
        let env = HashMap::from([("MAILROOM_GRAPH_TENANT", "t")]);
        let err = GraphConfig::from_lookup(|n| env.get(n).map(|v| v.to_string())).unwrap_err();
        assert!(err.to_string().contains("MAILROOM_GRAPH_CLIENT_ID"), "{err}");
        let env = HashMap::from([
            ("MAILROOM_GRAPH_TENANT", "t"),
            ("MAILROOM_GRAPH_CLIENT_ID", "c"),
            ("MAILROOM_GRAPH_CLIENT_SECRET", "s3cr3t-value"),
            ("MAILROOM_TEAMS_PUBLIC_URL", "https://mailroom.example/"),
            ("MAILROOM_TEAMS_DIRECTORY_SYNC_MINUTES", "0"),
        ]);
        let c = GraphConfig::from_lookup(|n| env.get(n).map(|v| v.to_string())).unwrap().unwrap();
        assert_eq!(c.redirect_uri, "https://mailroom.example/v1/teams/oauth/callback");
        assert_eq!(c.notification_url, "https://mailroom.example/v1/teams/notifications");
        assert_eq!(c.graph_url, GRAPH_URL);
        assert!(c.directory_sync.is_none());
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let env = HashMap::from([
            ("MAILROOM_GRAPH_TENANT", "t"),
            ("MAILROOM_GRAPH_CLIENT_ID", "c"),
            ("MAILROOM_GRAPH_CLIENT_SECRET", "s"),
            ("MAILROOM_GRAPH_URL", "not a url"),
        ]);
        let err = GraphConfig::from_lookup(|n| env.get(n).map(|v| v.to_string())).unwrap_err();
        assert!(err.to_string().contains("MAILROOM_GRAPH_URL"), "{err}");
    }
}
