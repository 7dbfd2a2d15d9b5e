//! Routing: the offer worker and what agents and supervisors do through the API.
//!
//! The worker reacts to `RoutingRequest`s on the routing queue (an interaction waiting, an agent
//! free, an offer timed out) by matching the highest-priority, longest-waiting interaction of a
//! queue with its longest-idle free member. Every state change is a `RoutingStore::transition` of
//! a pure function from `domain::presence`, so concurrent workers and redelivered messages can
//! never offer one email to two agents or push an agent past capacity.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{debug, info, instrument, warn};

use crate::domain::agent::{Agent, Role};
use crate::domain::ids::{AgentId, InteractionId, QueueName};
use crate::domain::interaction::{Interaction, InteractionState, StoredMessage};
use crate::domain::presence::{self, ChosenPresence, Presence, Refusal};
use crate::domain::queue::EmailQueue;
use crate::domain::routing::RoutingRequest;
use crate::ports::routing::{AgentRecord, RoutingStore, Transitioned};
use crate::ports::{BackendError, Clock, IngestStore, WorkQueue};

/// SQS delays messages by at most 15 minutes; longer offer time-outs are re-armed.
const MAX_QUEUE_DELAY: Duration = Duration::from_secs(900);
/// How many offers one dispatch makes before yielding (the rest follow on the next trigger).
const MAX_OFFERS_PER_DISPATCH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("no queue named {0}")]
    UnknownQueue(QueueName),
    #[error("routing request is not valid JSON: {0}")]
    BadRequest(#[source] serde_json::Error),
}

impl RoutingError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Backend(e) if e.is_transient())
    }
}

/// An offer as the agent's notification shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OfferView {
    pub interaction_id: InteractionId,
    pub offer_id: String,
    pub customer_name: Option<String>,
    pub customer_email: String,
    pub subject: String,
    pub queue: QueueName,
    pub priority: u8,
    /// Seconds since the email started waiting in its queue.
    pub waiting_seconds: i64,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InteractionView {
    pub interaction_id: InteractionId,
    pub state: &'static str,
    pub channel: String,
    pub customer_name: Option<String>,
    pub customer_email: String,
    pub subject: String,
    pub queue: QueueName,
    pub priority: u8,
    pub category: String,
    pub sentiment: &'static str,
    pub agent: Option<AgentId>,
    pub message_count: u32,
    pub created_at: DateTime<Utc>,
    pub queued_at: Option<DateTime<Utc>>,
    pub transfers: u32,
}

impl From<&Interaction> for InteractionView {
    fn from(i: &Interaction) -> Self {
        Self {
            interaction_id: i.id.clone(),
            state: i.state.as_str(),
            channel: i.channel.to_string(),
            customer_name: i.customer_name.clone(),
            customer_email: i.customer.to_string(),
            subject: i.subject.clone(),
            queue: i.queue.clone(),
            priority: i.priority.value(),
            category: i.category.to_string(),
            sentiment: i.sentiment.as_str(),
            agent: i.routing.agent.clone(),
            message_count: i.message_count,
            created_at: i.created_at,
            queued_at: i.queued_at,
            transfers: i.routing.transfers,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PresenceView {
    pub agent_id: AgentId,
    pub presence: &'static str,
    pub active: u32,
    pub capacity: u32,
    pub since: DateTime<Utc>,
    pub pending_offer: Option<InteractionId>,
}

impl From<&AgentRecord> for PresenceView {
    fn from(r: &AgentRecord) -> Self {
        Self {
            agent_id: r.agent.id.clone(),
            presence: r.state.presence.as_str(),
            active: r.state.active,
            capacity: r.agent.capacity,
            since: r.state.presence_since,
            pending_offer: r.state.pending_offer.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentView {
    pub agent_id: AgentId,
    pub name: String,
    pub role: &'static str,
    pub queues: Vec<QueueName>,
    pub presence: &'static str,
    pub active: u32,
    pub capacity: u32,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueView {
    pub queue: QueueName,
    pub waiting: usize,
    pub oldest_wait_seconds: Option<i64>,
    pub allow_reject: bool,
    pub offer_timeout_secs: u32,
    /// Members who could take an offer right now.
    pub available_agents: usize,
}

/// What the worker did with one routing request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchReport {
    pub offers_made: usize,
    pub expired: bool,
}

#[derive(Clone)]
pub struct RoutingService {
    pub store: Arc<dyn RoutingStore>,
    pub transcripts: Arc<dyn IngestStore>,
    pub work: Arc<dyn WorkQueue>,
    pub clock: Arc<dyn Clock>,
}

/// The records a routing request named, read consistently when it was taken (see
/// [`RoutingService::dispatch_with`]). Each is used until an offer involving it has been tried.
#[derive(Debug, Default)]
struct Trigger {
    interaction: Option<Interaction>,
    agent: Option<AgentRecord>,
}

impl Trigger {
    /// The next interaction to offer in `queue`: the index's head, or the request's own
    /// interaction if it is still waiting there and comes first (or the index does not show it yet).
    fn first_waiting(&self, queue: &QueueName, head: Option<Interaction>) -> Option<Interaction> {
        let known = self.interaction.as_ref().filter(|i| i.state == InteractionState::Queued && &i.queue == queue);
        match (head, known) {
            (Some(head), Some(known))
                if known.id != head.id && presence::waiting_order((known, 0), (&head, 0)).is_lt() =>
            {
                Some(known.clone())
            }
            (Some(head), _) => Some(head),
            (None, known) => known.cloned(),
        }
    }

    /// After an offer of `interaction` to `agent` was tried: a copy that took part is out of
    /// date, unless the refusal was about the other record (it is then as it was read).
    fn tried(&mut self, interaction: &InteractionId, agent: &AgentId, refusal: Option<&Refusal>) {
        if !matches!(refusal, Some(Refusal::AgentNotFree))
            && self.interaction.as_ref().is_some_and(|i| &i.id == interaction)
        {
            self.interaction = None;
        }
        if !matches!(refusal, Some(Refusal::NotWaiting)) && self.agent.as_ref().is_some_and(|a| &a.agent.id == agent) {
            self.agent = None;
        }
    }
}

fn elapsed_seconds(from: Option<DateTime<Utc>>, now: DateTime<Utc>) -> i64 {
    from.map(|t| (now - t).num_seconds().max(0)).unwrap_or(0)
}

impl RoutingService {
    // ------------------------------------------------------------------ directory

    /// Loads agents and queues from configuration; existing agents keep their presence.
    pub async fn seed(&self, agents: &[Agent], queues: &[EmailQueue]) -> Result<(), RoutingError> {
        for q in queues {
            self.store.put_queue(q).await?;
        }
        for a in agents {
            self.store.put_agent(a).await?;
        }
        Ok(())
    }

    async fn queue_map(&self) -> Result<HashMap<QueueName, EmailQueue>, RoutingError> {
        Ok(self.store.queues().await?.into_iter().map(|q| (q.name.clone(), q)).collect())
    }

    async fn queue(&self, name: &QueueName) -> Result<EmailQueue, RoutingError> {
        self.queue_map().await?.remove(name).ok_or_else(|| RoutingError::UnknownQueue(name.clone()))
    }

    async fn send(&self, request: &RoutingRequest, delay: Duration) -> Result<(), RoutingError> {
        self.work.send(&request.to_body(), delay.min(MAX_QUEUE_DELAY)).await?;
        Ok(())
    }

    // ------------------------------------------------------------------ the worker

    /// Handles one message from the routing queue. Safe to call again with the same message.
    #[instrument(skip_all, fields(kind))]
    pub async fn handle(&self, body: &str) -> Result<DispatchReport, RoutingError> {
        let request = RoutingRequest::from_body(body).map_err(RoutingError::BadRequest)?;
        match request {
            RoutingRequest::InteractionQueued { interaction_id, queue, .. } => {
                tracing::Span::current().record("kind", "interaction_queued");
                let known = self.transcripts.interaction(&interaction_id).await?;
                self.dispatch_with(&queue, &mut Trigger { interaction: known, agent: None }).await
            }
            RoutingRequest::AgentAvailable { agent_id } => {
                tracing::Span::current().record("kind", "agent_available");
                let Some(record) = self.store.agent(&agent_id).await? else {
                    return Ok(DispatchReport::default());
                };
                let mut report = DispatchReport::default();
                let queues = record.agent.queues.clone();
                let mut trigger = Trigger { interaction: None, agent: Some(record) };
                for queue in &queues {
                    report.offers_made += self.dispatch_with(queue, &mut trigger).await?.offers_made;
                }
                Ok(report)
            }
            RoutingRequest::Sweep => {
                tracing::Span::current().record("kind", "sweep");
                let mut report = DispatchReport::default();
                for queue in self.store.queues().await? {
                    report.offers_made += self.dispatch(&queue.name).await?.offers_made;
                }
                Ok(report)
            }
            RoutingRequest::OfferExpired { interaction_id, agent_id, offer_id } => {
                tracing::Span::current().record("kind", "offer_expired");
                self.expire(&interaction_id, &agent_id, &offer_id).await
            }
        }
    }

    async fn expire(
        &self,
        id: &InteractionId,
        agent: &AgentId,
        offer_id: &str,
    ) -> Result<DispatchReport, RoutingError> {
        let now = self.clock.now();
        // A time-out longer than the queue's maximum delay is re-armed for the rest of the time.
        if let Some(interaction) = self.transcripts.interaction(id).await?
            && interaction.routing.offer_id.as_deref() == Some(offer_id)
            && let Some(expires) = interaction.routing.offer_expires_at
            && expires > now + chrono::Duration::seconds(1)
        {
            let rest = (expires - now).to_std().unwrap_or_default();
            let again = RoutingRequest::OfferExpired {
                interaction_id: id.clone(),
                agent_id: agent.clone(),
                offer_id: offer_id.to_owned(),
            };
            self.send(&again, rest).await?;
            return Ok(DispatchReport::default());
        }
        let outcome = self
            .store
            .transition(Some(id), Some(agent), &|i, a| {
                let (Some(i), Some(a)) = (i, a) else { return Err(Refusal::UnknownInteraction) };
                presence::expire(i, agent, &mut a.state, offer_id, now)
            })
            .await?;
        match outcome {
            Ok(done) => {
                let queue = done.interaction.as_ref().map(|i| i.queue.clone()).expect("transition returns it");
                info!(interaction_id = %id, agent_id = %agent, "offer timed out; the agent is working offline");
                let mut report = self.dispatch(&queue).await?;
                report.expired = true;
                Ok(report)
            }
            // Accepted, rejected or re-offered meanwhile: nothing to do.
            Err(refusal) => {
                debug!(interaction_id = %id, %refusal, "time-out of an offer that is no longer pending");
                Ok(DispatchReport::default())
            }
        }
    }

    /// Offers waiting interactions of `queue` to its free members until one side runs out.
    pub async fn dispatch(&self, queue: &QueueName) -> Result<DispatchReport, RoutingError> {
        self.dispatch_with(queue, &mut Trigger::default()).await
    }

    /// [`Self::dispatch`], also considering the records the routing request named, as read
    /// consistently: the indexes behind `waiting` and `available_agents` may lag a moment behind
    /// the write that sent the request, and the email that just arrived or the agent who just
    /// came free must not wait for the next request because of it.
    async fn dispatch_with(&self, queue: &QueueName, trigger: &mut Trigger) -> Result<DispatchReport, RoutingError> {
        let Some(q) = self.queue_map().await?.remove(queue) else {
            warn!(queue = %queue, "routing request for an unknown queue");
            return Ok(DispatchReport::default());
        };
        let mut report = DispatchReport::default();
        let mut conflicts = 0;
        while report.offers_made < MAX_OFFERS_PER_DISPATCH && conflicts < 20 {
            let head = self.store.waiting(queue, 1).await?.into_iter().next();
            let Some(interaction) = trigger.first_waiting(queue, head) else { break };
            let mut free: Vec<AgentRecord> =
                self.store.available_agents().await?.into_iter().filter(|r| r.agent.queues.contains(queue)).collect();
            if let Some(known) = trigger.agent.as_ref().filter(|k| k.agent.queues.contains(queue)) {
                free.retain(|r| r.agent.id != known.agent.id);
                if known.state.can_take_offer(known.agent.capacity) {
                    free.push(known.clone());
                }
            }
            if free.is_empty() {
                break;
            }
            let declined = interaction.routing.declined_by.clone();
            free.sort_by(|a, b| presence::offer_order(&declined, (&a.agent, &a.state), (&b.agent, &b.state)));
            let chosen = &free[0];
            let offer_id = uuid::Uuid::new_v4().to_string();
            let now = self.clock.now();
            let timeout = chrono::Duration::seconds(i64::from(q.offer_timeout_secs));
            let outcome = self
                .store
                .transition(Some(&interaction.id), Some(&chosen.agent.id), &|i, a| {
                    let (Some(i), Some(a)) = (i, a) else { return Err(Refusal::UnknownInteraction) };
                    presence::offer(i, &a.agent, &mut a.state, &offer_id, now, timeout)
                })
                .await?;
            trigger.tried(&interaction.id, &chosen.agent.id, outcome.as_ref().err());
            match outcome {
                Ok(_) => {
                    report.offers_made += 1;
                    info!(interaction_id = %interaction.id, agent_id = %chosen.agent.id, "offered");
                    let expiry = RoutingRequest::OfferExpired {
                        interaction_id: interaction.id.clone(),
                        agent_id: chosen.agent.id.clone(),
                        offer_id,
                    };
                    self.send(&expiry, Duration::from_secs(u64::from(q.offer_timeout_secs))).await?;
                }
                // Another worker got there first (the email or the agent is taken): look again.
                Err(_) => conflicts += 1,
            }
        }
        Ok(report)
    }

    /// Takes routing requests from the queue until `shutdown` flips: the offer worker of
    /// `mailroom serve`. A failed request is left for redelivery (and the dead-letter queue).
    pub async fn run_worker(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let batch = tokio::select! {
                batch = self.work.receive(10, Duration::from_secs(30), Duration::from_secs(1)) => batch,
                _ = shutdown.changed() => return,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(error = %e, "cannot read the routing queue; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for work in batch {
                match self.handle(&work.body).await {
                    Ok(_) => {
                        if let Err(e) = self.work.delete(&work.receipt).await {
                            warn!(error = %e, "cannot delete a handled routing request");
                        }
                    }
                    Err(RoutingError::BadRequest(e)) => {
                        warn!(error = %e, "dropping a malformed routing request");
                        let _ = self.work.delete(&work.receipt).await;
                    }
                    Err(e) => warn!(error = %e, "routing request failed; it will be retried"),
                }
            }
        }
    }

    // ------------------------------------------------------------------ agents

    pub async fn agent(&self, id: &AgentId) -> Result<AgentRecord, RoutingError> {
        self.store.agent(id).await?.ok_or(RoutingError::Refused(Refusal::UnknownAgent))
    }

    pub async fn set_presence(&self, agent: &AgentId, to: ChosenPresence) -> Result<PresenceView, RoutingError> {
        let now = self.clock.now();
        let done = self
            .store
            .transition(None, Some(agent), &|_, a| {
                let a = a.ok_or(Refusal::UnknownAgent)?;
                presence::set_presence(&mut a.state, to, now)
            })
            .await??;
        let record = done.agent.expect("transition returns the agent");
        if record.state.can_take_offer(record.agent.capacity) {
            self.send(&RoutingRequest::AgentAvailable { agent_id: agent.clone() }, Duration::ZERO).await?;
        }
        Ok(PresenceView::from(&record))
    }

    /// The agent has started an email of their own (`POST /v1/emails`): it counts against their
    /// capacity and keeps offers away until they end it.
    pub async fn start_own_email(&self, agent: &AgentId) -> Result<(), RoutingError> {
        let now = self.clock.now();
        self.store
            .transition(None, Some(agent), &|_, a| {
                let a = a.ok_or(Refusal::UnknownAgent)?;
                presence::start_own_email(&mut a.state, now);
                Ok(())
            })
            .await??;
        Ok(())
    }

    pub async fn offers(&self, agent: &AgentId) -> Result<Vec<OfferView>, RoutingError> {
        let now = self.clock.now();
        Ok(self
            .store
            .held_by(agent)
            .await?
            .iter()
            .filter(|i| i.state == InteractionState::Offered)
            .map(|i| OfferView {
                interaction_id: i.id.clone(),
                offer_id: i.routing.offer_id.clone().unwrap_or_default(),
                customer_name: i.customer_name.clone(),
                customer_email: i.customer.to_string(),
                subject: i.subject.clone(),
                queue: i.queue.clone(),
                priority: i.priority.value(),
                waiting_seconds: elapsed_seconds(i.queued_at, now),
                expires_at: i.routing.offer_expires_at,
            })
            .collect())
    }

    /// The agent's own interactions (assigned, not ended).
    pub async fn interactions(&self, agent: &AgentId) -> Result<Vec<InteractionView>, RoutingError> {
        Ok(self
            .store
            .held_by(agent)
            .await?
            .iter()
            .filter(|i| i.state == InteractionState::Assigned)
            .map(InteractionView::from)
            .collect())
    }

    /// One interaction with its transcript, for its agent (or anyone who supervises).
    pub async fn interaction(
        &self,
        caller: &AgentId,
        caller_role: Role,
        id: &InteractionId,
    ) -> Result<(InteractionView, Vec<StoredMessage>), RoutingError> {
        let interaction =
            self.transcripts.interaction(id).await?.ok_or(RoutingError::Refused(Refusal::UnknownInteraction))?;
        if !caller_role.supervises() && interaction.routing.agent.as_ref() != Some(caller) {
            return Err(RoutingError::Refused(Refusal::NotYours));
        }
        let messages = self.transcripts.interaction_messages(id).await?;
        Ok((InteractionView::from(&interaction), messages))
    }

    async fn act(
        &self,
        id: &InteractionId,
        agent: &AgentId,
        change: &(dyn Fn(&mut Interaction, &mut AgentRecord) -> Result<(), Refusal> + Send + Sync),
    ) -> Result<Transitioned, RoutingError> {
        Ok(self
            .store
            .transition(Some(id), Some(agent), &|i, a| {
                let i = i.ok_or(Refusal::UnknownInteraction)?;
                let a = a.ok_or(Refusal::UnknownAgent)?;
                change(i, a)
            })
            .await??)
    }

    /// After an agent's work changed: if they can take more, look for it.
    async fn after_freed(&self, done: &Transitioned) -> Result<(), RoutingError> {
        if let Some(a) = &done.agent
            && a.state.can_take_offer(a.agent.capacity)
        {
            self.send(&RoutingRequest::AgentAvailable { agent_id: a.agent.id.clone() }, Duration::ZERO).await?;
        }
        Ok(())
    }

    async fn requeued(&self, done: &Transitioned) -> Result<(), RoutingError> {
        if let Some(i) = &done.interaction {
            let request = RoutingRequest::InteractionQueued {
                interaction_id: i.id.clone(),
                queue: i.queue.clone(),
                priority: i.priority,
            };
            self.send(&request, Duration::ZERO).await?;
        }
        Ok(())
    }

    pub async fn accept(&self, agent: &AgentId, id: &InteractionId) -> Result<InteractionView, RoutingError> {
        let now = self.clock.now();
        let done = self.act(id, agent, &|i, a| presence::accept(i, &a.agent, &mut a.state, now)).await?;
        self.after_freed(&done).await?;
        Ok(InteractionView::from(done.interaction.as_ref().expect("transition returns it")))
    }

    pub async fn reject(&self, agent: &AgentId, id: &InteractionId) -> Result<InteractionView, RoutingError> {
        let now = self.clock.now();
        let queues = self.queue_map().await?;
        let done = self
            .act(id, agent, &|i, a| {
                let queue = queues.get(&i.queue).cloned().unwrap_or_else(|| EmailQueue::named(i.queue.clone()));
                presence::reject(i, &queue, &a.agent, &mut a.state, now)
            })
            .await?;
        self.requeued(&done).await?;
        Ok(InteractionView::from(done.interaction.as_ref().expect("transition returns it")))
    }

    pub async fn end(&self, agent: &AgentId, id: &InteractionId) -> Result<InteractionView, RoutingError> {
        let now = self.clock.now();
        let done = self.act(id, agent, &|i, a| presence::end(i, &a.agent, &mut a.state, now)).await?;
        self.after_freed(&done).await?;
        Ok(InteractionView::from(done.interaction.as_ref().expect("transition returns it")))
    }

    pub async fn transfer(
        &self,
        agent: &AgentId,
        id: &InteractionId,
        to: &QueueName,
    ) -> Result<InteractionView, RoutingError> {
        let now = self.clock.now();
        let target = self.queue(to).await?;
        let done = self.act(id, agent, &|i, a| presence::transfer(i, &target, &a.agent, &mut a.state, now)).await?;
        self.requeued(&done).await?;
        self.after_freed(&done).await?;
        Ok(InteractionView::from(done.interaction.as_ref().expect("transition returns it")))
    }

    // ------------------------------------------------------------------ supervisors

    pub async fn queue_views(&self) -> Result<Vec<QueueView>, RoutingError> {
        let now = self.clock.now();
        let agents = self.store.agents().await?;
        let mut out = Vec::new();
        for q in self.store.queues().await? {
            let waiting = self.store.waiting(&q.name, 10_000).await?;
            let oldest = waiting.iter().filter_map(|i| i.queued_at).min();
            out.push(QueueView {
                waiting: waiting.len(),
                oldest_wait_seconds: oldest.map(|t| elapsed_seconds(Some(t), now)),
                allow_reject: q.allow_reject,
                offer_timeout_secs: q.offer_timeout_secs,
                available_agents: agents
                    .iter()
                    .filter(|r| r.agent.queues.contains(&q.name) && r.state.can_take_offer(r.agent.capacity))
                    .count(),
                queue: q.name,
            });
        }
        Ok(out)
    }

    pub async fn agent_views(&self) -> Result<Vec<AgentView>, RoutingError> {
        Ok(self
            .store
            .agents()
            .await?
            .into_iter()
            .map(|r| AgentView {
                agent_id: r.agent.id.clone(),
                name: r.agent.name.clone(),
                role: r.agent.role.as_str(),
                queues: r.agent.queues.clone(),
                presence: r.state.presence.as_str(),
                active: r.state.active,
                capacity: r.agent.capacity,
                since: r.state.presence_since,
            })
            .collect())
    }
}

/// Whether an agent record is consistent with the interactions it holds; used by tests and
/// operators to check the invariants after a storm of concurrent work.
pub fn check_invariants(agents: &[AgentRecord], held: &HashMap<AgentId, Vec<Interaction>>) -> Vec<String> {
    let mut problems = Vec::new();
    for r in agents {
        let mine = held.get(&r.agent.id).map(Vec::as_slice).unwrap_or_default();
        let assigned = mine.iter().filter(|i| i.state == InteractionState::Assigned).count() as u32;
        let offered = mine.iter().filter(|i| i.state == InteractionState::Offered).count();
        if assigned != r.state.active {
            problems.push(format!("{}: {} assigned but active = {}", r.agent.id, assigned, r.state.active));
        }
        if assigned > r.agent.capacity {
            problems.push(format!("{}: {} assigned over capacity {}", r.agent.id, assigned, r.agent.capacity));
        }
        if offered > 1 || (offered == 1) != (r.state.presence == Presence::Reserved) {
            problems.push(format!("{}: {} pending offers while {}", r.agent.id, offered, r.state.presence.as_str()));
        }
    }
    problems
}
