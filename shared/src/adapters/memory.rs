//! In-memory adapters: for unit tests and for measuring the ingest CPU path without I/O.
//! They keep the same idempotency rules as the real backends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::agent::Agent;
use crate::domain::ids::{AgentId, EmailAddress, Fingerprint, InteractionId, MessageId, QueueName, RawMailKey};
use crate::domain::interaction::InteractionState;
use crate::domain::interaction::{Interaction, StoredMessage};
use crate::domain::journal::JournalEntry;
use crate::domain::presence::{AgentState, Refusal, waiting_order};
use crate::domain::queue::EmailQueue;
use crate::domain::threading::ThreadCandidate;
use crate::ports::routing::{AgentRecord, RoutingStore, TransitionFn, Transitioned};
use crate::ports::{BackendError, BackendResult, FingerprintClaim, IngestStore, RawMailStore, ReceivedWork, WorkQueue};

#[derive(Default)]
pub struct MemoryRawStore {
    blobs: Mutex<HashMap<RawMailKey, Vec<u8>>>,
}

#[async_trait]
impl RawMailStore for MemoryRawStore {
    async fn put(&self, raw: &[u8]) -> BackendResult<RawMailKey> {
        let key = RawMailKey::of(raw);
        self.blobs.lock().expect("lock").entry(key.clone()).or_insert_with(|| raw.to_vec());
        Ok(key)
    }

    async fn get(&self, key: &RawMailKey) -> BackendResult<Option<Vec<u8>>> {
        Ok(self.blobs.lock().expect("lock").get(key).cloned())
    }
}

#[derive(Default)]
struct State {
    journal: HashMap<RawMailKey, JournalEntry>,
    journal_order: Vec<RawMailKey>,
    fingerprints: HashMap<Fingerprint, RawMailKey>,
    messages: HashMap<Fingerprint, StoredMessage>,
    by_message_id: HashMap<MessageId, Vec<ThreadCandidate>>,
    interactions: HashMap<InteractionId, Interaction>,
    interaction_messages: HashMap<InteractionId, Vec<Fingerprint>>,
    agents: BTreeMap<AgentId, AgentRecord>,
    queues: BTreeMap<QueueName, EmailQueue>,
}

#[derive(Default)]
pub struct MemoryIngestStore {
    state: Mutex<State>,
}

impl State {
    fn index(&mut self, m: &StoredMessage) {
        for id in m.message_id.iter().chain(m.conversation_key.iter()) {
            let list = self.by_message_id.entry(id.clone()).or_default();
            if !list.iter().any(|c| c.interaction_id == m.interaction_id) {
                list.push(ThreadCandidate { message_id: id.clone(), interaction_id: m.interaction_id.clone() });
            }
        }
        self.messages.insert(m.fingerprint.clone(), m.clone());
        self.interaction_messages.entry(m.interaction_id.clone()).or_default().push(m.fingerprint.clone());
    }
}

#[async_trait]
impl IngestStore for MemoryIngestStore {
    async fn journal_get(&self, raw: &RawMailKey) -> BackendResult<Option<JournalEntry>> {
        Ok(self.state.lock().expect("lock").journal.get(raw).cloned())
    }

    async fn journal_begin(&self, entry: &JournalEntry) -> BackendResult<()> {
        let mut s = self.state.lock().expect("lock");
        if !s.journal.contains_key(&entry.raw_key) {
            s.journal.insert(entry.raw_key.clone(), entry.clone());
            s.journal_order.push(entry.raw_key.clone());
        }
        Ok(())
    }

    async fn journal_finalize(&self, entry: &JournalEntry) -> BackendResult<()> {
        let mut s = self.state.lock().expect("lock");
        if !s.journal.contains_key(&entry.raw_key) {
            s.journal_order.push(entry.raw_key.clone());
        }
        s.journal.insert(entry.raw_key.clone(), entry.clone());
        Ok(())
    }

    async fn journal_recent(&self, limit: usize) -> BackendResult<Vec<JournalEntry>> {
        let s = self.state.lock().expect("lock");
        Ok(s.journal_order.iter().rev().take(limit).filter_map(|k| s.journal.get(k).cloned()).collect())
    }

    async fn claim_fingerprint(&self, fingerprint: &Fingerprint, raw: &RawMailKey) -> BackendResult<FingerprintClaim> {
        let mut s = self.state.lock().expect("lock");
        let owner = s.fingerprints.entry(fingerprint.clone()).or_insert_with(|| raw.clone());
        Ok(if owner == raw { FingerprintClaim::Ours } else { FingerprintClaim::Theirs(owner.clone()) })
    }

    async fn message(&self, fingerprint: &Fingerprint) -> BackendResult<Option<StoredMessage>> {
        Ok(self.state.lock().expect("lock").messages.get(fingerprint).cloned())
    }

    async fn messages_with_ids(&self, ids: &[MessageId]) -> BackendResult<Vec<ThreadCandidate>> {
        let s = self.state.lock().expect("lock");
        Ok(ids.iter().filter_map(|id| s.by_message_id.get(id)).flatten().cloned().collect())
    }

    async fn interaction(&self, id: &InteractionId) -> BackendResult<Option<Interaction>> {
        Ok(self.state.lock().expect("lock").interactions.get(id).cloned())
    }

    async fn interaction_messages(&self, id: &InteractionId) -> BackendResult<Vec<StoredMessage>> {
        let s = self.state.lock().expect("lock");
        Ok(s.interaction_messages
            .get(id)
            .map(|fps| fps.iter().filter_map(|f| s.messages.get(f).cloned()).collect())
            .unwrap_or_default())
    }

    async fn create_interaction(&self, interaction: &Interaction, first: &StoredMessage) -> BackendResult<()> {
        let mut s = self.state.lock().expect("lock");
        if let Some(existing) = s.interactions.get(&interaction.id) {
            if existing.origin != interaction.origin {
                return Err(BackendError::Conflict {
                    operation: "create interaction",
                    detail: format!("interaction {} exists with another origin", interaction.id),
                });
            }
            return Ok(());
        }
        s.interactions.insert(interaction.id.clone(), interaction.clone());
        s.index(first);
        Ok(())
    }

    async fn append_message(
        &self,
        message: &StoredMessage,
        new_participants: &[EmailAddress],
        requeue: bool,
    ) -> BackendResult<Interaction> {
        let mut s = self.state.lock().expect("lock");
        let Some(mut interaction) = s.interactions.get(&message.interaction_id).cloned() else {
            return Err(BackendError::Conflict {
                operation: "append message",
                detail: format!("no interaction {}", message.interaction_id),
            });
        };
        if s.messages.contains_key(&message.fingerprint) {
            return Ok(interaction);
        }
        interaction.absorb(message, new_participants, requeue);
        s.interactions.insert(interaction.id.clone(), interaction.clone());
        s.index(message);
        Ok(interaction)
    }
}

#[async_trait]
impl RoutingStore for MemoryIngestStore {
    async fn put_agent(&self, agent: &Agent) -> BackendResult<()> {
        let mut s = self.state.lock().expect("lock");
        match s.agents.get_mut(&agent.id) {
            Some(record) => record.agent = agent.clone(),
            None => {
                let record = AgentRecord { agent: agent.clone(), state: AgentState::new(chrono::Utc::now()) };
                s.agents.insert(agent.id.clone(), record);
            }
        }
        Ok(())
    }

    async fn agent(&self, id: &AgentId) -> BackendResult<Option<AgentRecord>> {
        Ok(self.state.lock().expect("lock").agents.get(id).cloned())
    }

    async fn agents(&self) -> BackendResult<Vec<AgentRecord>> {
        Ok(self.state.lock().expect("lock").agents.values().cloned().collect())
    }

    async fn put_queue(&self, queue: &EmailQueue) -> BackendResult<()> {
        self.state.lock().expect("lock").queues.insert(queue.name.clone(), queue.clone());
        Ok(())
    }

    async fn queues(&self) -> BackendResult<Vec<EmailQueue>> {
        Ok(self.state.lock().expect("lock").queues.values().cloned().collect())
    }

    async fn waiting(&self, queue: &QueueName, limit: usize) -> BackendResult<Vec<Interaction>> {
        let s = self.state.lock().expect("lock");
        let mut list: Vec<&Interaction> =
            s.interactions.values().filter(|i| i.state == InteractionState::Queued && &i.queue == queue).collect();
        list.sort_by(|a, b| waiting_order((a, 0), (b, 0)));
        Ok(list.into_iter().take(limit).cloned().collect())
    }

    async fn held_by(&self, agent: &AgentId) -> BackendResult<Vec<Interaction>> {
        let s = self.state.lock().expect("lock");
        let mut list: Vec<Interaction> = s
            .interactions
            .values()
            .filter(|i| matches!(i.state, InteractionState::Offered | InteractionState::Assigned))
            .filter(|i| i.routing.agent.as_ref() == Some(agent))
            .cloned()
            .collect();
        list.sort_by_key(|i| i.updated_at);
        Ok(list)
    }

    async fn transition(
        &self,
        interaction: Option<&InteractionId>,
        agent: Option<&AgentId>,
        change: &TransitionFn<'_>,
    ) -> BackendResult<Result<Transitioned, Refusal>> {
        let mut s = self.state.lock().expect("lock");
        let mut i = interaction.and_then(|id| s.interactions.get(id).cloned());
        let mut a = agent.and_then(|id| s.agents.get(id).cloned());
        if let Err(refusal) = change(i.as_mut(), a.as_mut()) {
            return Ok(Err(refusal));
        }
        if let Some(i) = &i {
            s.interactions.insert(i.id.clone(), i.clone());
        }
        if let Some(a) = &a {
            s.agents.insert(a.agent.id.clone(), a.clone());
        }
        Ok(Ok(Transitioned { interaction: i, agent: a }))
    }
}

struct QueuedItem {
    id: u64,
    body: String,
    visible_at: Instant,
    receive_count: u32,
}

#[derive(Default)]
struct QueueState {
    next_id: u64,
    items: VecDeque<QueuedItem>,
    dead: Vec<String>,
}

/// An in-memory queue with SQS semantics (visibility, redelivery, dead letters after `max_receives`).
pub struct MemoryWorkQueue {
    name: String,
    max_receives: u32,
    inner: Mutex<QueueState>,
}

impl MemoryWorkQueue {
    pub fn new(name: &str, max_receives: u32) -> Self {
        Self { name: name.into(), max_receives, inner: Mutex::new(QueueState::default()) }
    }

    /// Bodies moved to the dead-letter list.
    pub fn dead_letters(&self) -> Vec<String> {
        self.inner.lock().expect("lock").dead.clone()
    }
}

#[async_trait]
impl WorkQueue for MemoryWorkQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str, delay: Duration) -> BackendResult<()> {
        let mut g = self.inner.lock().expect("lock");
        g.next_id += 1;
        let id = g.next_id;
        g.items.push_back(QueuedItem { id, body: body.into(), visible_at: Instant::now() + delay, receive_count: 0 });
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration, _wait: Duration) -> BackendResult<Vec<ReceivedWork>> {
        let mut g = self.inner.lock().expect("lock");
        let now = Instant::now();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for item in g.items.iter_mut() {
            if out.len() >= max {
                break;
            }
            if item.visible_at > now {
                continue;
            }
            if item.receive_count >= self.max_receives {
                dead.push(item.id);
                continue;
            }
            item.receive_count += 1;
            item.visible_at = now + visibility;
            out.push(ReceivedWork {
                body: item.body.clone(),
                receipt: format!("{}:{}", item.id, item.receive_count),
                receive_count: item.receive_count,
            });
        }
        for id in dead {
            if let Some(pos) = g.items.iter().position(|i| i.id == id) {
                let item = g.items.remove(pos).expect("position is valid");
                g.dead.push(item.body);
            }
        }
        Ok(out)
    }

    async fn delete(&self, receipt: &str) -> BackendResult<()> {
        let id: u64 = receipt.split(':').next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut g = self.inner.lock().expect("lock");
        g.items.retain(|i| i.id != id);
        Ok(())
    }

    async fn release(&self, receipt: &str, delay: Duration) -> BackendResult<()> {
        let id: u64 = receipt.split(':').next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut g = self.inner.lock().expect("lock");
        if let Some(item) = g.items.iter_mut().find(|i| i.id == id) {
            item.visible_at = Instant::now() + delay;
        }
        Ok(())
    }

    async fn depth(&self) -> BackendResult<u64> {
        Ok(self.inner.lock().expect("lock").items.len() as u64)
    }
}
