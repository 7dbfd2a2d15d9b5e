//! Chats against the Graph emulator: the agent writes first, sending with the agent's delegated
//! token, receiving through change notifications (validation handshake, clientState), edits,
//! deletions and reactions as they happen, polling with long waits, and no earlier history.

use std::time::{Duration, Instant};

use mailroom::domain::agent::Role;
use mailroom_tests::graph::{GraphTenant, TeamsApi, agent, graph_tenant, teams_api};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn setup() -> Option<(GraphTenant, TeamsApi)> {
    let t = graph_tenant(json!([
        { "displayName": "Ana Agent", "mail": "ana@example.com" },
        { "displayName": "Alex Weber", "mail": "alex@example.com", "jobTitle": "Claims Handler" },
    ]))
    .await?;
    let api = teams_api(&t, &[agent("ana", "Ana Agent", "ana@example.com", Role::Agent)], |_| {}).await;
    assert_eq!(api.connect("ana").await.1["status"], "connected");
    Some((t, api))
}

fn by_id<'a>(entries: &'a [Value], id: &str) -> Option<&'a Value> {
    entries.iter().find(|e| e["id"] == id)
}

#[tokio::test]
async fn the_agent_writes_first_then_messages_edits_deletions_and_reactions_arrive() {
    let Some((t, api)) = setup().await else { return };
    let ana = api.token("ana", Role::Agent);
    let alex = t.user_id("alex@example.com");

    // Starting a chat reaches nothing in Teams yet; starting again returns the same chat.
    let (status, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    assert_eq!(status, StatusCode::CREATED, "{chat}");
    assert_eq!(chat["state"], "awaiting_first_message");
    assert_eq!(chat["peer_name"], "Alex Weber");
    let chat_id = chat["chat_id"].as_str().unwrap().to_owned();
    let (status, again) = api.post("/v1/teams/chats", &ana, json!({ "teams_user_id": alex })).await;
    assert_eq!((status, again["chat_id"].as_str()), (StatusCode::OK, Some(chat_id.as_str())));
    assert_eq!(api.get("/v1/teams/chats", &ana).await.1["chats"].as_array().unwrap().len(), 1);

    // The Teams user cannot write before the agent: there is no chat to write in.
    let (status, _) =
        t.try_control("send", json!({ "from": "alex@example.com", "to": "ana@example.com", "text": "first!" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(t.chat_between("ana@example.com", "alex@example.com").await.is_none());
    assert!(api.messages(&ana, &chat_id).await.is_empty());

    // The first message creates the chat, subscribes (handshake answered), and sends as Ana.
    let (status, sent) = api
        .post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "Hello Alex, about claim 42" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!((sent["direction"].as_str(), sent["kind"].as_str()), (Some("outbound"), Some("message")));
    let my_message = sent["message_id"].as_str().unwrap().to_owned();
    let graph_chat = t.chat_between("ana@example.com", "alex@example.com").await.expect("a Teams chat now");
    let sends: Vec<Value> = t.requests("/messages").await.into_iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["app_only"], false, "sent with the agent's delegated token");
    let state = t.state().await;
    let subs = state["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1);
    assert!(subs[0]["notificationUrl"].as_str().unwrap().starts_with(&api.url));
    assert_eq!(subs[0]["changeType"], "created,updated,deleted");
    assert_eq!(api.get(&format!("/v1/teams/chats/{chat_id}"), &ana).await.1["chat"]["state"], "open");
    let cursor = sent["seq"].as_u64().unwrap();

    // A reply arrives; a long poll returns as soon as it does.
    let poll = {
        let (url, ana) = (api.url.clone(), ana.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let v: Value = reqwest::Client::new()
                .get(format!("{url}/v1/teams/updates?after={cursor}&wait=20"))
                .bearer_auth(ana)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (v, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = t.control("send", json!({ "from": "alex@example.com", "chat_id": graph_chat["id"], "text": "<p>Hi Ana, <b>looking</b> now</p>" })).await;
    let reply_id = reply["id"].as_str().unwrap().to_owned();
    let (polled, waited) = poll.await.unwrap();
    assert!(waited < Duration::from_secs(15), "the long poll returned when the reply came: {waited:?}");
    let got = polled["messages"].as_array().unwrap();
    let inbound = by_id(got, &reply_id).unwrap_or_else(|| panic!("the reply in {polled}"));
    assert_eq!(inbound["direction"], "inbound");
    assert_eq!(inbound["from"]["name"], "Alex Weber");
    assert_eq!(inbound["content_type"], "html");
    assert_eq!(inbound["content"], "<p>Hi Ana, <b>looking</b> now</p>");
    assert!(inbound["edited_at"].is_null() && inbound["deleted_at"].is_null());
    let cursor = polled["next_after"].as_u64().unwrap();

    // Edited in Teams: the same entry changes, with the time of the edit.
    t.control("edit", json!({ "chat_id": graph_chat["id"], "message_id": reply_id, "user": "alex@example.com", "text": "<p>Hi Ana, done</p>" })).await;
    let edited = api
        .eventually(10, "the edit", || async {
            let v = api.get(&format!("/v1/teams/chats/{chat_id}/messages?after={cursor}"), &ana).await.1;
            by_id(v["messages"].as_array()?, &reply_id).filter(|e| e["edited_at"].is_string()).cloned()
        })
        .await;
    assert_eq!(edited["content"], "<p>Hi Ana, done</p>");
    assert!(edited["seq"].as_u64().unwrap() > cursor);

    // A reaction to Ana's message arrives as a message of its own; taking it back shows too.
    t.control(
        "react",
        json!({ "chat_id": graph_chat["id"], "message_id": my_message, "user": "alex@example.com", "reaction": "👍" }),
    )
    .await;
    let reaction = api
        .eventually(10, "the reaction", || async {
            let entries = api.messages(&ana, &chat_id).await;
            entries.into_iter().find(|e| e["kind"] == "reaction")
        })
        .await;
    assert_eq!(reaction["reaction"], "👍");
    assert_eq!(reaction["reacts_to"], my_message.as_str());
    assert_eq!(
        (reaction["direction"].as_str(), reaction["from"]["name"].as_str()),
        (Some("inbound"), Some("Alex Weber"))
    );
    t.control(
        "unreact",
        json!({ "chat_id": graph_chat["id"], "message_id": my_message, "user": "alex@example.com", "reaction": "👍" }),
    )
    .await;
    api.eventually(10, "the reaction taken back", || async {
        let entries = api.messages(&ana, &chat_id).await;
        entries.into_iter().find(|e| e["kind"] == "reaction" && e["deleted_at"].is_string())
    })
    .await;

    // Deleted in Teams: the entry stays, empty, with the time of the deletion.
    t.control("delete", json!({ "chat_id": graph_chat["id"], "message_id": reply_id, "user": "alex@example.com" }))
        .await;
    let deleted = api
        .eventually(10, "the deletion", || async {
            let entries = api.messages(&ana, &chat_id).await;
            by_id(&entries, &reply_id).filter(|e| e["deleted_at"].is_string()).cloned()
        })
        .await;
    assert_eq!(deleted["content"], "");
    assert!(deleted["edited_at"].is_string(), "the edit time is kept");

    // Nothing twice: Ana's own message came back as a notification too.
    let entries = api.messages(&ana, &chat_id).await;
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert_eq!(entries.iter().filter(|e| e["message_id"] == my_message.as_str() && e["kind"] == "message").count(), 1);
    // Every delivery was answered 2xx well within Graph's 3 seconds.
    let deliveries = t.state().await["deliveries"].as_array().unwrap().clone();
    assert!(!deliveries.is_empty());
    assert!(deliveries.iter().all(|d| d["status"] == 202 && d["ms"].as_u64().unwrap() < 3000), "{deliveries:?}");
}

#[tokio::test]
async fn history_from_before_the_agents_first_message_is_not_shown() {
    let Some((t, api)) = setup().await else { return };
    let ana = api.token("ana", Role::Agent);
    // Ana and Alex chatted in Teams before: the chat exists with an old message in it.
    let app = t.app_token().await;
    let member = |mail: &str| {
        json!({ "@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"],
                "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('{}')", t.user_id(mail)) })
    };
    let (status, _) = t
        .graph(
            Method::POST,
            "chats",
            &app,
            Some(json!({ "chatType": "oneOnOne", "members": [member("ana@example.com"), member("alex@example.com")] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    t.control("send", json!({ "from": "alex@example.com", "to": "ana@example.com", "text": "an old private message" }))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let (_, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    let chat_id = chat["chat_id"].as_str().unwrap().to_owned();
    let (status, _) =
        api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "Hello again" })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, resync) = api.post(&format!("/v1/teams/chats/{chat_id}/resync"), &ana, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{resync}");
    let entries = api.messages(&ana, &chat_id).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["content"], "Hello again");
}

#[tokio::test]
async fn the_webhook_answers_the_handshake_and_checks_client_state() {
    let Some((t, api)) = setup().await else { return };
    let ana = api.token("ana", Role::Agent);
    let http = reqwest::Client::new();
    // The token as Graph sends it (URL-encoded), answered decoded, as text/plain.
    let token = "Validation: Testing client application reachability for subscription Request-Id: 8d7b";
    for path in ["/v1/teams/notifications", "/v1/teams/lifecycle"] {
        let r = http
            .post(format!("{}{path}?validationToken={}", api.url, "Validation%3A%20Testing%20client%20application%20reachability%20for%20subscription%20Request-Id%3A%208d7b"))
            .header("Content-Type", "text/plain")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        assert_eq!(r.text().await.unwrap(), token);
    }

    let (_, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    let chat_id = chat["chat_id"].as_str().unwrap().to_owned();
    api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "hi" })).await;
    let state = t.state().await;
    let sub = state["subscriptions"][0].clone();
    let graph_chat = state["chats"][0]["id"].as_str().unwrap().to_owned();
    // A message Mailroom has not been told about, with notifications switched off.
    t.control("notifications", json!({ "deliver": false })).await;
    let hidden = t.control("send", json!({ "from": "alex@example.com", "chat_id": graph_chat, "text": "psst" })).await;
    let hidden_id = hidden["id"].as_str().unwrap();
    let forged = |client_state: &str, subscription: &str| {
        json!({ "value": [{ "subscriptionId": subscription, "changeType": "created", "clientState": client_state,
            "tenantId": state["tenant_id"], "resource": format!("chats('{graph_chat}')/messages('{hidden_id}')"),
            "resourceData": { "id": hidden_id, "@odata.type": "#Microsoft.Graph.chatMessage" } }] })
    };
    for body in [
        forged("not-the-client-state", sub["id"].as_str().unwrap()),
        forged(sub["clientState"].as_str().unwrap(), "0000-unknown"),
    ] {
        let r = http.post(format!("{}/v1/teams/notifications", api.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let r = http.post(format!("{}/v1/teams/notifications", api.url)).body("not json").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.messages(&ana, &chat_id).await.len(), 1, "forged notifications change nothing");

    // The genuine clientState is accepted.
    let r = http
        .post(format!("{}/v1/teams/notifications", api.url))
        .json(&forged(sub["clientState"].as_str().unwrap(), sub["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    api.eventually(10, "the genuine notification", || async {
        by_id(&api.messages(&ana, &chat_id).await, hidden_id).cloned()
    })
    .await;

    // Graph itself refuses an application (app-only) chat message: only migration may do that.
    let app = t.app_token().await;
    let (status, err) = t
        .graph(Method::POST, &format!("chats/{graph_chat}/messages"), &app, Some(json!({ "body": { "content": "x" } })))
        .await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("Unauthorized")), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("import purposes"));
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let Some((_t, api)) = setup().await else { return };
    let ana = api.token("ana", Role::Agent);
    let (status, err) =
        api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com", "contact_id": "c-1" })).await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("contact_id")), "{err}");
    let (status, err) = api.post("/v1/teams/chats", &ana, json!({ "email": "nobody@example.com" })).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("no_teams_identity")), "{err}");
    let (_, chat) = api.post("/v1/teams/chats", &ana, json!({ "email": "alex@example.com" })).await;
    let chat_id = chat["chat_id"].as_str().unwrap();
    let (status, err) = api.post(&format!("/v1/teams/chats/{chat_id}/messages"), &ana, json!({ "text": "   " })).await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("text")), "{err}");
    let (status, err) = api.get("/v1/teams/updates?wait=99", &ana).await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("wait")), "{err}");
    // Someone else's chat does not exist for them.
    let (status, _) = api.get(&format!("/v1/teams/chats/{chat_id}"), &api.token("ben", Role::Agent)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call(Method::GET, "/v1/teams/chats", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
