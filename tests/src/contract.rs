//! The contract every backend must keep: the same scenarios run on the embedded backend and on
//! AWS (moto), so "works locally" means "works on AWS".

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mailroom::app::ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::ids::{EmailAddress, Fingerprint, InteractionId, MessageId, RawMailKey};
use mailroom::domain::interaction::{Interaction, StoredMessage};
use mailroom::domain::journal::{Disposition, JournalEntry, Source};
use mailroom::domain::routing::RoutingRequest;
use mailroom::domain::threading::ThreadCandidate;
use mailroom::ports::{
    BackendError, BackendResult, FingerprintClaim, IngestStore, RawMailStore, ReceivedWork, WorkQueue,
};
use mailroom::usecases::dead_letters;
use mailroom::usecases::ingest::{InboundEmail, IngestOutcome, IngestService};

/// One isolated set of backend resources.
#[derive(Clone)]
pub struct Backend {
    pub raw: Arc<dyn RawMailStore>,
    pub store: Arc<dyn IngestStore>,
    pub routing: Arc<dyn WorkQueue>,
}

#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// Fresh, empty resources that no other test uses.
    async fn fresh(&self) -> Backend;
    /// A fresh queue and the dead-letter queue its messages move to after `max_receives` receives.
    async fn queue_with_dlq(&self, max_receives: u32) -> (Arc<dyn WorkQueue>, Arc<dyn WorkQueue>);
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(crate::fixtures::email_dir().join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

fn service(b: &Backend) -> IngestService {
    service_with(b, AppConfig::demo())
}

fn service_with(b: &Backend, config: AppConfig) -> IngestService {
    ingest_service(&config, b.raw.clone(), b.store.clone(), b.routing.clone()).expect("valid config")
}

async fn ingest(s: &IngestService, raw: Vec<u8>) -> IngestOutcome {
    s.ingest(InboundEmail::new(raw, Source::Replay)).await.expect("ingest succeeds")
}

async fn drain(queue: &dyn WorkQueue) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let got = queue.receive(10, Duration::from_secs(30), Duration::ZERO).await.expect("receive");
        if got.is_empty() {
            return out;
        }
        for w in got {
            queue.delete(&w.receipt).await.expect("delete");
            out.push(w.body);
        }
    }
}

/// A conversation: new, threaded, a stranger kept apart, a reused Message-ID, and the same
/// message arriving again through another route.
pub async fn threading_and_duplicates(f: &dyn BackendFactory) {
    let b = f.fresh().await;
    let s = service(&b);
    let first = ingest(&s, fixture("thread/01-original.eml")).await;
    assert_eq!(first.disposition(), Disposition::New, "{}", first.reason());
    let alice = first.entry.interaction_id.clone().expect("interaction");

    let reply = ingest(&s, fixture("thread/02-reply-in-reply-to.eml")).await;
    assert_eq!(reply.disposition(), Disposition::Threaded, "{}", reply.reason());
    assert_eq!(reply.entry.interaction_id.as_ref(), Some(&alice));
    assert!(reply.reason().contains("In-Reply-To"), "{}", reply.reason());

    let stranger = ingest(&s, fixture("thread/03-stranger-quotes.eml")).await;
    assert_eq!(stranger.disposition(), Disposition::New, "{}", stranger.reason());
    assert_ne!(stranger.entry.interaction_id.as_ref(), Some(&alice));
    assert!(stranger.reason().contains("does not take part"), "{}", stranger.reason());

    let refs = ingest(&s, fixture("thread/04-references-only.eml")).await;
    assert_eq!(refs.disposition(), Disposition::Threaded);
    assert_eq!(refs.entry.interaction_id.as_ref(), Some(&alice));

    let reused = ingest(&s, fixture("thread/05-reused-message-id.eml")).await;
    assert_ne!(reused.disposition(), Disposition::Duplicate, "a reused Message-ID is not a duplicate");

    let again = ingest(&s, fixture("thread/06-exact-duplicate.eml")).await;
    assert_eq!(again.disposition(), Disposition::Duplicate, "{}", again.reason());
    assert!(!again.repeat_delivery, "different bytes: a journal entry of its own");
    assert_eq!(again.entry.interaction_id.as_ref(), Some(&alice));

    // The very same bytes once more: a repeat delivery, nothing new recorded.
    let repeat = ingest(&s, fixture("thread/01-original.eml")).await;
    assert!(repeat.repeat_delivery);
    assert_eq!(repeat.disposition(), Disposition::Duplicate);

    let transcript = b.store.interaction_messages(&alice).await.expect("transcript");
    assert!(transcript.len() >= 3, "original, reply, references-only reply: {}", transcript.len());
    let interaction = b.store.interaction(&alice).await.expect("read").expect("exists");
    assert_eq!(interaction.message_count as usize, transcript.len());

    let routed = drain(b.routing.as_ref()).await;
    let ids: Vec<InteractionId> = routed
        .iter()
        .filter_map(|body| match RoutingRequest::from_body(body).expect("routing request") {
            RoutingRequest::InteractionQueued { interaction_id, .. } => Some(interaction_id),
            _ => None,
        })
        .collect();
    assert!(ids.contains(&alice));
    assert!(ids.contains(stranger.entry.interaction_id.as_ref().expect("stranger interaction")));
}

/// Every unhandleable input is kept and journaled with a reason.
pub async fn quarantine_keeps_everything(f: &dyn BackendFactory) {
    let b = f.fresh().await;
    let mut config = AppConfig::demo();
    config.ingest.max_message_bytes = 2_000;
    let s = service_with(&b, config);
    for (rel, words) in [
        ("quarantine/not-an-email-png.eml", "not an email"),
        ("quarantine/empty.eml", "not an email"),
        ("quarantine/no-from-header.eml", "no sender"),
    ] {
        let raw = fixture(rel);
        let out = ingest(&s, raw.clone()).await;
        assert_eq!(out.disposition(), Disposition::Quarantined, "{rel}");
        assert!(out.reason().contains(words), "{rel}: {}", out.reason());
        let kept = b.raw.get(&out.entry.raw_key).await.expect("get").expect("raw kept");
        assert_eq!(kept, raw);
    }
    let big = [fixture("new/billing-invoice-refund-question.eml"), vec![b'x'; 3_000]].concat();
    let out = ingest(&s, big).await;
    assert_eq!(out.disposition(), Disposition::Quarantined);
    assert!(out.reason().contains("size limit"), "{}", out.reason());
    let journal = b.store.journal_recent(100).await.expect("journal");
    assert_eq!(journal.len(), 4);
    assert!(journal.iter().all(|e| e.is_final() && e.disposition == Some(Disposition::Quarantined)));
}

/// Fails the first `failures` calls of one operation, then behaves.
struct Flaky<T> {
    inner: T,
    failures: AtomicUsize,
}

impl<T> Flaky<T> {
    fn new(inner: T, failures: usize) -> Self {
        Self { inner, failures: AtomicUsize::new(failures) }
    }

    fn trip(&self, operation: &'static str) -> BackendResult<()> {
        if self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(BackendError::transient(operation, "injected failure"));
        }
        Ok(())
    }
}

#[async_trait]
impl WorkQueue for Flaky<Arc<dyn WorkQueue>> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn send(&self, body: &str, delay: Duration) -> BackendResult<()> {
        self.trip("send work")?;
        self.inner.send(body, delay).await
    }
    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> BackendResult<Vec<ReceivedWork>> {
        self.inner.receive(max, visibility, wait).await
    }
    async fn delete(&self, receipt: &str) -> BackendResult<()> {
        self.inner.delete(receipt).await
    }
    async fn release(&self, receipt: &str, delay: Duration) -> BackendResult<()> {
        self.inner.release(receipt, delay).await
    }
    async fn depth(&self) -> BackendResult<u64> {
        self.inner.depth().await
    }
}

#[async_trait]
impl IngestStore for Flaky<Arc<dyn IngestStore>> {
    async fn journal_get(&self, raw: &RawMailKey) -> BackendResult<Option<JournalEntry>> {
        self.inner.journal_get(raw).await
    }
    async fn journal_begin(&self, entry: &JournalEntry) -> BackendResult<()> {
        self.inner.journal_begin(entry).await
    }
    async fn journal_finalize(&self, entry: &JournalEntry) -> BackendResult<()> {
        self.trip("finalize journal")?;
        self.inner.journal_finalize(entry).await
    }
    async fn journal_recent(&self, limit: usize) -> BackendResult<Vec<JournalEntry>> {
        self.inner.journal_recent(limit).await
    }
    async fn claim_fingerprint(&self, fingerprint: &Fingerprint, raw: &RawMailKey) -> BackendResult<FingerprintClaim> {
        self.inner.claim_fingerprint(fingerprint, raw).await
    }
    async fn message(&self, fingerprint: &Fingerprint) -> BackendResult<Option<StoredMessage>> {
        self.inner.message(fingerprint).await
    }
    async fn messages_with_ids(&self, ids: &[MessageId]) -> BackendResult<Vec<ThreadCandidate>> {
        self.inner.messages_with_ids(ids).await
    }
    async fn interaction(&self, id: &InteractionId) -> BackendResult<Option<Interaction>> {
        self.inner.interaction(id).await
    }
    async fn interaction_messages(&self, id: &InteractionId) -> BackendResult<Vec<StoredMessage>> {
        self.inner.interaction_messages(id).await
    }
    async fn create_interaction(&self, interaction: &Interaction, first: &StoredMessage) -> BackendResult<()> {
        self.inner.create_interaction(interaction, first).await
    }
    async fn append_message(
        &self,
        message: &StoredMessage,
        new_participants: &[EmailAddress],
        requeue: bool,
    ) -> BackendResult<Interaction> {
        self.inner.append_message(message, new_participants, requeue).await
    }
}

/// A crash between persisting and enqueueing, or before the journal is final, is finished by the
/// retry: one interaction, one message, the original decision (`new`, not `threaded` into itself).
pub async fn retry_after_a_crash_finishes_the_same_decision(f: &dyn BackendFactory) {
    for crash_at in ["enqueue", "journal"] {
        let b = f.fresh().await;
        let flaky_queue: Arc<dyn WorkQueue> =
            Arc::new(Flaky::new(b.routing.clone(), usize::from(crash_at == "enqueue")));
        let flaky_store: Arc<dyn IngestStore> =
            Arc::new(Flaky::new(b.store.clone(), usize::from(crash_at == "journal")));
        let s = ingest_service(&AppConfig::demo(), b.raw.clone(), flaky_store, flaky_queue).expect("config");
        let raw = fixture("thread/02-reply-in-reply-to.eml");
        let err = s.ingest(InboundEmail::new(raw.clone(), Source::Replay)).await.expect_err("injected failure");
        assert!(err.is_transient());
        let pending = b.store.journal_recent(10).await.expect("journal");
        assert_eq!(pending.len(), 1);
        assert!(!pending[0].is_final(), "{crash_at}: left pending for the retry");

        let out = ingest(&s, raw.clone()).await;
        assert_eq!(out.disposition(), Disposition::New, "{crash_at}: {}", out.reason());
        let id = out.entry.interaction_id.clone().expect("interaction");
        assert_eq!(b.store.interaction_messages(&id).await.expect("transcript").len(), 1, "{crash_at}");
        assert_eq!(b.store.interaction(&id).await.expect("read").expect("exists").message_count, 1);
        let routed = drain(b.routing.as_ref()).await;
        assert!(!routed.is_empty(), "{crash_at}: the interaction was enqueued for routing");
        assert!(ingest(&s, raw).await.repeat_delivery);
    }
}

/// The same email delivered several times at once (SES retry racing an SQS redelivery) is
/// recorded once.
pub async fn concurrent_deliveries_record_once(f: &dyn BackendFactory) {
    let b = f.fresh().await;
    let s = service(&b);
    let raw = fixture("new/billing-invoice-refund-question.eml");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move { s.ingest(InboundEmail::new(raw, Source::Replay)).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let out = t.await.expect("task").expect("ingest");
        ids.push(out.entry.interaction_id.clone().expect("interaction"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one interaction for all deliveries");
    assert_eq!(b.store.interaction_messages(&ids[0]).await.expect("transcript").len(), 1);
    let journal = b.store.journal_recent(10).await.expect("journal");
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].disposition, Some(Disposition::New));
}

/// At-least-once delivery with a visibility timeout: invisible while in flight, redelivered when
/// not deleted, gone when deleted.
pub async fn queue_visibility_and_redelivery(f: &dyn BackendFactory) {
    let (queue, _dlq) = f.queue_with_dlq(5).await;
    queue.send("one", Duration::ZERO).await.expect("send");
    let got = queue.receive(10, Duration::from_secs(1), Duration::from_secs(1)).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "one");
    assert_eq!(got[0].receive_count, 1);
    assert!(queue.receive(10, Duration::from_secs(1), Duration::ZERO).await.expect("receive").is_empty(), "in flight");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let again = queue.receive(10, Duration::from_secs(30), Duration::from_secs(1)).await.expect("receive");
    assert_eq!(again.len(), 1, "redelivered after the visibility timeout");
    assert_eq!(again[0].receive_count, 2);
    queue.delete(&again[0].receipt).await.expect("delete");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(queue.receive(10, Duration::from_secs(1), Duration::ZERO).await.expect("receive").is_empty());

    queue.send("two", Duration::ZERO).await.expect("send");
    let got = queue.receive(1, Duration::from_secs(30), Duration::from_secs(1)).await.expect("receive");
    queue.release(&got[0].receipt, Duration::ZERO).await.expect("release");
    let back = queue.receive(1, Duration::from_secs(30), Duration::from_secs(2)).await.expect("receive");
    assert_eq!(back.len(), 1, "released work is delivered again");
    queue.delete(&back[0].receipt).await.expect("delete");
}

/// Work received too often without success is parked in the dead-letter queue, and can be
/// replayed from there.
pub async fn dead_letters_after_max_receives_and_replay(f: &dyn BackendFactory) {
    let (queue, dlq) = f.queue_with_dlq(2).await;
    queue.send("poison", Duration::ZERO).await.expect("send");
    for attempt in 1..=2 {
        let got = queue.receive(1, Duration::from_secs(1), Duration::from_secs(2)).await.expect("receive");
        assert_eq!(got.len(), 1, "attempt {attempt}");
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    assert!(
        queue.receive(1, Duration::from_secs(1), Duration::from_secs(1)).await.expect("receive").is_empty(),
        "parked"
    );
    let parked = dead_letters::peek(dlq.as_ref(), 10).await.expect("peek");
    assert_eq!(parked, vec!["poison".to_string()]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let moved = dead_letters::replay(dlq.as_ref(), queue.as_ref(), 10).await.expect("replay");
    assert_eq!(moved, 1);
    let back = queue.receive(1, Duration::from_secs(30), Duration::from_secs(2)).await.expect("receive");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].body, "poison");
}
