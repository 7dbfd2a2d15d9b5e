//! Test support for Teams chat: the Graph emulator (`infra/emulators/graph.py`, started by
//! `infra/graph.sh`), and the agent API with the Teams module on the embedded backend, served on a
//! loopback port so the emulator can deliver change notifications to it.
//!
//! The emulator's URL comes from `MAILROOM_TEST_GRAPH_URL`. Every test creates its own tenant
//! (`POST /_emulator/graph/tenants`): its own app, users, chats, subscriptions and switches, so
//! tests run in parallel against one emulator.

use std::sync::Arc;
use std::time::Duration;

use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::adapters::graph::{GraphConfig, GraphOptions, embedded_teams_with};
use mailroom::api::AppState;
use mailroom::api::auth::{Authenticator, mint_local_token};
use mailroom::app::embedded_routing_service;
use mailroom::domain::agent::{Agent, Role};
use mailroom::domain::ids::{AgentId, EmailAddress, QueueName};
use mailroom::domain::queue::EmailQueue;
use mailroom::usecases::routing::RoutingService;
use mailroom::usecases::teams::{TeamsService, TeamsSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The environment variable naming the emulator (`infra/graph.sh env`).
pub const GRAPH_URL_VAR: &str = "MAILROOM_TEST_GRAPH_URL";

/// One isolated tenant on the Graph emulator.
pub struct GraphTenant {
    /// The emulator: token authority, Graph under `/v1.0`, controls under `/_emulator/graph`.
    pub server: String,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// The users as created (id, displayName, mail, ...).
    pub users: Vec<Value>,
    http: reqwest::Client,
}

/// A fresh tenant with `users` (`{"displayName", "mail", "jobTitle", "teams": false, ...}`), or
/// `None` (after printing why) when the emulator is not configured.
pub async fn graph_tenant(users: Value) -> Option<GraphTenant> {
    let server = crate::server_env(GRAPH_URL_VAR)?;
    let server = server.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let t: Value = http
        .post(format!("{server}/_emulator/graph/tenants"))
        .json(&json!({ "users": users }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the Graph emulator at {server} does not answer: {e}"))
        .json()
        .await
        .expect("tenant JSON");
    let text = |k: &str| t[k].as_str().unwrap_or_else(|| panic!("no {k} in {t}")).to_owned();
    Some(GraphTenant {
        tenant: text("tenant"),
        client_id: text("client_id"),
        client_secret: text("client_secret"),
        users: t["users"].as_array().cloned().unwrap_or_default(),
        server,
        http,
    })
}

impl GraphTenant {
    /// A Teams user's id by mail.
    pub fn user_id(&self, mail: &str) -> String {
        self.users
            .iter()
            .find(|u| u["mail"].as_str() == Some(mail))
            .and_then(|u| u["id"].as_str())
            .unwrap_or_else(|| panic!("no user {mail}"))
            .to_owned()
    }

    /// A test control (`users`, `user`, `send`, `edit`, `delete`, `react`, `unreact`, `throttle`,
    /// `notifications`, `lifecycle`, `expire`); panics unless it succeeds.
    pub async fn control(&self, action: &str, body: Value) -> Value {
        let (status, v) = self.try_control(action, body).await;
        assert!(status.is_success(), "control {action} answered {status}: {v}");
        v
    }

    pub async fn try_control(&self, action: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/_emulator/graph/{}/{action}", self.server, self.tenant))
            .json(&body)
            .send()
            .await
            .expect("control request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Everything the tenant holds: users, chats with messages, subscriptions, deliveries,
    /// requests.
    pub async fn state(&self) -> Value {
        self.http
            .get(format!("{}/_emulator/graph/{}/state", self.server, self.tenant))
            .send()
            .await
            .expect("state request")
            .json()
            .await
            .expect("state JSON")
    }

    /// The identity authority's counters for this tenant's app (`grants` per grant type).
    pub async fn token_stats(&self) -> Value {
        self.http
            .post(format!("{}/_emulator/stats", self.server))
            .json(&json!({ "client_id": self.client_id }))
            .send()
            .await
            .expect("stats request")
            .json()
            .await
            .expect("stats JSON")
    }

    /// An app-only Graph token (client credentials).
    pub async fn app_token(&self) -> String {
        let v: Value = self
            .http
            .post(format!("{}/{}/oauth2/v2.0/token", self.server, self.tenant))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
                ("scope", "https://graph.microsoft.com/.default"),
            ])
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token JSON");
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// A raw Graph call with `token`.
    pub async fn graph(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}/v1.0/{}", self.server, path.trim_start_matches('/')))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("graph request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The 1:1 chat of two users as the emulator holds it.
    pub async fn chat_between(&self, a: &str, b: &str) -> Option<Value> {
        let (a, b) = (self.user_id(a), self.user_id(b));
        let state = self.state().await;
        state["chats"]
            .as_array()?
            .iter()
            .find(|c| {
                let m = c["members"]
                    .as_array()
                    .map(|m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                    .unwrap_or_default();
                m.contains(&a.as_str()) && m.contains(&b.as_str())
            })
            .cloned()
    }

    /// The Graph requests the emulator saw, optionally those whose path contains `part`.
    pub async fn requests(&self, part: &str) -> Vec<Value> {
        self.state().await["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(part)))
            .collect()
    }
}

/// An agent for the directory.
pub fn agent(id: &str, name: &str, email: &str, role: Role) -> Agent {
    Agent {
        id: AgentId::parse(id).unwrap(),
        name: name.into(),
        email: EmailAddress::parse(email).unwrap(),
        queues: vec![QueueName::parse("support").unwrap()],
        capacity: 1,
        role,
    }
}

/// The agent API (core routes and the Teams module) on the embedded backend, on a loopback port.
pub struct TeamsApi {
    pub url: String,
    pub teams: Arc<TeamsService>,
    pub routing: RoutingService,
    pub backend: EmbeddedBackend,
    secret: Arc<Vec<u8>>,
    http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TeamsApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Service settings for tests: the defaults, with `adjust` applied.
pub async fn teams_api(tenant: &GraphTenant, agents: &[Agent], adjust: impl FnOnce(&mut TeamsSettings)) -> TeamsApi {
    teams_api_with(tenant, agents, adjust, fast_graph_options()).await
}

/// Throttling waits short enough for tests.
pub fn fast_graph_options() -> GraphOptions {
    GraphOptions {
        max_attempts: 4,
        max_retry_after: Duration::from_secs(2),
        default_retry_after: Duration::from_millis(100),
    }
}

pub async fn teams_api_with(
    tenant: &GraphTenant,
    agents: &[Agent],
    adjust: impl FnOnce(&mut TeamsSettings),
    options: GraphOptions,
) -> TeamsApi {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let routing = embedded_routing_service(&backend);
    routing
        .seed(
            agents,
            &[EmailQueue {
                name: QueueName::parse("support").unwrap(),
                allow_reject: true,
                offer_timeout_secs: 60,
                priority: 0,
            }],
        )
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let env = std::collections::HashMap::from([
        ("MAILROOM_GRAPH_TENANT", tenant.tenant.clone()),
        ("MAILROOM_GRAPH_CLIENT_ID", tenant.client_id.clone()),
        ("MAILROOM_GRAPH_CLIENT_SECRET", tenant.client_secret.clone()),
        ("MAILROOM_GRAPH_URL", format!("{}/v1.0", tenant.server)),
        ("MAILROOM_GRAPH_AUTHORITY", tenant.server.clone()),
        ("MAILROOM_TEAMS_PUBLIC_URL", url.clone()),
    ]);
    let config = GraphConfig::from_lookup(|n| env.get(n).cloned()).unwrap().expect("Teams is configured");
    let mut settings = config.settings();
    adjust(&mut settings);
    let teams = embedded_teams_with(&backend, dir.path(), &config, settings, options).await.unwrap();
    let secret: Arc<Vec<u8>> = Arc::new(b"0123456789abcdef0123456789abcdef-teams-tests".to_vec());
    let auth = Arc::new(Authenticator::local(&secret));
    let router = mailroom::api::router(
        AppState { routing: routing.clone(), auth: auth.clone(), handoff: None },
        vec![mailroom::api::teams::module(teams.clone(), auth)],
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    TeamsApi {
        url,
        teams,
        routing,
        backend,
        secret,
        http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        server,
        _dir: dir,
    }
}

impl TeamsApi {
    /// A bearer token for `agent` with `role`.
    pub fn token(&self, agent: &str, role: Role) -> String {
        mint_local_token(&self.secret, &AgentId::parse(agent).unwrap(), role, chrono::Duration::hours(1))
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("API request");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body)).await
    }

    /// Sends raw bytes with a content type (the directory file).
    pub async fn put_file(&self, path: &str, token: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .put(format!("{}{}", self.url, path))
            .bearer_auth(token)
            .header("Content-Type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .expect("API request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The whole connection flow as a browser would do it: start, follow Microsoft's sign-in
    /// (the emulator signs in the `login_hint`), and land on the callback. Returns the callback's
    /// answer.
    pub async fn connect(&self, agent: &str) -> (StatusCode, Value) {
        let token = self.token(agent, Role::Agent);
        let (status, start) = self.post("/v1/me/teams/connect", &token, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{start}");
        let authorize = start["authorize_url"].as_str().expect("authorize_url");
        let redirect = self.http.get(authorize).send().await.expect("authorize");
        assert_eq!(redirect.status(), StatusCode::FOUND, "the sign-in page should redirect back");
        let location = redirect.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(&self.url), "redirected to {location}");
        let r = self.http.get(&location).send().await.expect("callback");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `check` every 100 ms until it returns `Some`, for up to `secs` seconds.
    pub async fn eventually<T, F, Fut>(&self, secs: u64, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The chat entries (as the chat endpoint shows them).
    pub async fn messages(&self, token: &str, chat_id: &str) -> Vec<Value> {
        let (status, v) = self.get(&format!("/v1/teams/chats/{chat_id}"), token).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["messages"].as_array().cloned().unwrap_or_default()
    }
}
