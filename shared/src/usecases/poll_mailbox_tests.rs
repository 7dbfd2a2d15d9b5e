//! The poll use case against in-memory mail servers that drop the connection at chosen points,
//! and an ingest that fails at chosen points: whatever happens, every message ends up ingested
//! exactly once and acknowledged on the server.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::adapters::channels::MemoryChannelStore;
use crate::adapters::memory::{MemoryIngestStore, MemoryRawStore, MemoryWorkQueue};
use crate::adapters::secrets::MemorySecretStore;
use crate::app::ingest_service;
use crate::config::{AppConfig, ChannelSet};
use crate::domain::mailbox::{HealthStatus, MailHost, MailProtocol, MailboxUser, OAuth2Client, SecretName};
use crate::ports::identity::AccessToken;
use crate::ports::mailbox::{FetchedMessage, IdleOutcome, ImapInbox};
use crate::ports::{BackendResult, IngestStore, RawMailStore, SystemClock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Select,
    Fetch,
    MarkSeen,
    Delete,
    Uidl,
    Retr,
    Dele,
    Quit,
}

#[derive(Clone)]
struct Msg {
    uid: u32,
    raw: Vec<u8>,
    seen: bool,
    deleted: bool,
}

struct Server {
    uid_validity: u32,
    next_uid: u32,
    messages: Vec<Msg>,
    password: String,
    /// The connection drops on the n-th call of this operation (counted over all sessions).
    drop_at: Option<(Op, usize)>,
    calls: HashMap<Op, usize>,
    connects: usize,
}

impl Server {
    fn new(count: u32) -> Arc<Mutex<Self>> {
        let mut s = Server {
            uid_validity: 7,
            next_uid: 1,
            messages: Vec::new(),
            password: "right".into(),
            drop_at: None,
            calls: HashMap::new(),
            connects: 0,
        };
        for _ in 0..count {
            s.append();
        }
        Arc::new(Mutex::new(s))
    }

    fn append(&mut self) -> u32 {
        let uid = self.next_uid;
        self.next_uid += 1;
        let raw = format!(
            "From: Customer {uid} <c{uid}@example.org>\r\nTo: support@example.com\r\nSubject: Question {uid}\r\n\
             Message-ID: <q{uid}@example.org>\r\nDate: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\nHello, question number {uid}.\r\n"
        );
        self.messages.push(Msg { uid, raw: raw.into_bytes(), seen: false, deleted: false });
        uid
    }

    /// UIDVALIDITY changes and every message gets a new UID, as after a server rebuild.
    fn renumber(&mut self) {
        self.uid_validity += 1;
        self.next_uid = 1;
        for m in &mut self.messages {
            m.uid = self.next_uid;
            self.next_uid += 1;
        }
    }

    fn unseen(&self) -> usize {
        self.messages.iter().filter(|m| !m.seen).count()
    }
}

struct Session {
    server: Arc<Mutex<Server>>,
    dead: bool,
    /// POP3 numbers marked for deletion in this session (1-based into the listing).
    pending: Vec<u32>,
    listing: Vec<u32>,
}

impl Session {
    fn op(&mut self, op: Op) -> Result<std::sync::MutexGuard<'_, Server>, MailboxError> {
        if self.dead {
            return Err(MailboxError::Closed);
        }
        let mut server = self.server.lock().unwrap();
        let n = {
            let n = server.calls.entry(op).or_default();
            *n += 1;
            *n
        };
        if server.drop_at == Some((op, n)) {
            server.drop_at = None;
            self.dead = true;
            return Err(MailboxError::Closed);
        }
        Ok(server)
    }
}

#[async_trait]
impl ImapSession for Session {
    async fn select_inbox(&mut self) -> Result<ImapInbox, MailboxError> {
        let s = self.op(Op::Select)?;
        Ok(ImapInbox { uid_validity: s.uid_validity, uid_next: s.next_uid, exists: s.messages.len() as u32 })
    }
    async fn uids_after(&mut self, after: u32) -> Result<Vec<u32>, MailboxError> {
        let s = self.op(Op::Select)?;
        Ok(s.messages.iter().map(|m| m.uid).filter(|u| *u > after).collect())
    }
    async fn seen_between(&mut self, from: u32, through: u32) -> Result<Vec<u32>, MailboxError> {
        let s = self.op(Op::Select)?;
        Ok(s.messages.iter().filter(|m| m.seen && (from..=through).contains(&m.uid)).map(|m| m.uid).collect())
    }
    async fn deleted_through(&mut self, through: u32) -> Result<Vec<u32>, MailboxError> {
        let s = self.op(Op::Select)?;
        Ok(s.messages.iter().filter(|m| m.deleted && m.uid <= through).map(|m| m.uid).collect())
    }
    async fn sizes(&mut self, uids: &[u32]) -> Result<Vec<(u32, u64)>, MailboxError> {
        let s = self.op(Op::Select)?;
        Ok(s.messages.iter().filter(|m| uids.contains(&m.uid)).map(|m| (m.uid, m.raw.len() as u64)).collect())
    }
    async fn fetch(&mut self, uids: &[u32]) -> Result<Vec<FetchedMessage>, MailboxError> {
        let s = self.op(Op::Fetch)?;
        Ok(s.messages
            .iter()
            .filter(|m| uids.contains(&m.uid))
            .map(|m| FetchedMessage { uid: m.uid, raw: m.raw.clone() })
            .collect())
    }
    async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), MailboxError> {
        let mut s = self.op(Op::MarkSeen)?;
        s.messages.iter_mut().filter(|m| uids.contains(&m.uid)).for_each(|m| m.seen = true);
        Ok(())
    }
    async fn delete(&mut self, uids: &[u32]) -> Result<(), MailboxError> {
        if self.dead {
            return Err(MailboxError::Closed);
        }
        {
            // Flagging happens; the expunge is what the drop interrupts.
            let mut s = self.server.lock().unwrap();
            s.messages.iter_mut().filter(|m| uids.contains(&m.uid)).for_each(|m| m.deleted = true);
        }
        let mut s = self.op(Op::Delete)?;
        s.messages.retain(|m| !(m.deleted && uids.contains(&m.uid)));
        Ok(())
    }
    fn supports_idle(&self) -> bool {
        true
    }
    async fn idle(
        &mut self,
        timeout: Duration,
        _stop: &mut watch::Receiver<bool>,
    ) -> Result<IdleOutcome, MailboxError> {
        tokio::time::sleep(timeout).await;
        Ok(IdleOutcome::TimedOut)
    }
    async fn logout(&mut self) {}
}

fn uidl(uid: u32, validity: u32) -> String {
    format!("{uid:08X}{validity:08X}")
}

#[async_trait]
impl Pop3Session for Session {
    async fn stat(&mut self) -> Result<(u32, u64), MailboxError> {
        let s = self.op(Op::Uidl)?;
        Ok((s.messages.len() as u32, 0))
    }
    async fn uidl(&mut self) -> Result<Vec<(u32, String)>, MailboxError> {
        let listing: Vec<u32>;
        let out = {
            let s = self.op(Op::Uidl)?;
            listing = s.messages.iter().map(|m| m.uid).collect();
            s.messages.iter().enumerate().map(|(i, m)| (i as u32 + 1, uidl(m.uid, s.uid_validity))).collect()
        };
        self.listing = listing;
        Ok(out)
    }
    async fn list(&mut self) -> Result<Vec<(u32, u64)>, MailboxError> {
        let s = self.op(Op::Uidl)?;
        Ok(s.messages.iter().enumerate().map(|(i, m)| (i as u32 + 1, m.raw.len() as u64)).collect())
    }
    async fn retr(&mut self, numbers: &[u32]) -> Result<Vec<Vec<u8>>, MailboxError> {
        let mut out = Vec::new();
        for number in numbers {
            let uid = self.listing[*number as usize - 1];
            let mut s = self.op(Op::Retr)?;
            let m = s.messages.iter_mut().find(|m| m.uid == uid).expect("listed");
            m.seen = true;
            out.push(m.raw.clone());
        }
        Ok(out)
    }
    async fn dele(&mut self, numbers: &[u32]) -> Result<(), MailboxError> {
        for number in numbers {
            drop(self.op(Op::Dele)?);
            self.pending.push(self.listing[*number as usize - 1]);
        }
        Ok(())
    }
    async fn quit(&mut self) -> Result<(), MailboxError> {
        let pending = std::mem::take(&mut self.pending);
        let mut s = self.op(Op::Quit)?;
        s.messages.retain(|m| !pending.contains(&m.uid));
        Ok(())
    }
}

struct Connector {
    servers: HashMap<String, Arc<Mutex<Server>>>,
}

#[async_trait]
impl MailboxConnector for Connector {
    async fn connect(
        &self,
        endpoint: &MailEndpoint,
        credentials: &MailboxCredentials,
    ) -> Result<(MailboxSession, ConnectionInfo), MailboxError> {
        let server = self.servers.get(endpoint.host.as_str()).expect("server").clone();
        {
            let mut s = server.lock().unwrap();
            s.connects += 1;
            let ok = match credentials {
                MailboxCredentials::Password { password, .. } => password.expose_secret() == s.password,
                MailboxCredentials::OAuth2 { token, .. } => token.expose() == "good-token",
            };
            if !ok {
                return Err(MailboxError::AuthFailed {
                    detail: "[AUTHENTICATIONFAILED] Authentication failed.".into(),
                });
            }
        }
        let session = Session { server, dead: false, pending: Vec::new(), listing: Vec::new() };
        let info = ConnectionInfo { tls: Some("TLSv1.3".into()), address: "127.0.0.1".parse().unwrap() };
        Ok(match endpoint.protocol.family() {
            ProtocolFamily::Imap => (MailboxSession::Imap(Box::new(session)), info),
            ProtocolFamily::Pop3 => (MailboxSession::Pop3(Box::new(session)), info),
        })
    }
}

struct Loopback;

#[async_trait]
impl HostResolver for Loopback {
    async fn resolve(&self, _: &MailHost, _: u16) -> Result<Vec<IpAddr>, MailboxError> {
        Ok(vec!["127.0.0.1".parse().unwrap()])
    }
}

/// Tokens: a list of answers, then "good-token" forever.
struct Tokens {
    answers: Mutex<Vec<Result<&'static str, &'static str>>>,
    invalidated: AtomicUsize,
}

#[async_trait]
impl AccessTokenSource for Tokens {
    async fn access_token(&self) -> Result<AccessToken, TokenError> {
        let next = { self.answers.lock().unwrap().pop() };
        match next.unwrap_or(Ok("good-token")) {
            Ok(t) => Ok(AccessToken::new(SecretString::from(t), Utc::now() + chrono::Duration::hours(1))),
            Err(code) => Err(TokenError::Refused {
                code: code.into(),
                description: "AADSTS7000215: Invalid client secret provided.".into(),
            }),
        }
    }
    fn invalidate(&self) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
    }
}

struct OneTokenSource(Arc<Tokens>);

impl TokenSources for OneTokenSource {
    fn source(&self, _: &OAuth2Client, _: SecretString) -> Arc<dyn AccessTokenSource> {
        self.0.clone()
    }
}

/// A raw store that fails the n-th put (ingest's very first step).
struct FlakyRaw {
    inner: MemoryRawStore,
    fail_at: Mutex<Option<usize>>,
    puts: AtomicUsize,
}

#[async_trait]
impl RawMailStore for FlakyRaw {
    async fn put(&self, raw: &[u8]) -> BackendResult<crate::domain::ids::RawMailKey> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst) + 1;
        if *self.fail_at.lock().unwrap() == Some(n) {
            return Err(BackendError::transient("store raw mail", "disk full"));
        }
        self.inner.put(raw).await
    }
    async fn get(&self, key: &crate::domain::ids::RawMailKey) -> BackendResult<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
}

struct Fixture {
    poller: Arc<MailboxPoller>,
    store: Arc<MemoryIngestStore>,
    state: Arc<MemoryChannelStore>,
    raw: Arc<FlakyRaw>,
    tokens: Arc<Tokens>,
}

fn channel(name: &str, host: &str, protocol: MailProtocol, after_fetch: AfterFetch, oauth: bool) -> Channel {
    let mut c = AppConfig::demo().channels[0].clone();
    c.name = ChannelName::parse(name).unwrap();
    c.address = crate::domain::ids::EmailAddress::parse(&format!("{name}@example.com")).unwrap();
    let auth = if oauth {
        MailboxAuth::Oauth2(OAuth2Client {
            authority: "http://127.0.0.1:1".into(),
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: SecretRef::Stored(SecretName::parse("s").unwrap()),
        })
    } else {
        MailboxAuth::Normal { password: SecretRef::Stored(SecretName::for_channel(&c.name, "password")) }
    };
    c.mailbox = Some(IncomingMailbox {
        protocol,
        host: MailHost::parse(host).unwrap(),
        port: None,
        user: MailboxUser::parse("support").unwrap(),
        auth,
        after_fetch,
    });
    c
}

async fn fixture(channels: Vec<Channel>, servers: Vec<(&str, Arc<Mutex<Server>>)>, limits: PollLimits) -> Fixture {
    let store = Arc::new(MemoryIngestStore::default());
    let raw =
        Arc::new(FlakyRaw { inner: MemoryRawStore::default(), fail_at: Mutex::new(None), puts: AtomicUsize::new(0) });
    let mut ingest =
        ingest_service(&AppConfig::demo(), raw.clone(), store.clone(), Arc::new(MemoryWorkQueue::new("routing", 5)))
            .unwrap();
    let set = ChannelSet::from_channels(channels.clone()).unwrap();
    let directory = ChannelDirectory::fixed(set);
    ingest.channels = directory.clone();
    let secrets = Arc::new(MemorySecretStore::default());
    for c in &channels {
        secrets.put(&SecretName::for_channel(&c.name, "password"), &SecretString::from("right")).await.unwrap();
    }
    secrets.put(&SecretName::parse("s").unwrap(), &SecretString::from("client-secret")).await.unwrap();
    let tokens = Arc::new(Tokens { answers: Mutex::new(Vec::new()), invalidated: AtomicUsize::new(0) });
    let access = Arc::new(MailboxAccess::new(
        secrets,
        Arc::new(Connector { servers: servers.into_iter().map(|(h, s)| (h.to_owned(), s)).collect() }),
        Arc::new(Loopback),
        Arc::new(OneTokenSource(tokens.clone())),
        NetworkPolicy::LOCAL,
    ));
    let state = Arc::new(MemoryChannelStore::default());
    let poller = Arc::new(MailboxPoller::new(ingest, directory, state.clone(), access, limits, Arc::new(SystemClock)));
    Fixture { poller, store, state, raw, tokens }
}

fn limits() -> PollLimits {
    PollLimits { fetch_batch: 4, ..PollLimits::default() }
}

impl Fixture {
    async fn poll(&self, name: &str) -> PollReport {
        self.poller.poll_channel(&ChannelName::parse(name).unwrap()).await.unwrap()
    }

    /// Journal entries and interactions: each message once.
    async fn assert_each_once(&self, expected: usize) {
        let journal = self.store.journal_recent(100_000).await.unwrap();
        let keys: HashSet<_> = journal.iter().map(|e| e.raw_key.clone()).collect();
        assert_eq!(keys.len(), journal.len(), "no raw message journaled twice");
        assert_eq!(journal.len(), expected, "journal entries");
        let interactions: HashSet<_> = journal.iter().filter_map(|e| e.interaction_id.clone()).collect();
        assert_eq!(interactions.len(), expected, "one interaction per message");
        assert!(journal.iter().all(|e| e.is_final()), "every entry final");
    }

    async fn health(&self, name: &str) -> ChannelHealth {
        self.state.health(&ChannelName::parse(name).unwrap()).await.unwrap().unwrap()
    }
}

#[tokio::test]
async fn imap_takes_everything_once_in_batches_and_marks_it_seen() {
    let server = Server::new(10);
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::MarkSeen, false)],
        vec![("imap.test", server.clone())],
        limits(),
    )
    .await;
    // First contact takes unseen mail only: make two messages read already.
    server.lock().unwrap().messages[0].seen = true;
    server.lock().unwrap().messages[5].seen = true;
    let r = f.poll("support").await;
    assert!(matches!(r.outcome, PollOutcome::Done), "{:?}", r.outcome);
    assert_eq!((r.counts.fetched, r.counts.ingested, r.counts.acknowledged), (8, 8, 8));
    assert_eq!(server.lock().unwrap().unseen(), 0);
    f.assert_each_once(8).await;
    // New mail later is taken whatever its flags.
    let uid = server.lock().unwrap().append();
    server.lock().unwrap().messages.last_mut().unwrap().seen = true;
    let r = f.poll("support").await;
    assert_eq!(r.counts.ingested, 1, "UID {uid} arrived after first contact");
    f.assert_each_once(9).await;
    assert_eq!(f.health("support").await.status(), HealthStatus::Healthy);
}

#[tokio::test]
async fn a_connection_dropped_at_any_step_loses_and_duplicates_nothing() {
    for (op, n) in [(Op::Select, 1), (Op::Fetch, 2), (Op::MarkSeen, 1), (Op::MarkSeen, 2), (Op::Fetch, 3)] {
        let server = Server::new(10);
        let f = fixture(
            vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::MarkSeen, false)],
            vec![("imap.test", server.clone())],
            limits(),
        )
        .await;
        server.lock().unwrap().drop_at = Some((op, n));
        let r = f.poll("support").await;
        assert!(r.failed(), "drop at {op:?} #{n}");
        let h = f.health("support").await;
        assert_eq!((h.status(), h.consecutive_failures), (HealthStatus::Failing, 1));
        assert!(h.last_error.as_deref().unwrap().contains("closed the connection"), "{:?}", h.last_error);
        let r = f.poll("support").await;
        assert!(matches!(r.outcome, PollOutcome::Done), "{op:?} #{n}: {:?}", r.outcome);
        assert_eq!(server.lock().unwrap().unseen(), 0, "{op:?} #{n}: all acknowledged");
        f.assert_each_once(10).await;
        assert_eq!(f.health("support").await.status(), HealthStatus::Healthy);
    }
}

#[tokio::test]
async fn an_ingest_failure_stops_the_run_and_the_next_run_takes_the_rest() {
    let server = Server::new(10);
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::Delete, false)],
        vec![("imap.test", server.clone())],
        limits(),
    )
    .await;
    *f.raw.fail_at.lock().unwrap() = Some(6);
    let r = f.poll("support").await;
    assert!(r.failed());
    assert_eq!((r.counts.ingested, r.counts.acknowledged), (5, 5), "taken before the failure are deleted");
    assert_eq!(server.lock().unwrap().messages.len(), 5, "the failed one and the rest stay");
    assert!(f.health("support").await.last_error.unwrap().contains("could not be ingested"));
    let r = f.poll("support").await;
    assert_eq!((r.counts.ingested, r.counts.repeats), (5, 0));
    assert!(server.lock().unwrap().messages.is_empty());
    f.assert_each_once(10).await;
}

#[tokio::test]
async fn an_interrupted_delete_is_finished_by_the_next_run() {
    let server = Server::new(6);
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::Delete, false)],
        vec![("imap.test", server.clone())],
        limits(),
    )
    .await;
    server.lock().unwrap().drop_at = Some((Op::Delete, 1));
    assert!(f.poll("support").await.failed());
    assert_eq!(server.lock().unwrap().messages.iter().filter(|m| m.deleted).count(), 4, "flagged, not expunged");
    let r = f.poll("support").await;
    assert!(matches!(r.outcome, PollOutcome::Done), "{:?}", r.outcome);
    assert!(server.lock().unwrap().messages.is_empty());
    f.assert_each_once(6).await;
}

#[tokio::test]
async fn a_changed_uidvalidity_resyncs_and_ingest_absorbs_the_repeats() {
    let server = Server::new(5);
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::MarkSeen, false)],
        vec![("imap.test", server.clone())],
        limits(),
    )
    .await;
    f.poll("support").await;
    server.lock().unwrap().renumber();
    server.lock().unwrap().append();
    let r = f.poll("support").await;
    assert_eq!((r.counts.fetched, r.counts.ingested, r.counts.repeats), (6, 1, 5));
    f.assert_each_once(6).await;
    let r = f.poll("support").await;
    assert_eq!(r.counts.fetched, 0, "the resynced cursor holds");
}

#[tokio::test]
async fn runs_are_bounded_and_resume() {
    let server = Server::new(10);
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::MarkSeen, false)],
        vec![("imap.test", server.clone())],
        PollLimits { max_messages: 4, fetch_batch: 3, ..PollLimits::default() },
    )
    .await;
    let mut runs = 0;
    loop {
        let r = f.poll("support").await;
        runs += 1;
        assert!(r.counts.fetched <= 4);
        if !r.counts.more_waiting {
            break;
        }
    }
    assert_eq!(runs, 3);
    f.assert_each_once(10).await;
}

#[tokio::test]
async fn pop3_deletes_only_after_ingest_and_quit_commits() {
    let server = Server::new(6);
    let f = fixture(
        vec![channel("support", "pop.test", MailProtocol::Pop3s, AfterFetch::Delete, false)],
        vec![("pop.test", server.clone())],
        limits(),
    )
    .await;
    // The connection drops before QUIT: POP3 rolls the deletions back.
    server.lock().unwrap().drop_at = Some((Op::Quit, 1));
    assert!(f.poll("support").await.failed());
    assert_eq!(server.lock().unwrap().messages.len(), 6);
    let r = f.poll("support").await;
    assert!(matches!(r.outcome, PollOutcome::Done), "{:?}", r.outcome);
    assert_eq!((r.counts.fetched, r.counts.acknowledged), (0, 6), "deleted without downloading again");
    assert!(server.lock().unwrap().messages.is_empty());
    f.assert_each_once(6).await;
    assert!(
        f.state
            .pop3_taken(
                &ChannelName::parse("support").unwrap(),
                &channel("support", "pop.test", MailProtocol::Pop3s, AfterFetch::Delete, false).mailbox.unwrap().key()
            )
            .await
            .unwrap()
            .len()
            == 6
    );
    f.poll("support").await;
    assert!(
        f.state
            .pop3_taken(
                &ChannelName::parse("support").unwrap(),
                &channel("support", "pop.test", MailProtocol::Pop3s, AfterFetch::Delete, false).mailbox.unwrap().key()
            )
            .await
            .unwrap()
            .is_empty(),
        "UIDLs gone from the server are forgotten"
    );
}

#[tokio::test]
async fn pop3_leaving_mail_on_the_server_takes_each_message_once() {
    let server = Server::new(4);
    let f = fixture(
        vec![channel("support", "pop.test", MailProtocol::Pop3, AfterFetch::MarkSeen, false)],
        vec![("pop.test", server.clone())],
        limits(),
    )
    .await;
    server.lock().unwrap().drop_at = Some((Op::Retr, 3));
    assert!(f.poll("support").await.failed());
    f.poll("support").await;
    server.lock().unwrap().append();
    let r = f.poll("support").await;
    assert_eq!((r.counts.fetched, r.counts.ingested), (1, 1));
    assert_eq!(server.lock().unwrap().messages.len(), 5, "a copy stays on the server");
    f.assert_each_once(5).await;
}

#[tokio::test]
async fn one_failing_mailbox_does_not_stop_the_others() {
    let good = Server::new(3);
    let bad = Server::new(3);
    bad.lock().unwrap().password = "changed".into();
    let f = fixture(
        vec![
            channel("support", "good.test", MailProtocol::Imaps, AfterFetch::MarkSeen, false),
            channel("sales", "bad.test", MailProtocol::Pop3s, AfterFetch::MarkSeen, false),
        ],
        vec![("good.test", good.clone()), ("bad.test", bad)],
        limits(),
    )
    .await;
    let reports = f.poller.poll_all().await.unwrap();
    assert_eq!(reports.len(), 2);
    let by: HashMap<String, &PollReport> = reports.iter().map(|r| (r.channel.to_string(), r)).collect();
    assert!(matches!(by["support"].outcome, PollOutcome::Done));
    assert!(by["sales"].failed());
    let h = f.health("sales").await;
    assert_eq!(h.status(), HealthStatus::Failing);
    assert!(h.last_error.as_deref().unwrap().contains("refused the sign-in"), "{:?}", h.last_error);
    f.assert_each_once(3).await;
}

#[tokio::test]
async fn oauth2_refusal_marks_the_channel_unhealthy_at_once_and_a_refused_token_is_renewed() {
    let server = Server::new(2);
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::MarkSeen, true)],
        vec![("imap.test", server.clone())],
        limits(),
    )
    .await;
    // The token endpoint refuses: failing at once, with Microsoft's words.
    f.tokens.answers.lock().unwrap().push(Err("invalid_client"));
    let r = f.poll("support").await;
    assert!(r.failed());
    let h = f.health("support").await;
    assert_eq!((h.status(), h.consecutive_failures), (HealthStatus::Failing, 1));
    let words = h.last_error.unwrap();
    assert!(words.contains("Microsoft sign-in failed") && words.contains("AADSTS7000215"), "{words}");
    assert_eq!(server.lock().unwrap().connects, 0, "no connection without a token");
    // A cached token the server no longer accepts (expired, revoked): dropped and renewed once.
    f.tokens.answers.lock().unwrap().push(Ok("expired-token"));
    let r = f.poll("support").await;
    assert!(matches!(r.outcome, PollOutcome::Done), "{:?}", r.outcome);
    assert_eq!(f.tokens.invalidated.load(Ordering::SeqCst), 1);
    assert_eq!(f.health("support").await.status(), HealthStatus::Healthy);
    f.assert_each_once(2).await;
}

#[tokio::test]
async fn a_held_lease_skips_the_mailbox() {
    let server = Server::new(2);
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::MarkSeen, false)],
        vec![("imap.test", server.clone())],
        limits(),
    )
    .await;
    let name = ChannelName::parse("support").unwrap();
    let now = Utc::now();
    assert!(f.state.try_lease(&name, "someone-else", now, now + chrono::Duration::minutes(5)).await.unwrap());
    let r = f.poll("support").await;
    assert!(matches!(r.outcome, PollOutcome::Skipped(_)));
    assert_eq!(server.lock().unwrap().connects, 0);
    f.state.release_lease(&name, "someone-else").await.unwrap();
    assert!(matches!(f.poll("support").await.outcome, PollOutcome::Done));
}

#[tokio::test]
async fn the_idle_loop_takes_mail_as_it_arrives_and_stops_on_shutdown() {
    let server = Server::new(1);
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::MarkSeen, false)],
        vec![("imap.test", server.clone())],
        // The fake's IDLE just waits out the renewal time, then the loop polls again.
        PollLimits { idle_renew: Duration::from_millis(50), ..limits() },
    )
    .await;
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run_idle_loop(f.poller.clone(), rx));
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.lock().unwrap().append();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.lock().unwrap().unseen() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
    f.assert_each_once(2).await;
}

#[tokio::test]
async fn a_message_too_large_to_download_is_left_on_the_server_and_passed() {
    let server = Server::new(5);
    server.lock().unwrap().messages[2].raw.extend(std::iter::repeat_n(b'x', 10_000));
    let f = fixture(
        vec![channel("support", "imap.test", MailProtocol::Imaps, AfterFetch::Delete, false)],
        vec![("imap.test", server.clone())],
        PollLimits { max_download_bytes: 5_000, ..limits() },
    )
    .await;
    let r = f.poll("support").await;
    assert_eq!((r.counts.ingested, r.counts.too_large), (4, 1));
    let left: Vec<u32> = server.lock().unwrap().messages.iter().map(|m| m.uid).collect();
    assert_eq!(left, [3], "the large one stays, untouched");
    let r = f.poll("support").await;
    assert_eq!((r.counts.fetched, r.counts.too_large), (0, 0), "and is not looked at again");
    f.assert_each_once(4).await;
}
