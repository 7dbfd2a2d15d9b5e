//! The channel store, the mailbox state store and the secret store keep one contract on every
//! backend: in memory, embedded (SQLite), and AWS (DynamoDB and Secrets Manager on moto).

use std::sync::Arc;

use chrono::{Duration, Utc};
use mailroom::adapters::channels::{DynamoChannelStore, EmbeddedChannelStore, MemoryChannelStore};
use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::adapters::secrets::{EmbeddedSecretStore, MemorySecretStore, SecretsManagerStore};
use mailroom::config::AppConfig;
use mailroom::domain::ids::ChannelName;
use mailroom::domain::mailbox::{
    AfterFetch, ChannelHealth, ImapCursor, IncomingMailbox, MailHost, MailProtocol, MailboxAuth, MailboxUser,
    RunCounts, SecretName, SecretRef,
};
use mailroom::domain::outbound::{ChannelOutbound, HostName, OutgoingServer, SmtpLogin, SmtpSecurity, SmtpServer};
use mailroom::ports::BackendError;
use mailroom::ports::channels::{ChannelStore, StoredChannel};
use mailroom::ports::mailbox::MailboxStateStore;
use mailroom::ports::secrets::SecretStore;
use mailroom_tests::aws::{moto, unique_name};
use secrecy::{ExposeSecret, SecretString};

struct Stores {
    channels: Arc<dyn ChannelStore>,
    state: Arc<dyn MailboxStateStore>,
    secrets: Arc<dyn SecretStore>,
}

fn record(name: &str, position: u64) -> StoredChannel {
    let mut channel = AppConfig::demo().channels[0].clone();
    channel.name = ChannelName::parse(name).unwrap();
    channel.address = format!("{name}@example.com").try_into().unwrap();
    channel.mailbox = Some(IncomingMailbox {
        protocol: MailProtocol::Imaps,
        host: MailHost::parse("imap.example.com").unwrap(),
        port: None,
        user: MailboxUser::parse(&format!("{name}@example.com")).unwrap(),
        auth: MailboxAuth::Normal { password: SecretRef::Stored(SecretName::for_channel(&channel.name, "password")) },
        after_fetch: AfterFetch::Delete,
    });
    StoredChannel { channel, version: 0, position, seed: None, updated_at: Utc::now() }
}

async fn contract(s: Stores) {
    // Channels: create, conflicting create, optimistic update, order, refusal of secret values.
    // `sales` sends through its own SMTP server, `support` through the internal one.
    let mut sales = record("sales", 2);
    sales.channel.outbound = ChannelOutbound {
        server: OutgoingServer::Smtp {
            server: SmtpServer {
                host: HostName::parse("smtp.example.com").unwrap(),
                port: 465,
                security: SmtpSecurity::Tls,
            },
            login: Some(SmtpLogin::parse("sales-desk").unwrap()),
        },
        agent_accounts: true,
    };
    assert_eq!(s.channels.put(&sales, None).await.unwrap(), 1);
    assert!(matches!(s.channels.put(&sales, None).await, Err(BackendError::Conflict { .. })));
    let support = StoredChannel { seed: Some("abc".into()), ..record("support", 1) };
    s.channels.put(&support, None).await.unwrap();
    let mut changed = sales.clone();
    changed.channel.enabled = false;
    assert_eq!(s.channels.put(&changed, Some(1)).await.unwrap(), 2);
    assert!(matches!(s.channels.put(&changed, Some(1)).await, Err(BackendError::Conflict { .. })), "stale version");
    let got = s.channels.get(&sales.channel.name).await.unwrap().unwrap();
    assert_eq!((got.version, got.channel.enabled, &got.channel.mailbox), (2, false, &sales.channel.mailbox));
    assert_eq!(got.channel.outbound, sales.channel.outbound, "the outgoing side round-trips");
    let listed = s.channels.list().await.unwrap();
    assert!(listed.iter().all(|r| r.channel.outbound
        == if r.channel.name == sales.channel.name {
            sales.channel.outbound.clone()
        } else {
            ChannelOutbound::default()
        }));
    assert_eq!(s.channels.get(&support.channel.name).await.unwrap().unwrap().seed.as_deref(), Some("abc"));
    assert!(s.channels.get(&ChannelName::parse("nope").unwrap()).await.unwrap().is_none());
    let names: Vec<String> = s.channels.list().await.unwrap().iter().map(|r| r.channel.name.to_string()).collect();
    assert_eq!(names, ["support", "sales"], "ordered by position");
    let mut leaky = record("leaky", 3);
    if let Some(m) = &mut leaky.channel.mailbox {
        m.auth = MailboxAuth::Normal { password: SecretRef::Inline(SecretString::from("hunter2")) };
    }
    assert!(s.channels.put(&leaky, None).await.is_err(), "a secret value never lands in a channel record");

    // Cursors per mailbox key.
    let name = sales.channel.name.clone();
    let key = sales.channel.mailbox.as_ref().unwrap().key();
    let other_key = support.channel.mailbox.as_ref().unwrap().key();
    assert!(s.state.imap_cursor(&name, &key).await.unwrap().is_none());
    let cursor = ImapCursor { uid_validity: 9, last_uid: 41, unseen_only_through: 7 };
    s.state.save_imap_cursor(&name, &key, &cursor).await.unwrap();
    s.state.save_imap_cursor(&name, &key, &ImapCursor { last_uid: 42, ..cursor }).await.unwrap();
    assert_eq!(s.state.imap_cursor(&name, &key).await.unwrap().unwrap().last_uid, 42);
    assert!(s.state.imap_cursor(&name, &other_key).await.unwrap().is_none());

    // POP3 UIDLs.
    for u in ["0000000100000001", "0000000200000001", "0000000300000001"] {
        s.state.pop3_add(&name, &key, u).await.unwrap();
    }
    s.state.pop3_add(&name, &key, "0000000100000001").await.unwrap();
    s.state.pop3_forget(&name, &key, &["0000000200000001".into()]).await.unwrap();
    let taken = s.state.pop3_taken(&name, &key).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(taken.contains("0000000100000001") && taken.contains("0000000300000001"));
    assert!(s.state.pop3_taken(&name, &other_key).await.unwrap().is_empty());

    // Health.
    assert!(s.state.health(&name).await.unwrap().is_none());
    let mut health = ChannelHealth::default();
    health.record_failure(Utc::now(), "the server refused the sign-in", RunCounts::default());
    s.state.save_health(&name, &health).await.unwrap();
    assert_eq!(s.state.health(&name).await.unwrap().unwrap().consecutive_failures, 1);

    // The polling lease.
    let now = Utc::now();
    assert!(s.state.try_lease(&name, "a", now, now + Duration::minutes(5)).await.unwrap());
    assert!(!s.state.try_lease(&name, "b", now, now + Duration::minutes(5)).await.unwrap(), "held by a");
    assert!(s.state.try_lease(&name, "a", now, now + Duration::minutes(6)).await.unwrap(), "a renews");
    s.state.release_lease(&name, "b").await.unwrap();
    assert!(
        !s.state.try_lease(&name, "b", now, now + Duration::minutes(5)).await.unwrap(),
        "b cannot release a's lease"
    );
    let later = now + Duration::minutes(7);
    assert!(
        s.state.try_lease(&name, "b", later, later + Duration::minutes(5)).await.unwrap(),
        "expired leases are taken over"
    );
    s.state.release_lease(&name, "b").await.unwrap();
    assert!(s.state.try_lease(&name, "c", now, now + Duration::minutes(5)).await.unwrap(), "released");

    // Secrets.
    let secret = SecretName::for_channel(&name, "password");
    assert!(s.secrets.get(&secret).await.unwrap().is_none());
    s.secrets.put(&secret, &SecretString::from("first")).await.unwrap();
    s.secrets.put(&secret, &SecretString::from("second")).await.unwrap();
    assert_eq!(s.secrets.get(&secret).await.unwrap().unwrap().expose_secret(), "second");
    s.secrets.delete(&secret).await.unwrap();
    s.secrets.delete(&secret).await.unwrap();
    assert!(s.secrets.get(&secret).await.unwrap().is_none());
    s.secrets.put(&secret, &SecretString::from("again")).await.unwrap();
    assert_eq!(s.secrets.get(&secret).await.unwrap().unwrap().expose_secret(), "again", "re-created at once");
}

#[tokio::test]
async fn memory() {
    let store = Arc::new(MemoryChannelStore::default());
    contract(Stores { channels: store.clone(), state: store, secrets: Arc::new(MemorySecretStore::default()) }).await;
}

#[tokio::test]
async fn embedded() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let store = Arc::new(EmbeddedChannelStore::open(&backend).unwrap());
    contract(Stores {
        channels: store.clone(),
        state: store,
        secrets: Arc::new(EmbeddedSecretStore::open(&backend).unwrap()),
    })
    .await;
    // Reopening keeps everything.
    let again = EmbeddedChannelStore::open(&EmbeddedBackend::open(dir.path()).unwrap()).unwrap();
    assert_eq!(again.list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn dynamodb_and_secrets_manager() {
    let Some(moto) = moto().await else { return };
    let table = unique_name("mr-channels");
    moto.create_table(&table).await;
    let store = Arc::new(DynamoChannelStore::new(moto.dynamodb.clone(), &table));
    let secrets = Arc::new(SecretsManagerStore::from_sdk_config(&moto.config, &format!("mailroom/{table}/")));
    contract(Stores { channels: store.clone(), state: store, secrets }).await;
}
