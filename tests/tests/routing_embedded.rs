//! Routing on the embedded backend: the concurrency storm and the offer order.

use std::sync::Arc;

use async_trait::async_trait;
use mailroom::adapters::embedded::{DEFAULT_MAX_RECEIVES, EmbeddedBackend};
use mailroom_tests::routing::{self, RoutingBackend, RoutingFactory, Storm};

struct Embedded(std::sync::Mutex<Vec<tempfile::TempDir>>);

#[async_trait]
impl RoutingFactory for Embedded {
    async fn fresh(&self) -> RoutingBackend {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = Arc::new(EmbeddedBackend::open(dir.path()).expect("open"));
        self.0.lock().expect("lock").push(dir);
        RoutingBackend {
            store: b.clone(),
            transcripts: b.clone(),
            work: Arc::new(b.queue("routing", DEFAULT_MAX_RECEIVES)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_storm_20_workers_100_agents_2000_emails() {
    let report = routing::storm(&Embedded(Default::default()), Storm::standard()).await;
    eprintln!(
        "ended {} accepted {} rejected {} ignored {} transfers {}",
        report.ended, report.accepted, report.rejected, report.timed_out_or_ignored, report.transfers
    );
    assert!(report.violations.is_empty(), "{} violations:\n{}", report.violations.len(), report.violations.join("\n"));
    assert!(
        report.rejected > 0 && report.timed_out_or_ignored > 0 && report.transfers > 0,
        "the storm exercised every path"
    );
}

#[tokio::test]
async fn offers_follow_priority_then_waiting_time() {
    routing::offers_follow_priority_then_waiting_time(&Embedded(Default::default())).await;
}

#[tokio::test]
async fn lagging_listings_strand_nothing() {
    routing::lagging_listings_strand_nothing(&Embedded(Default::default())).await;
}
