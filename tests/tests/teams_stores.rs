//! The Teams stores' contract, held by both backends: SQLite (embedded) and the DynamoDB state
//! table (on moto). Directory replacement, one-time sign-in states, subscriptions by expiry, and
//! chat entries: idempotent upserts, no older version over a newer one, and `seq` in commit order
//! under concurrency.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::adapters::graph::{DynamoTeamsStore, EmbeddedTeamsStore};
use mailroom::domain::ids::{AgentId, EmailAddress};
use mailroom::domain::teams::{
    ChatEntry, ChatId, ChatSubscription, ConnectionStatus, ContentType, Direction, EntryKind, GraphMessageId,
    OtherDirectoryEntry, OtherDirectoryId, PendingSignIn, SubscriptionId, TeamsChat, TeamsConnection, TeamsUser,
    TeamsUserId,
};
use mailroom::ports::teams::{TeamsChatStore, TeamsConnectionStore, TeamsDirectoryStore, Upserted};
use mailroom_tests::aws::{moto, unique_name};

trait TeamsStore: TeamsDirectoryStore + TeamsConnectionStore + TeamsChatStore {}
impl<T: TeamsDirectoryStore + TeamsConnectionStore + TeamsChatStore> TeamsStore for T {}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn user(id: &str) -> TeamsUser {
    TeamsUser {
        id: TeamsUserId::parse(id).unwrap(),
        display_name: format!("User {id}"),
        mail: Some(EmailAddress::parse(&format!("{id}@example.com")).unwrap()),
        user_principal_name: format!("{id}@example.com"),
        job_title: None,
        department: None,
    }
}

fn entry(chat: &ChatId, agent: &str, message: &str, content: &str, modified: &str) -> ChatEntry {
    ChatEntry {
        chat: chat.clone(),
        agent: AgentId::parse(agent).unwrap(),
        key: message.to_owned(),
        kind: EntryKind::Message,
        message_id: GraphMessageId::parse(message).unwrap(),
        reacts_to: None,
        reaction: None,
        direction: Direction::Inbound,
        from: None,
        from_name: Some("Alex".into()),
        content_type: ContentType::Text,
        content: content.into(),
        created_at: t("2026-01-01T10:00:00Z") + Duration::milliseconds(message.parse::<i64>().unwrap() % 1000),
        edited_at: None,
        deleted_at: None,
        source_modified_at: t(modified),
        seq: 0,
    }
}

async fn contract(store: Arc<dyn TeamsStore>) {
    // Directory: a sync replaces, counting who left.
    let r = store.replace_teams_users(&[user("u1"), user("u2"), user("u3")], t("2026-01-01T00:00:00Z")).await.unwrap();
    assert_eq!((r.stored, r.removed), (3, 0));
    let r = store.replace_teams_users(&[user("u2"), user("u4")], t("2026-01-02T00:00:00Z")).await.unwrap();
    assert_eq!((r.stored, r.removed), (2, 2));
    let ids: Vec<String> = store.teams_users().await.unwrap().into_iter().map(|u| u.id.to_string()).collect();
    assert_eq!(ids, ["u2", "u4"]);
    assert_eq!(store.teams_user(&TeamsUserId::parse("u4").unwrap()).await.unwrap().unwrap().display_name, "User u4");
    assert!(store.teams_user(&TeamsUserId::parse("u1").unwrap()).await.unwrap().is_none());
    let other = OtherDirectoryEntry {
        id: OtherDirectoryId::parse("p1").unwrap(),
        name: "Nora".into(),
        email: None,
        job_title: None,
        department: None,
        phone: Some("+1".into()),
        presence: None,
    };
    store.replace_other_directory(std::slice::from_ref(&other), t("2026-01-03T00:00:00Z")).await.unwrap();
    assert_eq!(store.other_directory().await.unwrap(), [other]);
    let sources = store.sources().await.unwrap();
    assert_eq!((sources.teams_count, sources.other_count), (2, 1));
    assert_eq!(sources.teams_synced_at, Some(t("2026-01-02T00:00:00Z")));

    // Connections, and sign-in states that work once.
    let ana = AgentId::parse("ana").unwrap();
    assert!(store.connection(&ana).await.unwrap().is_none());
    let c = TeamsConnection::new(ana.clone(), ConnectionStatus::Connected, t("2026-01-01T00:00:00Z"));
    store.put_connection(&c).await.unwrap();
    assert_eq!(store.connection(&ana).await.unwrap(), Some(c));
    let pending = PendingSignIn {
        state_hash: "ab".repeat(32),
        agent: ana.clone(),
        code_verifier: "v".repeat(43),
        expires_at: Utc::now() + Duration::minutes(10),
    };
    store.put_pending_sign_in(&pending).await.unwrap();
    assert_eq!(store.take_pending_sign_in(&pending.state_hash).await.unwrap().unwrap().agent, ana);
    assert!(store.take_pending_sign_in(&pending.state_hash).await.unwrap().is_none());

    // Chats and subscriptions.
    let mut chat =
        TeamsChat::new(ana.clone(), TeamsUserId::parse("u2").unwrap(), "User u2".into(), t("2026-01-01T00:00:00Z"));
    store.put_chat(&chat).await.unwrap();
    chat.open(t("2026-01-01T10:00:00Z"));
    store.put_chat(&chat).await.unwrap();
    assert_eq!(store.chat(&chat.id).await.unwrap(), Some(chat.clone()));
    assert_eq!(store.agent_chats(&ana).await.unwrap(), [chat.clone()]);
    assert!(store.agent_chats(&AgentId::parse("ben").unwrap()).await.unwrap().is_empty());
    for (id, hours) in [("s-late", 48), ("s-soon", 2), ("s-mid", 20)] {
        store
            .put_subscription(&ChatSubscription {
                id: SubscriptionId::parse(id).unwrap(),
                chat: chat.id.clone(),
                agent: ana.clone(),
                client_state_hash: "00".repeat(32),
                expires_at: Utc::now() + Duration::hours(hours),
            })
            .await
            .unwrap();
    }
    let due: Vec<String> = store
        .subscriptions_expiring(Utc::now() + Duration::hours(24), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(due, ["s-soon", "s-mid"]);
    store.delete_subscription(&SubscriptionId::parse("s-soon").unwrap()).await.unwrap();
    assert!(store.subscription(&SubscriptionId::parse("s-soon").unwrap()).await.unwrap().is_none());
    assert!(store.subscription(&SubscriptionId::parse("s-mid").unwrap()).await.unwrap().is_some());

    // Entries: new, the same again, an older read, a newer change.
    let first =
        match store.upsert_entry(&entry(&chat.id, "ana", "1000", "hello", "2026-01-01T10:00:00Z")).await.unwrap() {
            Upserted::Changed(e) => *e,
            other => panic!("{other:?}"),
        };
    assert!(first.seq > 0);
    assert_eq!(
        store.upsert_entry(&entry(&chat.id, "ana", "1000", "hello", "2026-01-01T10:00:00Z")).await.unwrap(),
        Upserted::Unchanged
    );
    let edited = entry(&chat.id, "ana", "1000", "hello, edited", "2026-01-01T10:05:00Z");
    let stored = match store.upsert_entry(&edited).await.unwrap() {
        Upserted::Changed(e) => *e,
        other => panic!("{other:?}"),
    };
    assert!(stored.seq > first.seq);
    let stale = entry(&chat.id, "ana", "1000", "hello from an old read", "2026-01-01T10:01:00Z");
    assert_eq!(store.upsert_entry(&stale).await.unwrap(), Upserted::Unchanged);
    assert_eq!(
        store.message_entries(&chat.id, &GraphMessageId::parse("1000").unwrap()).await.unwrap()[0].content,
        "hello, edited"
    );
    // Each entry once, as it is now, in change order.
    let changes = store.changes(&ana, None, 0, 100).await.unwrap();
    assert_eq!(changes.iter().map(|e| (e.key.as_str(), e.seq)).collect::<Vec<_>>(), [("1000", stored.seq)]);
    assert!(store.changes(&ana, None, stored.seq, 100).await.unwrap().is_empty());

    // Concurrent changes of one agent get distinct seqs, in the order they committed.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        let id = chat.id.clone();
        tasks.push(tokio::spawn(async move {
            match store
                .upsert_entry(&entry(&id, "ana", &format!("{}", 2000 + i), "x", "2026-01-01T11:00:00Z"))
                .await
                .unwrap()
            {
                Upserted::Changed(e) => e.seq,
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 20, "every change its own seq");
    let changes = store.changes(&ana, Some(&chat.id), stored.seq, 100).await.unwrap();
    assert_eq!(changes.len(), 20);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.changes(&ana, Some(&chat.id), stored.seq, 5).await.unwrap().len(), 5);
    let other_chat = ChatId::parse("chat-ffffffffffffffff").unwrap();
    assert!(store.changes(&ana, Some(&other_chat), 0, 100).await.unwrap().is_empty());
    // The chat's newest entries, oldest first.
    let newest = store.chat_entries(&chat.id, 3).await.unwrap();
    assert_eq!(newest.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["2017", "2018", "2019"]);
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    contract(Arc::new(EmbeddedTeamsStore::open(&backend).unwrap())).await;
}

#[tokio::test]
async fn the_dynamodb_store_keeps_the_contract() {
    let Some(moto) = moto().await else { return };
    let table = unique_name("teams");
    moto.create_table(&table).await;
    contract(Arc::new(DynamoTeamsStore::new(moto.dynamodb.clone(), &table))).await;
}
