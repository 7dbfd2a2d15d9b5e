//! `TeamsGraph` on Microsoft Graph v1.0 over HTTPS (reqwest).
//!
//! Throttling: a 429 (or 503/504) is retried after its `Retry-After` (seconds, possibly
//! fractional) when that is at most `max_retry_after`, up to `max_attempts` in all; beyond that
//! the caller gets `GraphError::Throttled` with the wait Graph asked for. An app-only 401 drops the
//! cached token and tries once more. Message HTML from Teams is sanitized here, where foreign
//! content enters.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::ids::EmailAddress;
use crate::domain::teams::{
    ContentType, GraphChatId, GraphMessageId, GraphMessageType, SubscriptionId, TeamsMessage, TeamsReaction, TeamsUser,
    TeamsUserId,
};
use crate::ports::identity::{AccessToken, AccessTokenSource};
use crate::ports::teams::{GraphError, GraphPresence, GraphResult, GraphSubscription, SubscriptionRequest, TeamsGraph};

/// Microsoft Graph v1.0.
pub const GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";
/// The app-only scope for Graph.
pub const GRAPH_APP_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Graph's limit of ids per `getPresencesByUserId` call.
pub const PRESENCE_BATCH: usize = 650;
/// Graph's largest page of chat messages.
const MESSAGES_PAGE: usize = 50;
/// Graph's largest page of users.
const USERS_PAGE: usize = 999;
/// Stops a runaway paging loop (999 × 500 users, 50 × 500 messages).
const MAX_PAGES: usize = 500;

#[derive(Debug, Clone)]
pub struct GraphOptions {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// The longest `Retry-After` the client waits for itself.
    pub max_retry_after: Duration,
    /// The wait when a throttling answer has no `Retry-After`.
    pub default_retry_after: Duration,
}

impl Default for GraphOptions {
    fn default() -> Self {
        Self { max_attempts: 4, max_retry_after: Duration::from_secs(10), default_retry_after: Duration::from_secs(1) }
    }
}

pub struct GraphClient {
    base: String,
    http: reqwest::Client,
    app: Arc<dyn AccessTokenSource>,
    options: GraphOptions,
}

enum Auth<'a> {
    App,
    User(&'a AccessToken),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> GraphError {
    GraphError::Unavailable { source: source.into() }
}

fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let secs: f64 = value?.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn time(raw: &Option<String>) -> Option<DateTime<Utc>> {
    raw.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
}

impl GraphClient {
    /// `base` is Graph's v1.0 root (`https://graph.microsoft.com/v1.0`, or an emulator's);
    /// `app` gives app-only tokens for the Graph scope.
    pub fn new(base: &str, app: Arc<dyn AccessTokenSource>, http: reqwest::Client, options: GraphOptions) -> Self {
        Self { base: base.trim_end_matches('/').to_owned(), http, app, options }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// One call with throttling retries; returns the status and the JSON body (`Null` if empty).
    async fn call(
        &self,
        auth: Auth<'_>,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> GraphResult<(StatusCode, Value)> {
        let mut attempt = 0;
        let mut refreshed_app_token = false;
        loop {
            attempt += 1;
            let token = match auth {
                Auth::App => self.app.access_token().await.map_err(GraphError::Token)?,
                Auth::User(t) => t.clone(),
            };
            let mut request = self.http.request(method.clone(), url).bearer_auth(token.expose());
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if attempt < self.options.max_attempts && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(self.options.default_retry_after).await;
                    continue;
                }
                Err(e) => return Err(unavailable(e)),
            };
            let status = response.status();
            let retry_after = parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER));
            let bytes = response.bytes().await.map_err(unavailable)?;
            if status.is_success() {
                if bytes.is_empty() {
                    return Ok((status, Value::Null));
                }
                return serde_json::from_slice(&bytes).map(|v| (status, v)).map_err(unavailable);
            }
            let throttled = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE
                || status == StatusCode::GATEWAY_TIMEOUT;
            if throttled {
                let wait = retry_after.unwrap_or(self.options.default_retry_after * 2u32.pow(attempt - 1));
                if attempt < self.options.max_attempts && wait <= self.options.max_retry_after {
                    tracing::info!(
                        status = status.as_u16(),
                        wait_ms = wait.as_millis() as u64,
                        "Graph throttled; waiting"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if status == StatusCode::TOO_MANY_REQUESTS {
                    return Err(GraphError::Throttled { retry_after: wait });
                }
                return Err(unavailable(format!("Graph answered {status}")));
            }
            if status == StatusCode::UNAUTHORIZED && matches!(auth, Auth::App) && !refreshed_app_token {
                refreshed_app_token = true;
                self.app.invalidate();
                continue;
            }
            if status.is_server_error() {
                if attempt < self.options.max_attempts {
                    tokio::time::sleep(self.options.default_retry_after).await;
                    continue;
                }
                return Err(unavailable(format!("Graph answered {status}")));
            }
            let detail = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or(ErrorDetail { code: status.as_str().to_owned(), message: String::new() });
            let (code, message) = (detail.code, detail.message);
            return Err(match status {
                StatusCode::UNAUTHORIZED => GraphError::Unauthorized { code, message },
                StatusCode::FORBIDDEN => GraphError::Forbidden { code, message },
                StatusCode::NOT_FOUND => GraphError::NotFound { code },
                StatusCode::CONFLICT => GraphError::Conflict { code, message },
                _ => GraphError::Rejected { status: status.as_u16(), code, message },
            });
        }
    }

    async fn get(&self, auth: Auth<'_>, url: &str, query: &[(&str, String)]) -> GraphResult<Value> {
        Ok(self.call(auth, Method::GET, url, query, None).await?.1)
    }

    fn decode<T: serde::de::DeserializeOwned>(value: Value) -> GraphResult<T> {
        serde_json::from_value(value).map_err(unavailable)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphUser {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    user_principal_name: Option<String>,
    #[serde(default)]
    job_title: Option<String>,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    account_enabled: Option<bool>,
}

impl GraphUser {
    fn into_user(self) -> Option<TeamsUser> {
        if self.account_enabled == Some(false) {
            return None;
        }
        let upn = self.user_principal_name.unwrap_or_default();
        Some(TeamsUser {
            id: TeamsUserId::parse(&self.id).ok()?,
            display_name: self.display_name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| upn.clone()),
            mail: self.mail.as_deref().and_then(|m| EmailAddress::parse(m).ok()),
            user_principal_name: upn,
            job_title: self.job_title,
            department: self.department,
        })
    }
}

#[derive(Deserialize)]
struct Page<T> {
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphIdentity {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

#[derive(Deserialize)]
struct GraphFrom {
    #[serde(default)]
    user: Option<GraphIdentity>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphBody {
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphReaction {
    reaction_type: String,
    #[serde(default)]
    created_date_time: Option<String>,
    #[serde(default)]
    user: Option<GraphFrom>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphMessage {
    id: String,
    #[serde(default)]
    message_type: Option<String>,
    #[serde(default)]
    created_date_time: Option<String>,
    #[serde(default)]
    last_modified_date_time: Option<String>,
    #[serde(default)]
    last_edited_date_time: Option<String>,
    #[serde(default)]
    deleted_date_time: Option<String>,
    #[serde(default)]
    from: Option<GraphFrom>,
    #[serde(default)]
    body: Option<GraphBody>,
    #[serde(default)]
    reactions: Vec<GraphReaction>,
}

impl GraphMessage {
    fn into_message(self) -> GraphResult<TeamsMessage> {
        let created =
            time(&self.created_date_time).ok_or_else(|| unavailable("a chat message has no createdDateTime"))?;
        let modified = time(&self.last_modified_date_time).unwrap_or(created);
        let user = self.from.and_then(|f| f.user);
        let body = self.body.unwrap_or(GraphBody { content_type: None, content: None });
        let html = body.content_type.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("html"));
        let content = body.content.unwrap_or_default();
        Ok(TeamsMessage {
            id: GraphMessageId::parse(&self.id).map_err(unavailable)?,
            // Without `Prefer: include-unknown-enum-members`, system events are `unknownFutureValue`.
            message_type: if self.message_type.as_deref().unwrap_or("message") == "message" {
                GraphMessageType::Message
            } else {
                GraphMessageType::Other
            },
            from: user.as_ref().and_then(|u| u.id.as_deref()).and_then(|id| TeamsUserId::parse(id).ok()),
            from_name: user.and_then(|u| u.display_name),
            content_type: if html { ContentType::Html } else { ContentType::Text },
            // Teams HTML goes to agents' screens: only safe markup is kept.
            content: if html { ammonia::clean(&content) } else { content },
            created_at: created,
            last_modified_at: modified,
            edited_at: time(&self.last_edited_date_time),
            deleted_at: time(&self.deleted_date_time),
            reactions: self
                .reactions
                .into_iter()
                .map(|r| TeamsReaction {
                    reaction_type: r.reaction_type,
                    user: r.user.and_then(|u| u.user).and_then(|u| u.id).and_then(|id| TeamsUserId::parse(&id).ok()),
                    created_at: time(&r.created_date_time).unwrap_or(modified),
                })
                .collect(),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphSub {
    id: String,
    #[serde(default)]
    resource: String,
    expiration_date_time: String,
}

impl GraphSub {
    fn into_subscription(self) -> GraphResult<GraphSubscription> {
        Ok(GraphSubscription {
            id: SubscriptionId::parse(&self.id).map_err(unavailable)?,
            resource: self.resource,
            expires_at: time(&Some(self.expiration_date_time))
                .ok_or_else(|| unavailable("a subscription has no valid expirationDateTime"))?,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServicePlan {
    service_plan_name: String,
    #[serde(default)]
    provisioning_status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LicenseDetail {
    #[serde(default)]
    service_plans: Vec<ServicePlan>,
}

const USER_FIELDS: &str = "id,displayName,mail,userPrincipalName,jobTitle,department,accountEnabled";

#[async_trait]
impl TeamsGraph for GraphClient {
    async fn users(&self) -> GraphResult<Vec<TeamsUser>> {
        let mut users = Vec::new();
        let mut page: Page<GraphUser> = Self::decode(
            self.get(
                Auth::App,
                &self.url("users"),
                &[("$select", USER_FIELDS.to_owned()), ("$top", USERS_PAGE.to_string())],
            )
            .await?,
        )?;
        for _ in 0..MAX_PAGES {
            users.extend(page.value.into_iter().filter_map(GraphUser::into_user));
            let Some(next) = page.next_link else { return Ok(users) };
            // The nextLink carries every query option already.
            page = Self::decode(self.get(Auth::App, &next, &[]).await?)?;
        }
        Err(unavailable("Graph /users kept paging beyond the limit"))
    }

    async fn user(&self, reference: &str) -> GraphResult<Option<TeamsUser>> {
        // Ids and addresses only: nothing that could change the path.
        if !reference.chars().all(|c| c.is_ascii_alphanumeric() || "@.-_+".contains(c)) {
            return Ok(None);
        }
        match self
            .get(Auth::App, &self.url(&format!("users/{reference}")), &[("$select", USER_FIELDS.to_owned())])
            .await
        {
            Ok(v) => Ok(Self::decode::<GraphUser>(v)?.into_user()),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn presences(&self, users: &[TeamsUserId]) -> GraphResult<Vec<GraphPresence>> {
        #[derive(Deserialize)]
        struct P {
            id: String,
            #[serde(default)]
            availability: String,
            #[serde(default)]
            activity: String,
        }
        let mut out = Vec::with_capacity(users.len());
        for batch in users.chunks(PRESENCE_BATCH) {
            let ids: Vec<&str> = batch.iter().map(|u| u.as_str()).collect();
            let (_, v) = self
                .call(
                    Auth::App,
                    Method::POST,
                    &self.url("communications/getPresencesByUserId"),
                    &[],
                    Some(&json!({ "ids": ids })),
                )
                .await?;
            let page: Page<P> = Self::decode(v)?;
            out.extend(page.value.into_iter().filter_map(|p| {
                Some(GraphPresence {
                    user: TeamsUserId::parse(&p.id).ok()?,
                    availability: p.availability,
                    activity: p.activity,
                })
            }));
        }
        Ok(out)
    }

    async fn me(&self, token: &AccessToken) -> GraphResult<TeamsUser> {
        let v = self.get(Auth::User(token), &self.url("me"), &[("$select", USER_FIELDS.to_owned())]).await?;
        Self::decode::<GraphUser>(v)?.into_user().ok_or(GraphError::Forbidden {
            code: "AccountDisabled".into(),
            message: "the signed-in account is disabled".into(),
        })
    }

    async fn has_teams_license(&self, token: &AccessToken) -> GraphResult<bool> {
        let page: Page<LicenseDetail> =
            Self::decode(self.get(Auth::User(token), &self.url("me/licenseDetails"), &[]).await?)?;
        // TEAMS1 (and its variants: TEAMS_FREE, TEAMS_GOV...) is the Teams service plan.
        Ok(page
            .value
            .iter()
            .flat_map(|l| &l.service_plans)
            .any(|p| p.service_plan_name.starts_with("TEAMS") && p.provisioning_status.eq_ignore_ascii_case("Success")))
    }

    async fn one_on_one_chat(
        &self,
        token: &AccessToken,
        me: &TeamsUserId,
        other: &TeamsUserId,
    ) -> GraphResult<GraphChatId> {
        let member = |id: &TeamsUserId| {
            json!({ "@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"],
                    "user@odata.bind": format!("{}/users('{}')", GRAPH_URL, id) })
        };
        let body = json!({ "chatType": "oneOnOne", "members": [member(me), member(other)] });
        let (_, v) = self.call(Auth::User(token), Method::POST, &self.url("chats"), &[], Some(&body)).await?;
        let id = v.get("id").and_then(Value::as_str).ok_or_else(|| unavailable("the created chat has no id"))?;
        GraphChatId::parse(id).map_err(unavailable)
    }

    async fn send_message(&self, token: &AccessToken, chat: &GraphChatId, text: &str) -> GraphResult<TeamsMessage> {
        let body = json!({ "body": { "contentType": "text", "content": text } });
        let (_, v) = self
            .call(Auth::User(token), Method::POST, &self.url(&format!("chats/{chat}/messages")), &[], Some(&body))
            .await?;
        Self::decode::<GraphMessage>(v)?.into_message()
    }

    async fn message(
        &self,
        token: &AccessToken,
        chat: &GraphChatId,
        id: &GraphMessageId,
    ) -> GraphResult<Option<TeamsMessage>> {
        match self.get(Auth::User(token), &self.url(&format!("chats/{chat}/messages/{id}")), &[]).await {
            Ok(v) => Ok(Some(Self::decode::<GraphMessage>(v)?.into_message()?)),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn messages_since(
        &self,
        token: &AccessToken,
        chat: &GraphChatId,
        since: Option<DateTime<Utc>>,
    ) -> GraphResult<Vec<TeamsMessage>> {
        // $filter is honoured only with an $orderby on the same property.
        let mut query = vec![("$top", MESSAGES_PAGE.to_string()), ("$orderby", "lastModifiedDateTime desc".to_owned())];
        if let Some(since) = since {
            query.push(("$filter", format!("lastModifiedDateTime gt {}", iso(since))));
        }
        let mut out = Vec::new();
        let mut page: Page<GraphMessage> =
            Self::decode(self.get(Auth::User(token), &self.url(&format!("chats/{chat}/messages")), &query).await?)?;
        for _ in 0..MAX_PAGES {
            for m in page.value {
                out.push(m.into_message()?);
            }
            let Some(next) = page.next_link else { return Ok(out) };
            page = Self::decode(self.get(Auth::User(token), &next, &[]).await?)?;
        }
        Err(unavailable("Graph chat messages kept paging beyond the limit"))
    }

    async fn create_subscription(
        &self,
        token: &AccessToken,
        r: &SubscriptionRequest,
    ) -> GraphResult<GraphSubscription> {
        use secrecy::ExposeSecret;
        // Basic notifications: no resource data, so no certificate to manage; the message is read
        // with the agent's token.
        let body = json!({
            "changeType": "created,updated,deleted",
            "notificationUrl": r.notification_url,
            "lifecycleNotificationUrl": r.lifecycle_url,
            "resource": format!("/chats/{}/messages", r.chat),
            "includeResourceData": false,
            "expirationDateTime": iso(r.expires_at),
            "clientState": r.client_state.expose_secret(),
        });
        let (_, v) = self.call(Auth::User(token), Method::POST, &self.url("subscriptions"), &[], Some(&body)).await?;
        Self::decode::<GraphSub>(v)?.into_subscription()
    }

    async fn subscriptions(&self, token: &AccessToken) -> GraphResult<Vec<GraphSubscription>> {
        let page: Page<GraphSub> = Self::decode(self.get(Auth::User(token), &self.url("subscriptions"), &[]).await?)?;
        page.value.into_iter().map(GraphSub::into_subscription).collect()
    }

    async fn renew_subscription(
        &self,
        token: &AccessToken,
        id: &SubscriptionId,
        expires_at: DateTime<Utc>,
    ) -> GraphResult<DateTime<Utc>> {
        let body = json!({ "expirationDateTime": iso(expires_at) });
        let (_, v) = self
            .call(Auth::User(token), Method::PATCH, &self.url(&format!("subscriptions/{id}")), &[], Some(&body))
            .await?;
        Ok(Self::decode::<GraphSub>(v)
            .and_then(GraphSub::into_subscription)
            .map(|s| s.expires_at)
            .unwrap_or(expires_at))
    }

    async fn reauthorize_subscription(&self, token: &AccessToken, id: &SubscriptionId) -> GraphResult<()> {
        self.call(Auth::User(token), Method::POST, &self.url(&format!("subscriptions/{id}/reauthorize")), &[], None)
            .await
            .map(|_| ())
    }

    async fn delete_subscription(&self, token: &AccessToken, id: &SubscriptionId) -> GraphResult<()> {
        match self.call(Auth::User(token), Method::DELETE, &self.url(&format!("subscriptions/{id}")), &[], None).await {
            Ok(_) | Err(GraphError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_possibly_fractional() {
        let h = |v: &str| reqwest::header::HeaderValue::from_str(v).unwrap();
        assert_eq!(parse_retry_after(Some(&h("2.128"))), Some(Duration::from_millis(2128)));
        assert_eq!(parse_retry_after(Some(&h("3"))), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(Some(&h("soon"))), None);
        assert_eq!(parse_retry_after(Some(&h("-1"))), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn messages_are_read_with_reactions_and_system_events_marked() {
        let m: GraphMessage = serde_json::from_value(json!({
            "id": "1616991463150", "messageType": "message",
            "createdDateTime": "2021-03-29T04:17:43.15Z", "lastModifiedDateTime": "2021-03-29T04:18:00.1234567Z",
            "lastEditedDateTime": null, "deletedDateTime": null,
            "from": { "application": null, "device": null, "user": { "id": "u-1", "displayName": "Robin" } },
            "body": { "contentType": "html", "content": "<p onclick=\"x()\">Hello <script>bad()</script><b>World</b></p>" },
            "reactions": [{ "reactionType": "👍", "createdDateTime": "2021-03-29T04:18:00Z",
                            "user": { "user": { "id": "u-2" } } }]
        }))
        .unwrap();
        let m = m.into_message().unwrap();
        assert_eq!(m.message_type, GraphMessageType::Message);
        assert_eq!(m.content, "<p>Hello <b>World</b></p>");
        assert_eq!(m.reactions[0].user.as_ref().unwrap().as_str(), "u-2");
        assert!(m.last_modified_at > m.created_at);
        let system: GraphMessage = serde_json::from_value(json!({
            "id": "1", "messageType": "unknownFutureValue", "createdDateTime": "2021-03-29T04:17:43Z",
            "body": { "contentType": "html", "content": "<systemEventMessage/>" }
        }))
        .unwrap();
        assert_eq!(system.into_message().unwrap().message_type, GraphMessageType::Other);
    }

    #[test]
    fn disabled_users_are_left_out() {
        let u: GraphUser =
            serde_json::from_value(json!({ "id": "u-1", "displayName": "X", "accountEnabled": false })).unwrap();
        assert!(u.into_user().is_none());
        let u: GraphUser =
            serde_json::from_value(json!({ "id": "u-2", "userPrincipalName": "x@example.com", "mail": null })).unwrap();
        let u = u.into_user().unwrap();
        assert_eq!(u.display_name, "x@example.com");
        assert_eq!(u.emails().len(), 1);
    }
}
