//! Chat subscriptions against the Graph emulator: renewed before they expire, created again when
//! Graph dropped them, lifecycle notifications handled, and messages missed in a gap re-read.

use mailroom::domain::agent::Role;
use mailroom_tests::graph::{GraphTenant, TeamsApi, agent, graph_tenant, teams_api};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Ana connected, in an open chat with Alex. Returns the chat id and Graph's chat id.
async fn setup(
    adjust: impl FnOnce(&mut mailroom::usecases::teams::TeamsSettings),
) -> Option<(GraphTenant, TeamsApi, String, String)> {
    let t = graph_tenant(json!([
        { "displayName": "Ana Agent", "mail": "ana@example.com" },
        { "displayName": "Alex Weber", "mail": "alex@example.com" },
    ]))
    .await?;
    let api = teams_api(
        &t,
        &[
            agent("ana", "Ana Agent", "ana@example.com", Role::Agent),
            agent("ada", "Ada Admin", "ada@example.com", Role::Admin),
        ],
        adjust,
    )
    .await;
    assert_eq!(api.connect("ana").await.1["status"], "connected");
    let ana = api.token("ana", Role::Agent);
    let (_, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    let chat_id = chat["chat_id"].as_str().unwrap().to_owned();
    let (status, _) = api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "hello" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let graph_chat =
        t.chat_between("ana@example.com", "alex@example.com").await.unwrap()["id"].as_str().unwrap().to_owned();
    Some((t, api, chat_id, graph_chat))
}

async fn subscriptions(t: &GraphTenant) -> Vec<Value> {
    t.state().await["subscriptions"].as_array().cloned().unwrap_or_default()
}

/// Alex writes while notifications are not delivered (Mailroom down, a network gap).
async fn write_during_a_gap(t: &GraphTenant, graph_chat: &str, texts: &[&str]) -> Vec<String> {
    t.control("notifications", json!({ "deliver": false })).await;
    let mut ids = Vec::new();
    for text in texts {
        let m = t.control("send", json!({ "from": "alex@example.com", "chat_id": graph_chat, "text": text })).await;
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    t.control("notifications", json!({ "deliver": true })).await;
    ids
}

async fn has_all(api: &TeamsApi, chat_id: &str, ids: &[String]) -> bool {
    let entries = api.messages(&api.token("ana", Role::Agent), chat_id).await;
    ids.iter().all(|id| entries.iter().any(|e| e["id"] == id.as_str()))
}

#[tokio::test]
async fn subscriptions_are_renewed_before_they_expire() {
    // Everything is "about to expire" with a renewal window longer than the lifetime.
    let Some((t, api, _, _)) = setup(|s| s.renew_before = chrono::Duration::minutes(5000)).await else { return };
    let before = subscriptions(&t).await;
    assert_eq!(before.len(), 1);
    let expiry = before[0]["expirationDateTime"].as_str().unwrap().to_owned();
    // Graph's rules held: 4,200 minutes ahead, with a lifecycle URL (required beyond one hour).
    assert!(before[0]["lifecycleNotificationUrl"].as_str().unwrap().ends_with("/v1/teams/lifecycle"));

    assert_eq!(
        api.post("/v1/teams/subscriptions/renew", &api.token("ana", Role::Agent), json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, report) = api.post("/v1/teams/subscriptions/renew", &api.token("ada", Role::Admin), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["renewed"].as_u64(), report["recreated"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(0), Some(0))
    );
    let after = subscriptions(&t).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["id"], before[0]["id"], "renewed, not replaced");
    assert!(after[0]["expirationDateTime"].as_str().unwrap() > expiry.as_str(), "{after:?}");
    assert_eq!(after[0]["_renewals"], 1);
}

#[tokio::test]
async fn subscriptions_far_from_expiry_are_left_alone() {
    let Some((t, api, _, _)) = setup(|_| {}).await else { return };
    let report = api.teams.renew_subscriptions().await.unwrap();
    assert_eq!((report.renewed, report.recreated), (0, 0));
    assert_eq!(subscriptions(&t).await[0]["_renewals"], 0);
}

#[tokio::test]
async fn an_expired_subscription_is_created_again_and_the_gap_is_re_read() {
    let Some((t, api, chat_id, graph_chat)) = setup(|s| s.renew_before = chrono::Duration::minutes(5000)).await else {
        return;
    };
    let old = subscriptions(&t).await[0]["id"].as_str().unwrap().to_owned();
    let missed = write_during_a_gap(&t, &graph_chat, &["while you were away", "and this too"]).await;
    t.control("expire", json!({ "subscription_id": old })).await;
    assert!(!has_all(&api, &chat_id, &missed).await);

    let report = api.teams.renew_subscriptions().await.unwrap();
    assert_eq!((report.renewed, report.recreated, report.failed), (0, 1, 0));
    let subs = subscriptions(&t).await;
    let live: Vec<&Value> = subs.iter().filter(|s| s["id"] != old.as_str()).collect();
    assert_eq!(live.len(), 1, "a new subscription: {subs:?}");
    assert!(has_all(&api, &chat_id, &missed).await, "the gap was re-read");

    // New messages arrive through the new subscription.
    let m =
        t.control("send", json!({ "from": "alex@example.com", "chat_id": graph_chat, "text": "after the gap" })).await;
    let id = m["id"].as_str().unwrap().to_owned();
    api.eventually(10, "a message after the gap", || async {
        has_all(&api, &chat_id, std::slice::from_ref(&id)).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn lifecycle_notifications_re_subscribe_re_read_and_re_authorize() {
    let Some((t, api, chat_id, graph_chat)) = setup(|_| {}).await else { return };

    // subscriptionRemoved: Graph dropped it; a new one is made and the chat re-read.
    let old = subscriptions(&t).await[0]["id"].as_str().unwrap().to_owned();
    let missed = write_during_a_gap(&t, &graph_chat, &["lost one", "lost two"]).await;
    t.control("lifecycle", json!({ "subscription_id": old, "event": "subscriptionRemoved" })).await;
    api.eventually(10, "the re-read after subscriptionRemoved", || async {
        has_all(&api, &chat_id, &missed).await.then_some(())
    })
    .await;
    let subs = api
        .eventually(10, "a new subscription", || async {
            let subs = subscriptions(&t).await;
            (subs.len() == 1 && subs[0]["id"] != old.as_str()).then_some(subs)
        })
        .await;
    let current = subs[0]["id"].as_str().unwrap().to_owned();

    // missed: notifications were lost; the chat is re-read.
    let missed = write_during_a_gap(&t, &graph_chat, &["lost three"]).await;
    t.control("lifecycle", json!({ "subscription_id": current, "event": "missed" })).await;
    api.eventually(10, "the re-read after missed", || async { has_all(&api, &chat_id, &missed).await.then_some(()) })
        .await;

    // reauthorizationRequired: answered with /reauthorize.
    t.control("lifecycle", json!({ "subscription_id": current, "event": "reauthorizationRequired" })).await;
    api.eventually(10, "the reauthorization", || async {
        let subs = subscriptions(&t).await;
        (subs.first()?["_reauthorized"] == 1).then_some(())
    })
    .await;

    // Every lifecycle notification was acknowledged.
    let deliveries = t.state().await["deliveries"].as_array().unwrap().clone();
    let lifecycle: Vec<&Value> =
        deliveries.iter().filter(|d| d["change_type"].as_str().unwrap().starts_with("lifecycle:")).collect();
    assert_eq!(lifecycle.len(), 3);
    assert!(lifecycle.iter().all(|d| d["status"] == 202), "{lifecycle:?}");
}

#[tokio::test]
async fn the_maintenance_task_renews_on_its_own_and_stops_when_told() {
    let Some((t, api, _, _)) = setup(|s| s.renew_before = chrono::Duration::minutes(5000)).await else { return };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(api.teams.clone().run_maintenance(std::time::Duration::from_millis(200), None, shutdown));
    api.eventually(10, "a scheduled renewal", || async {
        let subs = subscriptions(&t).await;
        (subs.first()?["_renewals"].as_u64()? >= 1).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("it stops").unwrap();
}

#[tokio::test]
async fn messages_sent_while_the_server_was_down_are_read_at_start() {
    let Some((t, api, chat_id, graph_chat)) = setup(|_| {}).await else { return };
    // Graph gave up delivering while Mailroom was down.
    let missed = write_during_a_gap(&t, &graph_chat, &["are you there?", "call me back"]).await;
    assert!(!has_all(&api, &chat_id, &missed).await);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(api.teams.clone().run_maintenance(std::time::Duration::from_secs(3600), None, shutdown));
    api.eventually(10, "the re-read at start", || async { has_all(&api, &chat_id, &missed).await.then_some(()) }).await;
    stop.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task).await.expect("it stops").unwrap();
}
