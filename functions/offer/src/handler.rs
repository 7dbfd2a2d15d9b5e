//! From SQS events to the offer worker: each message on the routing queue is one
//! `RoutingRequest` (an interaction waiting, an agent free, an offer timed out), handled by
//! [`RoutingService::handle`], which is safe to repeat.
//!
//! Records are handled one by one, in order. A failed record is reported in `batchItemFailures`,
//! so SQS retries it alone and, after 5 receives, dead-letters it; the rest of the batch is kept.
//! A request that is not a routing request at all can never succeed: it is logged and
//! acknowledged instead.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use mailroom::usecases::routing::{RoutingError, RoutingService};
use tracing::{error, info, instrument, warn};

/// What the handler needs, built once at INIT.
pub struct Handler {
    pub routing: RoutingService,
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handled,
    /// Malformed: no retry can help.
    Dropped,
    /// Reported for another delivery.
    Failed,
}

impl Handler {
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let message_id = record.message_id.unwrap_or_default();
            let outcome = match record.body.as_deref() {
                Some(body) => self.handle_body(body).await,
                None => {
                    warn!(sqs_message_id = %message_id, "routing message without a body acknowledged");
                    Outcome::Dropped
                }
            };
            if outcome == Outcome::Failed {
                if message_id.is_empty() {
                    // Cannot be reported alone; an empty id makes Lambda retry the whole batch.
                    warn!("failed record has no messageId");
                }
                response.add_failure(message_id);
            }
        }
        response
    }

    #[instrument(skip_all)]
    async fn handle_body(&self, body: &str) -> Outcome {
        match self.routing.handle(body).await {
            Ok(report) => {
                info!(offers_made = report.offers_made, expired = report.expired, "routing request handled");
                Outcome::Handled
            }
            Err(RoutingError::BadRequest(e)) => {
                warn!(error = %ErrorChain(&e), "malformed routing request acknowledged");
                Outcome::Dropped
            }
            // Permanent failures (a denied call, an unreadable record) are retried too and then
            // dead-lettered, so an operator can redrive them once the cause is fixed.
            Err(e) => {
                error!(transient = e.is_transient(), error = %ErrorChain(&e), "routing request failed; SQS will retry it");
                Outcome::Failed
            }
        }
    }
}

/// Displays an error with its causes (`a: b: c`), for one log line.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use chrono::Utc;
    use mailroom::adapters::memory::{MemoryIngestStore, MemoryWorkQueue};
    use mailroom::domain::agent::{Agent, Role};
    use mailroom::domain::ids::{
        AgentId, Category, ChannelName, EmailAddress, Fingerprint, InteractionId, QueueName, RawMailKey,
    };
    use mailroom::domain::interaction::{Direction, Interaction, InteractionState, Priority, Sentiment, StoredMessage};
    use mailroom::domain::journal::Disposition;
    use mailroom::domain::presence::{ChosenPresence, Presence, Refusal};
    use mailroom::domain::queue::EmailQueue;
    use mailroom::domain::routing::RoutingRequest;
    use mailroom::ports::routing::{AgentRecord, RoutingStore, TransitionFn, Transitioned};
    use mailroom::ports::{BackendError, BackendResult, IngestStore, SystemClock, WorkQueue};

    use super::*;

    /// The interaction the fixtures name.
    const WAITING: &str = "7K3QX9M2ABCD";

    fn event(name: &str) -> SqsEvent {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/events").join(name);
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&text).expect("fixture is an SQS event")
    }

    fn failed_ids(response: &SqsBatchResponse) -> Vec<&str> {
        response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
    }

    /// The memory store, except that reading agent `flaky` fails as a throttled call would.
    struct Flaky(Arc<MemoryIngestStore>);

    #[async_trait]
    impl RoutingStore for Flaky {
        async fn put_agent(&self, agent: &Agent) -> BackendResult<()> {
            self.0.put_agent(agent).await
        }
        async fn agent(&self, id: &AgentId) -> BackendResult<Option<AgentRecord>> {
            if id.as_str() == "flaky" {
                return Err(BackendError::transient("dynamodb get agent", "throttled"));
            }
            self.0.agent(id).await
        }
        async fn agents(&self) -> BackendResult<Vec<AgentRecord>> {
            self.0.agents().await
        }
        async fn put_queue(&self, queue: &EmailQueue) -> BackendResult<()> {
            self.0.put_queue(queue).await
        }
        async fn queues(&self) -> BackendResult<Vec<EmailQueue>> {
            self.0.queues().await
        }
        async fn waiting(&self, queue: &QueueName, limit: usize) -> BackendResult<Vec<Interaction>> {
            self.0.waiting(queue, limit).await
        }
        async fn held_by(&self, agent: &AgentId) -> BackendResult<Vec<Interaction>> {
            self.0.held_by(agent).await
        }
        async fn transition(
            &self,
            interaction: Option<&InteractionId>,
            agent: Option<&AgentId>,
            change: &TransitionFn<'_>,
        ) -> BackendResult<Result<Transitioned, Refusal>> {
            self.0.transition(interaction, agent, change).await
        }
    }

    fn agent(id: &str) -> Agent {
        Agent {
            id: AgentId::parse(id).unwrap(),
            name: id.into(),
            email: EmailAddress::parse(&format!("{id}@example.com")).unwrap(),
            queues: vec![QueueName::parse("support").unwrap()],
            capacity: 1,
            role: Role::Agent,
        }
    }

    /// An interaction waiting in `support`, stored as ingest stores it.
    fn waiting_interaction() -> (Interaction, StoredMessage) {
        let fp = Fingerprint::from_digest([7; 32]);
        let id = InteractionId::parse(WAITING).unwrap();
        let customer = EmailAddress::parse("alice@example.org").unwrap();
        let now = Utc::now();
        let interaction = Interaction {
            id: id.clone(),
            channel: ChannelName::parse("support").unwrap(),
            customer: customer.clone(),
            customer_name: Some("Alice".into()),
            subject: "Help".into(),
            queue: QueueName::parse("support").unwrap(),
            priority: Priority::NORMAL,
            state: InteractionState::Queued,
            category: Category::parse("general").unwrap(),
            sentiment: Sentiment::Neutral,
            participants: vec![],
            origin: fp.clone(),
            message_count: 1,
            created_at: now,
            updated_at: now,
            queued_at: Some(now),
            routing: Default::default(),
        };
        let message = StoredMessage {
            fingerprint: fp,
            interaction_id: id,
            raw_key: RawMailKey::of(b"raw"),
            direction: Direction::Inbound,
            message_id: None,
            conversation_key: None,
            from: customer,
            from_name: None,
            to: vec![],
            cc: vec![],
            subject: "Help".into(),
            sent_at: None,
            received_at: now,
            text_body: "Hello".into(),
            body_truncated: false,
            attachments: vec![],
            degraded: vec![],
            disposition: Disposition::New,
            reason: String::new(),
            category: Category::parse("general").unwrap(),
            sentiment: Sentiment::Neutral,
        };
        (interaction, message)
    }

    struct Setup {
        handler: Handler,
        store: Arc<MemoryIngestStore>,
        work: Arc<MemoryWorkQueue>,
    }

    async fn setup() -> Setup {
        setup_with_timeout(60).await
    }

    /// Agent `ana` available in queue `support` (offers time out after `offer_timeout_secs`),
    /// where one interaction waits; agent `flaky` cannot be read.
    async fn setup_with_timeout(offer_timeout_secs: u32) -> Setup {
        let store = Arc::new(MemoryIngestStore::default());
        let work = Arc::new(MemoryWorkQueue::new("routing", 5));
        let routing = RoutingService {
            store: Arc::new(Flaky(store.clone())),
            transcripts: store.clone(),
            work: work.clone(),
            clock: Arc::new(SystemClock),
        };
        let support = EmailQueue { offer_timeout_secs, ..EmailQueue::named(QueueName::parse("support").unwrap()) };
        routing.seed(&[agent("ana"), agent("flaky")], &[support]).await.unwrap();
        routing.set_presence(&AgentId::parse("ana").unwrap(), ChosenPresence::Available).await.unwrap();
        let (interaction, message) = waiting_interaction();
        store.create_interaction(&interaction, &message).await.unwrap();
        // Drop what the setup itself queued (ana's availability).
        for w in work.receive(10, Duration::from_secs(60), Duration::ZERO).await.unwrap() {
            work.delete(&w.receipt).await.unwrap();
        }
        Setup { handler: Handler { routing }, store, work }
    }

    #[tokio::test]
    async fn reports_only_the_records_worth_retrying() {
        let s = setup().await;
        let response = s.handler.handle(event("sqs-routing-requests.json")).await;
        // The throttled read is retried; the malformed and unknown requests are acknowledged, and
        // the time-out of an offer that no longer exists changes nothing.
        assert_eq!(failed_ids(&response), vec!["4d1c7f52-0003-4a8e-9d3e-6b2f1e0c9a03"]);

        let ana = s.store.agent(&AgentId::parse("ana").unwrap()).await.unwrap().unwrap();
        assert_eq!(ana.state.presence, Presence::Reserved, "the waiting email was offered to ana");
        let offered = s.store.interaction(&InteractionId::parse(WAITING).unwrap()).await.unwrap().unwrap();
        assert_eq!(offered.state, InteractionState::Offered);
        assert_eq!(offered.routing.agent.as_ref().map(AgentId::as_str), Some("ana"));
        // The offer's time-out waits, delayed, on the routing queue.
        assert_eq!(s.work.depth().await.unwrap(), 1);
        assert!(s.work.receive(10, Duration::from_secs(1), Duration::ZERO).await.unwrap().is_empty(), "delayed");
    }

    #[tokio::test]
    async fn a_redelivered_batch_offers_nothing_twice() {
        let s = setup().await;
        s.handler.handle(event("sqs-routing-requests.json")).await;
        let first = s.store.interaction(&InteractionId::parse(WAITING).unwrap()).await.unwrap().unwrap();
        let again = s.handler.handle(event("sqs-routing-requests.json")).await;
        assert_eq!(failed_ids(&again), vec!["4d1c7f52-0003-4a8e-9d3e-6b2f1e0c9a03"]);
        let second = s.store.interaction(&InteractionId::parse(WAITING).unwrap()).await.unwrap().unwrap();
        assert_eq!(first.routing.offer_id, second.routing.offer_id, "the same offer stands");
        assert_eq!(s.work.depth().await.unwrap(), 1, "one time-out, not two");
    }

    #[tokio::test]
    async fn a_due_time_out_expires_the_offer_and_offers_again() {
        let s = setup_with_timeout(0).await;
        s.handler.handle(event("sqs-routing-requests.json")).await;
        // The time-out the worker sent (due at once with a time-out of 0), as SQS delivers it.
        let sent = s.work.receive(10, Duration::from_secs(60), Duration::ZERO).await.unwrap();
        assert_eq!(sent.len(), 1);
        let mut timeout = event("sqs-offer-expired.json");
        assert!(matches!(
            RoutingRequest::from_body(timeout.records[0].body.as_deref().unwrap()),
            Ok(RoutingRequest::OfferExpired { .. })
        ));
        timeout.records[0].body = Some(sent[0].body.clone());

        let response = s.handler.handle(timeout.clone()).await;
        assert!(failed_ids(&response).is_empty());
        let ana = s.store.agent(&AgentId::parse("ana").unwrap()).await.unwrap().unwrap();
        let after = s.store.interaction(&InteractionId::parse(WAITING).unwrap()).await.unwrap().unwrap();
        assert_eq!((after.state, ana.state.presence), (InteractionState::Queued, Presence::WorkingOffline));
        assert_eq!(after.routing.declined_by, vec![AgentId::parse("ana").unwrap()]);

        // Redelivered: that offer is gone, nothing changes.
        assert!(failed_ids(&s.handler.handle(timeout).await).is_empty());
        let again = s.store.interaction(&after.id).await.unwrap().unwrap();
        assert_eq!(again, after);
    }

    #[tokio::test]
    async fn an_empty_batch_is_fine() {
        let s = setup().await;
        let response = s.handler.handle(SqsEvent::default()).await;
        assert!(failed_ids(&response).is_empty());
    }
}
