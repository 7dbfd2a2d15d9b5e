//! Routing scenarios every backend must pass: the concurrency storm of issue 4 and the offer
//! order. Run on the embedded backend and on moto's DynamoDB and SQS.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailroom::domain::agent::{Agent, Role};
use mailroom::domain::ids::{AgentId, EmailAddress, InteractionId, QueueName};
use mailroom::domain::interaction::Interaction;
use mailroom::domain::presence::{ChosenPresence, Refusal};
use mailroom::domain::queue::EmailQueue;
use mailroom::domain::routing::RoutingRequest;
use mailroom::ports::BackendResult;
use mailroom::ports::routing::{AgentRecord, RoutingStore, TransitionFn, Transitioned};
use mailroom::ports::{IngestStore, SystemClock, WorkQueue};
use mailroom::testing::Rng;
pub use mailroom::testing::waiting_interaction;
use mailroom::usecases::routing::{RoutingError, RoutingService, check_invariants};

/// One isolated set of routing resources.
pub struct RoutingBackend {
    pub store: Arc<dyn RoutingStore>,
    pub transcripts: Arc<dyn IngestStore>,
    pub work: Arc<dyn WorkQueue>,
}

#[async_trait]
pub trait RoutingFactory: Send + Sync {
    async fn fresh(&self) -> RoutingBackend;
}

fn service(b: &RoutingBackend) -> RoutingService {
    RoutingService {
        store: b.store.clone(),
        transcripts: b.transcripts.clone(),
        work: b.work.clone(),
        clock: Arc::new(SystemClock),
    }
}

fn q(name: &str) -> QueueName {
    QueueName::parse(name).expect("queue name")
}

async fn enqueue(b: &RoutingBackend, i: &Interaction) {
    let request = RoutingRequest::InteractionQueued {
        interaction_id: i.id.clone(),
        queue: i.queue.clone(),
        priority: i.priority,
    };
    b.work.send(&request.to_body(), Duration::ZERO).await.expect("send");
}

/// Takes routing requests until `stop`, sometimes "crashing" before the delete (the message is
/// redelivered after its visibility timeout) and sometimes handling a message twice.
async fn worker(svc: RoutingService, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        // Long polling, as the Lambda event source does: an idle worker costs the queue little.
        let batch = match svc.work.receive(10, Duration::from_secs(2), Duration::from_secs(1)).await {
            Ok(b) => b,
            Err(_) => continue,
        };
        for w in batch {
            if rng.chance(5) {
                continue; // crashed before handling: redelivered later
            }
            let handled = svc.handle(&w.body).await;
            if rng.chance(5) {
                let _ = svc.handle(&w.body).await; // a duplicate delivery handled concurrently
            }
            match handled {
                Ok(_) => {
                    if !rng.chance(5) {
                        let _ = svc.work.delete(&w.receipt).await; // else: crashed after handling
                    }
                }
                Err(e) if e.is_transient() => {}
                Err(e) => panic!("routing request failed: {e}"),
            }
        }
    }
}

/// What the storm observed; every list must be empty.
#[derive(Debug, Default)]
pub struct StormReport {
    pub violations: Vec<String>,
    pub ended: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub timed_out_or_ignored: usize,
    pub transfers: usize,
}

pub struct Storm {
    pub workers: usize,
    pub agents: usize,
    pub emails: usize,
    /// How long, after the last email arrived, the agents get to work through the queues.
    pub time_limit: Duration,
    /// Each agent's pause between looks at their offers, in milliseconds (a range). Against moto,
    /// a single Python process, 100 agents looking every few milliseconds would measure moto.
    pub agent_pause_ms: (u64, u64),
    /// The queues' offer time-out: long enough that an agent who wants an offer sees it in time.
    pub offer_timeout_secs: u32,
}

impl Storm {
    /// The storm: 20 offer workers, 100 agents, 2,000 emails.
    pub fn standard() -> Self {
        Self {
            workers: 20,
            agents: 100,
            emails: 2_000,
            time_limit: Duration::from_secs(240),
            agent_pause_ms: (10, 50),
            offer_timeout_secs: 1,
        }
    }
}

/// At least 20 offer workers, 100 agents and 2,000 emails with random accepts, rejects and
/// time-outs and redelivered messages: no email held by two agents, no agent over capacity, every
/// email offered and ended exactly once.
pub async fn storm(f: &dyn RoutingFactory, cfg: Storm) -> StormReport {
    let b = f.fresh().await;
    let svc = service(&b);
    let queues = [q("support"), q("billing"), q("vip")];
    let queue_defs: Vec<EmailQueue> = queues
        .iter()
        .enumerate()
        .map(|(n, name)| EmailQueue {
            allow_reject: n != 2,
            offer_timeout_secs: cfg.offer_timeout_secs,
            ..EmailQueue::named(name.clone())
        })
        .collect();
    let mut rng = Rng(42);
    let mut agents = Vec::new();
    for n in 0..cfg.agents {
        let mut member: Vec<QueueName> = queues.iter().filter(|_| rng.chance(50)).cloned().collect();
        if member.is_empty() {
            member.push(queues[n % 3].clone());
        }
        agents.push(Agent {
            id: AgentId::parse(&format!("agent{n:03}")).expect("id"),
            name: format!("Agent {n}"),
            email: EmailAddress::parse(&format!("agent{n}@example.com")).expect("email"),
            queues: member,
            capacity: 1 + rng.below(3) as u32,
            role: Role::Agent,
        });
    }
    svc.seed(&agents, &queue_defs).await.expect("seed");

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..cfg.workers {
        tasks.push(tokio::spawn(worker(svc.clone(), stop.clone(), 1000 + w as u64)));
    }

    // The emails arrive while agents work, through a few channels at once (one feeder alone would
    // wait in line behind 120 clients on a single-process backend); some routing requests are
    // sent twice.
    const FEEDERS: u64 = 4;
    let feeders: Vec<_> = (0..FEEDERS)
        .map(|feeder| {
            let (b, emails) = (
                RoutingBackend { store: b.store.clone(), transcripts: b.transcripts.clone(), work: b.work.clone() },
                cfg.emails as u64,
            );
            tokio::spawn(async move {
                let mut rng = Rng(7 + feeder);
                for n in (feeder..emails).step_by(FEEDERS as usize) {
                    let queue = q(["support", "billing", "vip"][rng.below(3) as usize]);
                    let (i, m) = waiting_interaction(n, &queue, 1 + rng.below(10) as u8, 0);
                    b.transcripts.create_interaction(&i, &m).await.expect("create");
                    enqueue(&b, &i).await;
                    if rng.chance(10) {
                        enqueue(&b, &i).await;
                    }
                    if n % 50 < FEEDERS {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();

    let holders: Arc<Mutex<HashMap<InteractionId, AgentId>>> = Arc::default();
    let ended: Arc<Mutex<HashSet<InteractionId>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let counts: Arc<[AtomicUsize; 4]> = Arc::new([(); 4].map(|_| AtomicUsize::new(0)));
    for (n, agent) in agents.iter().enumerate() {
        let (svc, stop, holders, ended, violations, counts) =
            (svc.clone(), stop.clone(), holders.clone(), ended.clone(), violations.clone(), counts.clone());
        let (me, capacity, queues) = (agent.id.clone(), agent.capacity, queues.clone());
        let (pause_min, pause_spread) =
            (cfg.agent_pause_ms.0, cfg.agent_pause_ms.1.saturating_sub(cfg.agent_pause_ms.0).max(1));
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(5000 + n as u64);
            let mut held: Vec<InteractionId> = Vec::new();
            let _ = svc.set_presence(&me, ChosenPresence::Available).await;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(pause_min + rng.below(pause_spread))).await;
                // Finish some of the work in hand: end it, or now and then transfer it.
                if !held.is_empty() && rng.chance(40) {
                    let id = held.remove(rng.below(held.len() as u64) as usize);
                    holders.lock().expect("lock").remove(&id);
                    let transfer_to = queues[rng.below(3) as usize].clone();
                    let result = if rng.chance(8) {
                        svc.transfer(&me, &id, &transfer_to).await.map(|_| true)
                    } else {
                        svc.end(&me, &id).await.map(|_| false)
                    };
                    match result {
                        Ok(true) => {
                            counts[3].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {
                            if !ended.lock().expect("lock").insert(id.clone()) {
                                violations.lock().expect("lock").push(format!("{id} ended twice"));
                            }
                        }
                        Err(RoutingError::Refused(Refusal::SameQueue(_))) => {
                            let _ = svc.end(&me, &id).await.map(|_| ended.lock().expect("lock").insert(id.clone()));
                        }
                        Err(e) => violations.lock().expect("lock").push(format!("{me} could not finish {id}: {e}")),
                    }
                }
                let Ok(offers) = svc.offers(&me).await else { continue };
                for offer in offers {
                    let roll = rng.below(100);
                    if roll < 70 {
                        match svc.accept(&me, &offer.interaction_id).await {
                            Ok(_) => {
                                counts[0].fetch_add(1, Ordering::Relaxed);
                                if let Some(other) =
                                    holders.lock().expect("lock").insert(offer.interaction_id.clone(), me.clone())
                                {
                                    violations
                                        .lock()
                                        .expect("lock")
                                        .push(format!("{} held by {other} and {me}", offer.interaction_id));
                                }
                                held.push(offer.interaction_id.clone());
                                if held.len() as u32 > capacity {
                                    violations
                                        .lock()
                                        .expect("lock")
                                        .push(format!("{me} holds {} over capacity {capacity}", held.len()));
                                }
                            }
                            // Timed out just before: fine.
                            Err(RoutingError::Refused(_)) => {}
                            Err(e) => violations.lock().expect("lock").push(format!("accept failed: {e}")),
                        }
                    } else if roll < 85 {
                        match svc.reject(&me, &offer.interaction_id).await {
                            Ok(_) => {
                                counts[1].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(RoutingError::Refused(_)) => {}
                            Err(e) => violations.lock().expect("lock").push(format!("reject failed: {e}")),
                        }
                    } else {
                        counts[2].fetch_add(1, Ordering::Relaxed); // ignore it: it times out
                    }
                }
                // Working offline after a reject or a time-out: come back a little later.
                if let Ok(record) = svc.agent(&me).await
                    && record.state.presence == mailroom::domain::presence::Presence::WorkingOffline
                    && rng.chance(30)
                {
                    let _ = svc.set_presence(&me, ChosenPresence::Available).await;
                }
            }
        }));
    }

    for feeder in feeders {
        feeder.await.expect("feeder");
    }
    let started = tokio::time::Instant::now();
    let deadline = started + cfg.time_limit;
    let mut next_progress = started + Duration::from_secs(30);
    while ended.lock().expect("lock").len() < cfg.emails && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tokio::time::Instant::now() >= next_progress {
            // A slow backend shows in the log as it happens, not only at the time limit.
            let done = ended.lock().expect("lock").len();
            eprintln!("storm: {done} of {} emails ended after {:?}", cfg.emails, started.elapsed());
            next_progress += Duration::from_secs(30);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }

    let mut report = StormReport {
        violations: violations.lock().expect("lock").clone(),
        ended: ended.lock().expect("lock").len(),
        accepted: counts[0].load(Ordering::Relaxed),
        rejected: counts[1].load(Ordering::Relaxed),
        timed_out_or_ignored: counts[2].load(Ordering::Relaxed),
        transfers: counts[3].load(Ordering::Relaxed),
    };
    if report.ended < cfg.emails {
        report
            .violations
            .push(format!("only {} of {} emails were ended within {:?}", report.ended, cfg.emails, cfg.time_limit));
    }
    // At rest, every agent's counters match what they hold, and nothing is held twice.
    let records = b.store.agents().await.expect("agents");
    let mut held = HashMap::new();
    for r in &records {
        held.insert(r.agent.id.clone(), b.store.held_by(&r.agent.id).await.expect("held"));
    }
    report.violations.extend(check_invariants(&records, &held));
    report
}

/// Ana, the one agent of the smaller scenarios: a member of `queue`, one email at a time.
fn ana_in(queue: &QueueName) -> Agent {
    Agent {
        id: AgentId::parse("ana").expect("id"),
        name: "Ana".into(),
        email: EmailAddress::parse("ana@example.com").expect("email"),
        queues: vec![queue.clone()],
        capacity: 1,
        role: Role::Agent,
    }
}

/// With one free agent, offers come highest priority first, then longest waiting.
pub async fn offers_follow_priority_then_waiting_time(f: &dyn RoutingFactory) {
    let b = f.fresh().await;
    let svc = service(&b);
    let support = q("support");
    let ana = ana_in(&support);
    svc.seed(std::slice::from_ref(&ana), &[EmailQueue::named(support.clone())]).await.expect("seed");
    // (n, priority, age in ms): expected order 2 (priority 9), 1 (oldest of priority 5), 3, 0 (priority 1).
    let items = [(0u64, 1u8, 900i64), (1, 5, 800), (2, 9, 10), (3, 5, 100)];
    for (n, p, age) in items {
        let (i, m) = waiting_interaction(n, &support, p, age);
        b.transcripts.create_interaction(&i, &m).await.expect("create");
    }
    let expected: Vec<InteractionId> =
        [2u64, 1, 3, 0].iter().map(|n| waiting_interaction(*n, &support, 1, 0).0.id).collect();
    svc.set_presence(&ana.id, ChosenPresence::Available).await.expect("presence");
    let mut got = Vec::new();
    for _ in 0..4 {
        svc.dispatch(&support).await.expect("dispatch");
        let offers = svc.offers(&ana.id).await.expect("offers");
        assert_eq!(offers.len(), 1, "one offer at a time");
        let id = offers[0].interaction_id.clone();
        svc.accept(&ana.id, &id).await.expect("accept");
        svc.end(&ana.id, &id).await.expect("end");
        got.push(id);
    }
    assert_eq!(got, expected);
}

/// A store whose listings can lag, as DynamoDB's indexes may a moment after a write: while
/// `hide_waiting` or `hide_available` is set, `waiting` or `available_agents` show nothing.
struct Lagging {
    inner: Arc<dyn RoutingStore>,
    hide_waiting: AtomicBool,
    hide_available: AtomicBool,
}

#[async_trait]
impl RoutingStore for Lagging {
    async fn put_agent(&self, agent: &Agent) -> BackendResult<()> {
        self.inner.put_agent(agent).await
    }
    async fn agent(&self, id: &AgentId) -> BackendResult<Option<AgentRecord>> {
        self.inner.agent(id).await
    }
    async fn agents(&self) -> BackendResult<Vec<AgentRecord>> {
        self.inner.agents().await
    }
    async fn available_agents(&self) -> BackendResult<Vec<AgentRecord>> {
        if self.hide_available.load(Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        self.inner.available_agents().await
    }
    async fn put_queue(&self, queue: &EmailQueue) -> BackendResult<()> {
        self.inner.put_queue(queue).await
    }
    async fn queues(&self) -> BackendResult<Vec<EmailQueue>> {
        self.inner.queues().await
    }
    async fn waiting(&self, queue: &QueueName, limit: usize) -> BackendResult<Vec<Interaction>> {
        if self.hide_waiting.load(Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        self.inner.waiting(queue, limit).await
    }
    async fn held_by(&self, agent: &AgentId) -> BackendResult<Vec<Interaction>> {
        self.inner.held_by(agent).await
    }
    async fn transition(
        &self,
        interaction: Option<&InteractionId>,
        agent: Option<&AgentId>,
        change: &TransitionFn<'_>,
    ) -> BackendResult<Result<Transitioned, Refusal>> {
        self.inner.transition(interaction, agent, change).await
    }
}

/// Listings that lag behind writes strand nothing: a routing request offers the email or the
/// agent it names even before the listings show them, and a sweep finds what no request matched.
pub async fn lagging_listings_strand_nothing(f: &dyn RoutingFactory) {
    let b = f.fresh().await;
    let lagging = Arc::new(Lagging {
        inner: b.store.clone(),
        hide_waiting: AtomicBool::new(false),
        hide_available: AtomicBool::new(false),
    });
    let svc = RoutingService { store: lagging.clone(), ..service(&b) };
    let support = q("support");
    let ana = ana_in(&support);
    svc.seed(std::slice::from_ref(&ana), &[EmailQueue::named(support.clone())]).await.expect("seed");
    svc.set_presence(&ana.id, ChosenPresence::Available).await.expect("presence");
    let arrive = |n: u64| {
        let (b, support) = (&b, support.clone());
        async move {
            let (i, m) = waiting_interaction(n, &support, 5, 0);
            b.transcripts.create_interaction(&i, &m).await.expect("create");
            i
        }
    };
    let offered = |svc: RoutingService, id: AgentId| async move {
        svc.offers(&id).await.expect("offers").into_iter().map(|o| o.interaction_id).collect::<Vec<_>>()
    };

    // The new email is not listed yet: its own request offers it.
    lagging.hide_waiting.store(true, Ordering::SeqCst);
    let first = arrive(1).await;
    let queued = |i: &Interaction| {
        RoutingRequest::InteractionQueued { interaction_id: i.id.clone(), queue: i.queue.clone(), priority: i.priority }
            .to_body()
    };
    let report = svc.handle(&queued(&first)).await.expect("handle");
    assert_eq!(report.offers_made, 1, "offered before the listing shows it");
    assert_eq!(offered(svc.clone(), ana.id.clone()).await, std::slice::from_ref(&first.id));
    svc.accept(&ana.id, &first.id).await.expect("accept");
    lagging.hide_waiting.store(false, Ordering::SeqCst);

    // The agent who just came free is not listed yet: their own request offers them the next one.
    let second = arrive(2).await;
    lagging.hide_available.store(true, Ordering::SeqCst);
    svc.end(&ana.id, &first.id).await.expect("end");
    let came_back = RoutingRequest::AgentAvailable { agent_id: ana.id.clone() }.to_body();
    assert_eq!(svc.handle(&came_back).await.expect("handle").offers_made, 1, "offered before the listing shows her");
    assert_eq!(offered(svc.clone(), ana.id.clone()).await, std::slice::from_ref(&second.id));
    svc.accept(&ana.id, &second.id).await.expect("accept");

    // Neither listed, and no request names them both: the sweep offers it once the listings
    // catch up.
    lagging.hide_waiting.store(true, Ordering::SeqCst);
    let third = arrive(3).await;
    svc.end(&ana.id, &second.id).await.expect("end");
    let sweep = RoutingRequest::Sweep.to_body();
    assert_eq!(svc.handle(&sweep).await.expect("handle").offers_made, 0);
    lagging.hide_waiting.store(false, Ordering::SeqCst);
    lagging.hide_available.store(false, Ordering::SeqCst);
    assert_eq!(svc.handle(&sweep).await.expect("handle").offers_made, 1);
    assert_eq!(offered(svc, ana.id.clone()).await, [third.id]);
}
