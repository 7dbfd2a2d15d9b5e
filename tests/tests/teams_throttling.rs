//! Throttling and Graph's limits against the Graph emulator: a 429's Retry-After is waited for
//! (fractional seconds), a long one reaches the agent as a 503 at once, throttled presence does not
//! break the directory, and the emulator holds Graph's query limits.

use std::time::{Duration, Instant};

use mailroom::domain::agent::Role;
use mailroom_tests::graph::{agent, graph_tenant, teams_api};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_throttled_send_waits_for_retry_after_and_succeeds() {
    let Some(t) = graph_tenant(json!([
        { "displayName": "Ana Agent", "mail": "ana@example.com" },
        { "displayName": "Alex Weber", "mail": "alex@example.com" },
    ]))
    .await
    else {
        return;
    };
    let api = teams_api(&t, &[agent("ana", "Ana Agent", "ana@example.com", Role::Agent)], |_| {}).await;
    api.connect("ana").await;
    let ana = api.token("ana", Role::Agent);
    let (_, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    let chat_id = chat["chat_id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "one" })).await.0,
        StatusCode::CREATED
    );

    // Two 429s with Retry-After: 0.4 (fractional seconds), then through.
    t.control("throttle", json!({ "count": 2, "retry_after": 0.4, "method": "POST", "path": "messages" })).await;
    let started = Instant::now();
    let (status, sent) = api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "two" })).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert!(started.elapsed() >= Duration::from_millis(800), "waited for both Retry-After: {:?}", started.elapsed());
    let posts: Vec<_> = t.requests("/messages").await.into_iter().filter(|r| r["method"] == "POST").collect();
    let statuses: Vec<u64> = posts.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 429, 429, 201]);

    // Throttled for longer than the client waits: the agent hears at once, with Retry-After.
    t.control("throttle", json!({ "count": -1, "retry_after": 30, "method": "POST", "path": "messages" })).await;
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/teams/chats/{chat_id}/messages", api.url))
        .bearer_auth(&ana)
        .json(&json!({ "text": "three" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "teams_throttled");
    assert!(started.elapsed() < Duration::from_secs(5), "no 30-second wait: {:?}", started.elapsed());

    t.control("throttle", json!({ "count": 0 })).await;
    assert_eq!(
        api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "four" })).await.0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn throttled_presence_leaves_the_directory_working() {
    let Some(t) = graph_tenant(json!([
        { "displayName": "Alex Weber", "mail": "alex@example.com", "presence": { "availability": "Busy", "activity": "InACall" } },
    ]))
    .await
    else {
        return;
    };
    let api = teams_api(&t, &[agent("ada", "Ada Admin", "ada@example.com", Role::Admin)], |_| {}).await;
    let admin = api.token("ada", Role::Admin);
    // The sync itself rides out a short throttle.
    t.control("throttle", json!({ "count": 1, "retry_after": 0.2, "path": "users" })).await;
    let (status, sync) = api.post("/v1/contacts/sync", &admin, json!({})).await;
    assert_eq!((status, sync["users"].as_u64()), (StatusCode::OK, Some(1)), "{sync}");

    t.control("throttle", json!({ "count": -1, "retry_after": 60, "path": "getPresencesByUserId" })).await;
    let (status, list) = api.get("/v1/contacts", &admin).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let alex = list["contacts"].as_array().unwrap().iter().find(|c| c["name"] == "Alex Weber").unwrap();
    assert_eq!(alex["presence"]["availability"], "unknown");
    assert_eq!(alex["presence"]["source"], "teams");

    t.control("throttle", json!({ "count": 0 })).await;
    let (_, list) = api.get("/v1/contacts", &admin).await;
    assert_eq!(list["contacts"][1]["presence"]["availability"], "busy", "{list}");
}

#[tokio::test]
async fn the_emulator_holds_graphs_limits() {
    let Some(t) = graph_tenant(json!([
        { "displayName": "Ana Agent", "mail": "ana@example.com" },
        { "displayName": "Alex Weber", "mail": "alex@example.com" },
    ]))
    .await
    else {
        return;
    };
    let app = t.app_token().await;
    let (status, err) = t.graph(Method::GET, "users?$top=1000", &app, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["message"], "Invalid page size specified: '1000'. Must be between 1 and 999 inclusive.");
    assert_eq!(t.graph(Method::GET, "users?$top=0", &app, None).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(t.graph(Method::GET, "users?$top=999", &app, None).await.0, StatusCode::OK);

    let ids: Vec<String> = (0..651).map(|i| format!("00000000-0000-0000-0000-{i:012}")).collect();
    let (status, _) =
        t.graph(Method::POST, "communications/getPresencesByUserId", &app, Some(json!({ "ids": ids }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "at most 650 ids");

    let member = |mail: &str| {
        json!({ "@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"],
                "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('{}')", t.user_id(mail)) })
    };
    let (status, chat) = t
        .graph(
            Method::POST,
            "chats",
            &app,
            Some(json!({ "chatType": "oneOnOne", "members": [member("ana@example.com"), member("alex@example.com")] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let chat_id = chat["id"].as_str().unwrap();
    let (status, again) = t
        .graph(
            Method::POST,
            "chats",
            &app,
            Some(json!({ "chatType": "oneOnOne", "members": [member("alex@example.com"), member("ana@example.com")] })),
        )
        .await;
    assert_eq!((status, again["id"].as_str()), (StatusCode::CREATED, Some(chat_id)), "one 1:1 chat per pair");
    assert_eq!(
        t.graph(Method::GET, &format!("chats/{chat_id}/messages?$top=51"), &app, None).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(t.graph(Method::GET, &format!("chats/{chat_id}/messages?$top=50"), &app, None).await.0, StatusCode::OK);

    let in_minutes =
        |m: i64| (chrono::Utc::now() + chrono::Duration::minutes(m)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let subscription = |expiry: String, lifecycle: bool| {
        let mut body = json!({ "changeType": "created", "notificationUrl": "http://127.0.0.1:9/none",
                               "resource": format!("/chats/{chat_id}/messages"), "expirationDateTime": expiry, "clientState": "x" });
        if lifecycle {
            body["lifecycleNotificationUrl"] = json!("http://127.0.0.1:9/none");
        }
        body
    };
    let (status, err) = t.graph(Method::POST, "subscriptions", &app, Some(subscription(in_minutes(4400), true))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "beyond 4,320 minutes: {err}");
    let (status, err) = t.graph(Method::POST, "subscriptions", &app, Some(subscription(in_minutes(120), false))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        err["error"]["message"],
        "lifecycleNotificationUrl is a required property for subscription creation on this resource when the expirationDateTime value is set to greater than 1 hour."
    );
    // An endpoint that does not answer the validation handshake gets no subscription.
    let (status, err) = t.graph(Method::POST, "subscriptions", &app, Some(subscription(in_minutes(30), false))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"]["message"].as_str().unwrap().contains("validation request failed"), "{err}");

    // Throttling comes with Graph's body and a fractional Retry-After.
    t.control("throttle", json!({ "count": 1, "retry_after": 2.128 })).await;
    let r = reqwest::Client::new().get(format!("{}/v1.0/users", t.server)).bearer_auth(&app).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "2.128");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TooManyRequests");
    // No token, no Graph.
    assert_eq!(
        reqwest::Client::new().get(format!("{}/v1.0/users", t.server)).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}
