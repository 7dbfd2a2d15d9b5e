//! Routing on moto's DynamoDB and SQS: the concurrency storm and the offer order, the same
//! scenarios as `routing_embedded.rs`. Each test gets its own table and queues.

use std::time::{Duration, Instant};

use mailroom_tests::aws::moto;
use mailroom_tests::routing::{self, Storm};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_storm_20_workers_100_agents_2000_emails() {
    let Some(m) = moto().await else { return };
    let started = Instant::now();
    // The storm in full. moto is one Python process (patched where it scanned or sorted
    // whole tables and queues: infra/emulators/moto_server.py), so here agents look at their
    // offers every 4-8 s instead of every 10-50 ms (which would only measure moto), with a
    // time-out that leaves them time to answer. MAILROOM_MOTO_STORM_EMAILS sets another size.
    let emails = std::env::var("MAILROOM_MOTO_STORM_EMAILS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let storm = Storm {
        emails,
        agent_pause_ms: (4_000, 8_000),
        offer_timeout_secs: 20,
        time_limit: Duration::from_secs(900),
        ..Storm::standard()
    };
    let report = routing::storm(&m, storm).await;
    eprintln!(
        "ended {} accepted {} rejected {} ignored {} transfers {} in {:?}",
        report.ended,
        report.accepted,
        report.rejected,
        report.timed_out_or_ignored,
        report.transfers,
        started.elapsed()
    );
    assert!(report.violations.is_empty(), "{} violations:\n{}", report.violations.len(), report.violations.join("\n"));
    assert!(
        report.rejected > 0 && report.timed_out_or_ignored > 0 && report.transfers > 0,
        "the storm exercised every path"
    );
}

#[tokio::test]
async fn offers_follow_priority_then_waiting_time() {
    let Some(m) = moto().await else { return };
    routing::offers_follow_priority_then_waiting_time(&m).await;
}

#[tokio::test]
async fn lagging_listings_strand_nothing() {
    let Some(m) = moto().await else { return };
    routing::lagging_listings_strand_nothing(&m).await;
}
