//! Connecting an agent's Teams account against the Graph emulator: the authorization-code flow
//! started from the API, tokens sealed in the secret store and refreshed, clear statuses for a
//! failed sign-in, a refused refresh and a missing Teams license, and disconnecting (admins only).

use mailroom::adapters::secrets::EmbeddedSecretStore;
use mailroom::domain::agent::Role;
use mailroom::domain::mailbox::SecretName;
use mailroom::ports::secrets::SecretStore;
use mailroom_tests::graph::{GraphTenant, TeamsApi, agent, graph_tenant, teams_api};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::json;

async fn setup() -> Option<(GraphTenant, TeamsApi)> {
    let t = graph_tenant(json!([
        { "displayName": "Ana Agent", "mail": "ana@example.com" },
        { "displayName": "Sam Supervisor", "mail": "sam@example.com", "teams": false },
        { "displayName": "Alex Weber", "mail": "alex@example.com" },
    ]))
    .await?;
    let api = teams_api(
        &t,
        &[
            agent("ana", "Ana Agent", "ana@example.com", Role::Agent),
            agent("sam", "Sam Supervisor", "sam@example.com", Role::Supervisor),
            agent("ada", "Ada Admin", "ada@example.com", Role::Admin),
        ],
        |_| {},
    )
    .await;
    Some((t, api))
}

/// Makes the next token the emulator issues for the tenant's app live `seconds` only.
async fn next_token_lifetime(t: &GraphTenant, seconds: u64) {
    let r = reqwest::Client::new()
        .post(format!("{}/_emulator/next-lifetime", t.server))
        .json(&json!({ "tenant": t.tenant, "client_id": t.client_id, "seconds": seconds }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

async fn stored_tokens(api: &TeamsApi, agent: &str) -> Option<String> {
    let plain = EmbeddedSecretStore::open(&api.backend).unwrap();
    let name = SecretName::parse(&format!("teams/{agent}/tokens")).unwrap();
    plain.get(&name).await.unwrap().map(|s| s.expose_secret().to_owned())
}

#[tokio::test]
async fn an_agent_connects_and_the_tokens_are_sealed_and_refreshed() {
    let Some((t, api)) = setup().await else { return };
    let ana = api.token("ana", Role::Agent);
    let (status, before) = api.get("/v1/me/teams", &ana).await;
    assert_eq!(
        (status, before["status"].as_str(), before["action"].as_str()),
        (StatusCode::OK, Some("not_connected"), Some("sign_in"))
    );

    // The delegated token lives 2 minutes: within the 5-minute margin, so the next use refreshes it.
    next_token_lifetime(&t, 120).await;
    let (status, connected) = api.connect("ana").await;
    assert_eq!(status, StatusCode::OK, "{connected}");
    assert_eq!(connected["status"], "connected", "{connected}");
    assert_eq!(connected["teams_user_id"], t.user_id("ana@example.com"));
    assert_eq!(connected["teams_user_name"], "Ana Agent");
    assert!(connected["action"].is_null());
    assert_eq!(api.get("/v1/me/teams", &ana).await.1["status"], "connected");

    // Stored sealed: neither the tokens nor their JSON form are readable in the database.
    let raw = stored_tokens(&api, "ana").await.expect("tokens stored");
    assert!(raw.starts_with("sealed:v1:"), "{raw}");
    assert!(!raw.contains("access_token") && !raw.contains("eyJ0"));

    // PKCE and the redirect URI were checked by the emulator's token endpoint; the state works once.
    let (status, start) = api.post("/v1/me/teams/connect", &ana, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let location = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(start["authorize_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let path = location.strip_prefix(&api.url).unwrap();
    let (first, _) = api.call(reqwest::Method::GET, path, None, None).await;
    assert_eq!(first, StatusCode::OK);
    let (again, err) = api.call(reqwest::Method::GET, path, None, None).await;
    assert_eq!((again, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("sign_in_expired")), "{err}");

    // Using Teams refreshes the short-lived token through the refresh_token grant.
    next_token_lifetime(&t, 120).await;
    api.connect("ana").await;
    let (status, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    assert_eq!(status, StatusCode::CREATED, "{chat}");
    let (status, sent) = api
        .post(&format!("/v1/teams/chats/{}/messages", chat["chat_id"].as_str().unwrap()), &ana, json!({ "text": "hi" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let stats = t.token_stats().await;
    assert!(stats["grants"]["refresh_token"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert_ne!(stored_tokens(&api, "ana").await.unwrap(), raw, "the refreshed tokens were stored");
}

#[tokio::test]
async fn a_failed_sign_in_tells_the_agent_to_sign_in_again() {
    let Some((t, api)) = setup().await else { return };
    let ana = api.token("ana", Role::Agent);
    t.control("user", json!({ "mail": "ana@example.com", "sign_in": "fail" })).await;
    let (status, v) = api.connect("ana").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "sign_in_failed");
    assert_eq!(v["action"], "sign_in");
    assert_eq!(v["error_code"], "AADSTS50126");
    assert!(v["message"].as_str().unwrap().contains("Sign in to Microsoft again"), "{v}");
    assert!(stored_tokens(&api, "ana").await.is_none());

    // Chatting needs a connected account, and says why not.
    let (status, err) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("teams_sign_in_failed")), "{err}");

    // A cancelled consent is a failed sign-in too.
    t.control("user", json!({ "mail": "ana@example.com", "sign_in": "cancel" })).await;
    assert_eq!(api.connect("ana").await.1["error_code"], "AADSTS65004");

    // Signing in again works once the account is fine.
    t.control("user", json!({ "mail": "ana@example.com", "sign_in": "ok" })).await;
    assert_eq!(api.connect("ana").await.1["status"], "connected");
}

#[tokio::test]
async fn a_refused_refresh_turns_the_connection_to_sign_in_failed() {
    let Some((t, api)) = setup().await else { return };
    let ana = api.token("ana", Role::Agent);
    next_token_lifetime(&t, 60).await;
    assert_eq!(api.connect("ana").await.1["status"], "connected");
    let (_, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    // The user's password was reset: every token and refresh token of theirs is revoked.
    let r = reqwest::Client::new()
        .post(format!("{}/_emulator/revoke", t.server))
        .json(&json!({ "client_id": t.client_id, "user": t.user_id("ana@example.com") }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (status, err) = api
        .post(&format!("/v1/teams/chats/{}/messages", chat["chat_id"].as_str().unwrap()), &ana, json!({ "text": "hi" }))
        .await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("teams_sign_in_failed")), "{err}");
    let v = api.get("/v1/me/teams", &ana).await.1;
    assert_eq!((v["status"].as_str(), v["action"].as_str()), (Some("sign_in_failed"), Some("sign_in")), "{v}");
    assert_eq!(v["error_code"], "AADSTS700082");
}

#[tokio::test]
async fn a_missing_teams_license_tells_the_agent_to_contact_their_admin() {
    let Some((_t, api)) = setup().await else { return };
    let (status, v) = api.connect("sam").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((v["status"].as_str(), v["action"].as_str()), (Some("no_teams_license"), Some("contact_admin")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("Contact your admin"), "{v}");
    assert!(stored_tokens(&api, "sam").await.is_none(), "no tokens kept without a license");
    let sam = api.token("sam", Role::Supervisor);
    let (status, err) = api.post("/v1/teams/chats", &sam, json!({ "email": "alex@example.com" })).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("teams_no_license")), "{err}");
}

#[tokio::test]
async fn only_an_admin_disconnects_an_agents_teams_account() {
    let Some((t, api)) = setup().await else { return };
    let ana = api.token("ana", Role::Agent);
    assert_eq!(api.connect("ana").await.1["status"], "connected");
    let (_, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    let chat_id = chat["chat_id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "hi" })).await.0,
        StatusCode::CREATED
    );
    assert_eq!(t.state().await["subscriptions"].as_array().unwrap().len(), 1);

    for (who, role) in [("ana", Role::Agent), ("sam", Role::Supervisor)] {
        let (status, _) =
            api.call(reqwest::Method::DELETE, "/v1/agents/ana/teams", Some(&api.token(who, role)), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who} may not disconnect");
    }
    // A supervisor may look.
    assert_eq!(api.get("/v1/agents/ana/teams", &api.token("sam", Role::Supervisor)).await.1["status"], "connected");

    let admin = api.token("ada", Role::Admin);
    let (status, v) = api.call(reqwest::Method::DELETE, "/v1/agents/ana/teams", Some(&admin), None).await;
    assert_eq!((status, v["status"].as_str()), (StatusCode::OK, Some("not_connected")), "{v}");
    assert_eq!(api.get("/v1/me/teams", &ana).await.1["status"], "not_connected");
    assert!(stored_tokens(&api, "ana").await.is_none());
    assert!(t.state().await["subscriptions"].as_array().unwrap().is_empty(), "its subscriptions were deleted");
    // The chat stays readable; sending needs a new connection.
    assert_eq!(api.messages(&ana, &chat_id).await.len(), 1);
    let (status, err) =
        api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "again" })).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("teams_not_connected")), "{err}");
}

#[tokio::test]
async fn signing_in_with_someone_elses_account_is_refused() {
    let Some((t, api)) = setup().await else { return };
    // In Microsoft's account picker, Ana picks Alex's account.
    t.control("user", json!({ "mail": "ana@example.com", "sign_in_as": "alex@example.com" })).await;
    let (status, v) = api.connect("ana").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((v["status"].as_str(), v["action"].as_str()), (Some("wrong_account"), Some("sign_in")), "{v}");
    assert!(stored_tokens(&api, "ana").await.is_none(), "no tokens of another person are kept");
}
