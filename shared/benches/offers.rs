//! Routing on the embedded backend, as `mailroom serve` runs it:
//!
//! 1. offers per second: the offer worker matching waiting emails with free agents;
//! 2. the time from an agent becoming available (their `PUT /v1/me/presence`) to their offer
//!    being in place, through the routing queue and a running worker: p50 and p99.
//!
//! `cargo bench -p mailroom-shared --bench offers`. Target on the project machine: p99 < 50 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::adapters::embedded::{DEFAULT_MAX_RECEIVES, EmbeddedBackend};
use mailroom::domain::agent::{Agent, Role};
use mailroom::domain::ids::{AgentId, EmailAddress, QueueName};
use mailroom::domain::interaction::Priority;
use mailroom::domain::presence::ChosenPresence;
use mailroom::domain::queue::EmailQueue;
use mailroom::ports::{IngestStore, SystemClock};
use mailroom::testing::waiting_interaction;
use mailroom::usecases::routing::RoutingService;

fn agent(n: usize, queue: &QueueName) -> Agent {
    Agent {
        id: AgentId::parse(&format!("a{n:03}")).expect("id"),
        name: format!("Agent {n}"),
        email: EmailAddress::parse(&format!("a{n}@example.com")).expect("email"),
        queues: vec![queue.clone()],
        capacity: 1,
        role: Role::Agent,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let support = QueueName::parse("support").expect("queue");

    // 1. Offers per second: 100 free agents, 2,000 waiting emails; rounds of dispatch, accept, end.
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("open"));
    let svc = RoutingService {
        store: backend.clone(),
        transcripts: backend.clone(),
        work: Arc::new(backend.queue("routing", DEFAULT_MAX_RECEIVES)),
        clock: Arc::new(SystemClock),
    };
    let agents: Vec<Agent> = (0..100).map(|n| agent(n, &support)).collect();
    svc.seed(&agents, &[EmailQueue::named(support.clone())]).await.expect("seed");
    for n in 0..2_000u64 {
        let (i, m) = waiting_interaction(n, &support, Priority::NORMAL.value(), 0);
        backend.create_interaction(&i, &m).await.expect("create");
    }
    for a in &agents {
        svc.set_presence(&a.id, ChosenPresence::Available).await.expect("presence");
    }
    let (mut offers, mut spent) = (0usize, Duration::ZERO);
    loop {
        let start = Instant::now();
        let made = svc.dispatch(&support).await.expect("dispatch").offers_made;
        spent += start.elapsed();
        if made == 0 {
            break;
        }
        offers += made;
        for a in &agents {
            for o in svc.offers(&a.id).await.expect("offers") {
                svc.accept(&a.id, &o.interaction_id).await.expect("accept");
                svc.end(&a.id, &o.interaction_id).await.expect("end");
            }
        }
    }
    println!(
        "offers made: {offers} in {:.2} s of dispatching: {:.0} offers/s",
        spent.as_secs_f64(),
        offers as f64 / spent.as_secs_f64()
    );

    // 2. Available-to-offer latency through the routing queue and a running worker.
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(EmbeddedBackend::open(dir.path()).expect("open"));
    let svc = RoutingService {
        store: backend.clone(),
        transcripts: backend.clone(),
        work: Arc::new(backend.queue("routing", DEFAULT_MAX_RECEIVES)),
        clock: Arc::new(SystemClock),
    };
    let ana = agent(0, &support);
    svc.seed(std::slice::from_ref(&ana), &[EmailQueue::named(support.clone())]).await.expect("seed");
    for n in 0..50u64 {
        let (i, m) = waiting_interaction(n, &support, Priority::NORMAL.value(), 0);
        backend.create_interaction(&i, &m).await.expect("create");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.run_worker(stop_rx).await })
    };
    let mut latencies = Vec::new();
    for _ in 0..500 {
        let start = Instant::now();
        svc.set_presence(&ana.id, ChosenPresence::Available).await.expect("presence");
        let offer = loop {
            if let Some(o) = svc.offers(&ana.id).await.expect("offers").into_iter().next() {
                break o;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        latencies.push(start.elapsed());
        // Reject: back to working offline, the email waits again.
        svc.reject(&ana.id, &offer.interaction_id).await.expect("reject");
    }
    let _ = stop_tx.send(true);
    let _ = worker.await;
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    println!(
        "available -> offer ({} samples): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().expect("samples").as_secs_f64() * 1e3
    );
    println!("target: p99 < 50 ms ........ {}", if p99 < Duration::from_millis(50) { "met" } else { "MISSED" });
}
