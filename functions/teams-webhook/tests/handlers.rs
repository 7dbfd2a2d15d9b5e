//! The handlers on event fixtures (`tests/events`), with the embedded stores standing in for
//! DynamoDB and SQS: no Lambda runtime, no AWS.

use std::sync::Arc;
use std::time::Duration;

use mailroom::adapters::embedded::{EmbeddedBackend, EmbeddedQueue};
use mailroom::adapters::graph::{EmbeddedTeamsStore, GraphConfig, GraphOptions, embedded_teams_with};
use mailroom::domain::ids::AgentId;
use mailroom::domain::teams::{ChangeKind, ChatId, ChatNotification, ChatSubscription, SubscriptionId, secret_hash};
use mailroom::ports::WorkQueue;
use mailroom::ports::teams::TeamsChatStore;
use mailroom::usecases::teams::NotificationIntake;
use teams_webhook::webhook::Webhook;
use teams_webhook::worker::{Worker, WorkerError};

fn event(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    backend: EmbeddedBackend,
    store: Arc<EmbeddedTeamsStore>,
    queue: Arc<EmbeddedQueue>,
}

async fn setup(client_state: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let store = Arc::new(EmbeddedTeamsStore::open(&backend).unwrap());
    store
        .put_subscription(&ChatSubscription {
            id: SubscriptionId::parse("9070a4bb-5899-4b4a-b976-ce23f48bdf3a").unwrap(),
            chat: ChatId::parse("chat-0123456789abcdef").unwrap(),
            agent: AgentId::parse("ana").unwrap(),
            client_state_hash: secret_hash(client_state),
            expires_at: chrono::Utc::now() + chrono::Duration::days(2),
        })
        .await
        .unwrap();
    let queue = Arc::new(backend.queue("teams", 5));
    Setup { _dir: dir, backend, store, queue }
}

fn webhook(s: &Setup) -> Webhook {
    Webhook { intake: NotificationIntake { chats: s.store.clone() }, queue: s.queue.clone() }
}

async fn queued(s: &Setup) -> Vec<ChatNotification> {
    let got = s.queue.receive(10, Duration::from_secs(30), Duration::ZERO).await.unwrap();
    got.iter().map(|w| serde_json::from_str(&w.body).unwrap()).collect()
}

#[tokio::test]
async fn the_validation_handshake_is_answered_with_the_decoded_token_as_text() {
    let s = setup("fixture-client-state").await;
    let request = lambda_http::request::from_str(&event("apigw-validation.json")).unwrap();
    let response = webhook(&s).respond(request).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(
        std::str::from_utf8(response.body().as_ref()).unwrap(),
        "Validation: Testing client application reachability for subscription Request-Id: 2f4e6b2c-3d1a-4c5e-9f70-1a2b3c4d5e6f"
    );
    assert!(queued(&s).await.is_empty());
}

#[tokio::test]
async fn notifications_with_their_client_state_are_queued_for_the_worker() {
    let s = setup("fixture-client-state").await;
    let request = lambda_http::request::from_str(&event("apigw-notification.json")).unwrap();
    let response = webhook(&s).respond(request).await;
    assert_eq!(response.status(), 202);
    let items = queued(&s).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0].kind, ChangeKind::Created);
    assert_eq!(items[0].message.as_ref().unwrap().as_str(), "1795248000123");
    assert_eq!(items[1].kind, ChangeKind::Missed);
    assert!(items.iter().all(|n| n.client_state_hash.is_none()), "the clientState does not travel on");
}

#[tokio::test]
async fn a_wrong_client_state_queues_nothing_and_bad_bodies_are_refused() {
    let s = setup("another-client-state").await;
    let w = webhook(&s);
    let response = w.respond(lambda_http::request::from_str(&event("apigw-notification.json")).unwrap()).await;
    assert_eq!(response.status(), 202, "Graph is answered; the items are dropped");
    assert!(queued(&s).await.is_empty());
    assert_eq!(w.handle(None, b"not json").await.status, 400);
}

#[tokio::test]
async fn the_worker_acknowledges_what_it_cannot_use_and_refuses_unknown_events() {
    let s = setup("fixture-client-state").await;
    let env = std::collections::HashMap::from([
        ("MAILROOM_GRAPH_TENANT", "t"),
        ("MAILROOM_GRAPH_CLIENT_ID", "c"),
        ("MAILROOM_GRAPH_CLIENT_SECRET", "s"),
        ("MAILROOM_GRAPH_URL", "http://127.0.0.1:9/v1.0"),
        ("MAILROOM_GRAPH_AUTHORITY", "http://127.0.0.1:9"),
    ]);
    let config = GraphConfig::from_lookup(|n| env.get(n).map(|v| v.to_string())).unwrap().unwrap();
    let teams = embedded_teams_with(&s.backend, s._dir.path(), &config, config.settings(), GraphOptions::default())
        .await
        .unwrap();
    let worker = Worker { teams };
    // The subscription's chat is unknown here and the second body is not a notification: both
    // are acknowledged (nothing to retry).
    let sqs: serde_json::Value = serde_json::from_str(&event("sqs-notifications.json")).unwrap();
    let answer = worker.handle(sqs).await.unwrap();
    assert_eq!(answer["batchItemFailures"], serde_json::json!([]), "{answer}");
    // No subscription is due: nothing to renew, nothing called.
    let report = worker.handle(serde_json::from_str(&event("schedule-renew.json")).unwrap()).await.unwrap();
    assert_eq!(report["renewed"], 0);
    assert!(matches!(worker.handle(serde_json::json!({ "task": "dance" })).await, Err(WorkerError::UnknownEvent)));
}
