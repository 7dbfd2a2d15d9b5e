//! The backend contract on the embedded (SQLite) backend.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom::adapters::embedded::{DEFAULT_MAX_RECEIVES, EmbeddedBackend};
use mailroom::app::embedded_ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::journal::Source;
use mailroom::ports::WorkQueue;
use mailroom::usecases::ingest::InboundEmail;
use mailroom_tests::contract::{self, Backend, BackendFactory};

/// Each `fresh()` gets its own data directory, kept alive for the whole test.
struct Embedded {
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl Embedded {
    fn new() -> Self {
        Self { dirs: std::sync::Mutex::new(Vec::new()) }
    }

    fn open(&self) -> EmbeddedBackend {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = EmbeddedBackend::open(dir.path()).expect("open");
        self.dirs.lock().expect("lock").push(dir);
        backend
    }
}

#[async_trait]
impl BackendFactory for Embedded {
    async fn fresh(&self) -> Backend {
        let b = Arc::new(self.open());
        Backend { raw: b.clone(), store: b.clone(), routing: Arc::new(b.queue("routing", DEFAULT_MAX_RECEIVES)) }
    }

    async fn queue_with_dlq(&self, max_receives: u32) -> (Arc<dyn WorkQueue>, Arc<dyn WorkQueue>) {
        let b = self.open();
        (Arc::new(b.queue("work", max_receives)), Arc::new(b.dead_letter_queue("work")))
    }
}

#[tokio::test]
async fn threading_and_duplicates() {
    contract::threading_and_duplicates(&Embedded::new()).await;
}

#[tokio::test]
async fn quarantine_keeps_everything() {
    contract::quarantine_keeps_everything(&Embedded::new()).await;
}

#[tokio::test]
async fn retry_after_a_crash_finishes_the_same_decision() {
    contract::retry_after_a_crash_finishes_the_same_decision(&Embedded::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_record_once() {
    contract::concurrent_deliveries_record_once(&Embedded::new()).await;
}

#[tokio::test]
async fn queue_visibility_and_redelivery() {
    contract::queue_visibility_and_redelivery(&Embedded::new()).await;
}

#[tokio::test]
async fn dead_letters_after_max_receives_and_replay() {
    contract::dead_letters_after_max_receives_and_replay(&Embedded::new()).await;
}

/// State survives a restart: a second process over the same data directory sees the first.
#[tokio::test]
async fn state_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = std::fs::read(mailroom_tests::fixtures::email_dir().join("thread/01-original.eml")).expect("fixture");
    let config = AppConfig::demo();
    {
        let b = EmbeddedBackend::open(dir.path()).expect("open");
        let s = embedded_ingest_service(&config, &b).expect("service");
        let out = s.ingest(InboundEmail::new(raw.clone(), Source::Replay)).await.expect("ingest");
        assert!(!out.repeat_delivery);
    }
    let b = EmbeddedBackend::open(dir.path()).expect("reopen");
    let s = embedded_ingest_service(&config, &b).expect("service");
    let out = s.ingest(InboundEmail::new(raw, Source::Replay)).await.expect("ingest");
    assert!(out.repeat_delivery, "the reopened store remembers the first delivery");
    assert_eq!(b.queue("routing", DEFAULT_MAX_RECEIVES).depth().await.expect("depth"), 1);
}
