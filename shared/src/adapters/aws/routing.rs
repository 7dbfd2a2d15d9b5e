//! `RoutingStore` on DynamoDB, in ingest's table: an interaction stays one META item that ingest
//! and routing both write under its `version`, so an offer and an appended message can never
//! overwrite each other.
//!
//! | record | pk | sk | attributes | `gsi1pk` / `gsi1sk` |
//! |---|---|---|---|---|
//! | interaction, waiting | `INT#<id>` | `META` | as in `dynamodb.rs` | `WAITING#<queue>` / `<255 - priority, 3 digits>#<queued_at>#<id>` |
//! | interaction, offered or assigned | `INT#<id>` | `META` | | `HELD#<agent>` / `<queued_at>#<id>` |
//! | interaction, ended | `INT#<id>` | `META` | | none (not in the index) |
//! | agent | `AGENT#<id>` | `STATE` | `agent` (JSON), `state` (JSON `AgentState`), `version` (N) | `AGENTS` / `<id>` |
//! | queue | `QUEUE#<name>` | `QUEUE` | `data` (JSON) | `QUEUES` / `<name>` |
//!
//! Ascending `gsi1sk` order under `WAITING#<queue>` is the offer order of
//! `presence::waiting_order`: highest priority, then longest waiting, then id. Timestamps are UTC
//! with microseconds, fixed width, so they sort as strings.
//!
//! An agent who can take an offer now (available, no offer pending, below capacity) is also in
//! the sparse index `gsi2`: `gsi2pk` = `AVAILABLE`, `gsi2sk` = `<idle_since>#<id>`, longest idle
//! first. Every write of an agent item sets or removes those two attributes from the state it
//! writes, so an offer reads the few free agents instead of the whole directory.
//!
//! The indexes are eventually consistent, so listings may be a moment stale. That is safe: every
//! change goes through [`RoutingStore::transition`], which reads both records consistently and
//! writes them back in one transaction conditioned on the versions it read. (The offer worker
//! also reads the record that triggered a routing request directly, so a lagging index cannot
//! make it miss the agent who just came free or the email that just arrived.)

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, TransactWriteItem};
use tracing::debug;

use super::dynamodb::{
    DynamoIngestStore, GSI1, Item, MAX_ATTEMPTS, backoff, decode, encode, interaction_pk, key, s, timestamp, version_of,
};
use super::{SqsWorkQueue, classify};
use crate::config::ConfigError;
use crate::domain::agent::Agent;
use crate::domain::ids::{AgentId, InteractionId, QueueName};
use crate::domain::interaction::{Interaction, InteractionState};
use crate::domain::presence::{AgentState, Refusal};
use crate::domain::queue::EmailQueue;
use crate::ports::routing::{AgentRecord, RoutingStore, TransitionFn, Transitioned};
use crate::ports::{BackendError, BackendResult, SystemClock};
use crate::usecases::routing::RoutingService;

/// Where routing's resources are: the offer and agent-api functions' environment (set by
/// `template.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingSettings {
    /// The state table (`MAILROOM_TABLE`), shared with ingest.
    pub table: String,
    /// The routing queue (`MAILROOM_ROUTING_QUEUE_URL`): routing requests and delayed time-outs.
    pub routing_queue_url: String,
}

impl RoutingSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`RoutingSettings::from_env`], with the variables looked up by `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| {
            lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).ok_or(ConfigError::MissingEnv { name })
        };
        Ok(Self { table: required("MAILROOM_TABLE")?, routing_queue_url: required("MAILROOM_ROUTING_QUEUE_URL")? })
    }
}

/// The routing service on DynamoDB (agents, queues, interactions in the state table) and SQS
/// (the routing queue), with clients built from `config` once per process.
pub fn aws_routing_service(config: &aws_config::SdkConfig, settings: &RoutingSettings) -> RoutingService {
    let store = Arc::new(DynamoIngestStore::new(aws_sdk_dynamodb::Client::new(config), &settings.table));
    RoutingService {
        store: store.clone(),
        transcripts: store,
        work: Arc::new(SqsWorkQueue::new(aws_sdk_sqs::Client::new(config), &settings.routing_queue_url)),
        clock: Arc::new(SystemClock),
    }
}

const AGENTS_GSI_PK: &str = "AGENTS";
/// The sparse index of agents who can take an offer now (see the module docs).
const AVAILABLE_GSI: &str = "gsi2";
const AVAILABLE_GSI_PK: &str = "AVAILABLE";
const QUEUES_GSI_PK: &str = "QUEUES";
/// DynamoDB's largest page; `Limit` above it is allowed but buys nothing.
const MAX_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
enum RoutingItemError {
    #[error("routing records ({records}) kept changing; gave up after {attempts} attempts")]
    Contention { records: String, attempts: u32 },
}

fn waiting_pk(queue: &QueueName) -> String {
    format!("WAITING#{queue}")
}

fn held_pk(agent: &AgentId) -> String {
    format!("HELD#{agent}")
}

fn agent_key(id: &AgentId) -> Item {
    key(format!("AGENT#{id}"), "STATE")
}

fn queue_key(name: &QueueName) -> Item {
    key(format!("QUEUE#{name}"), "QUEUE")
}

/// When the interaction started waiting (ingest always sets it; `created_at` for old records).
fn waiting_since(i: &Interaction) -> String {
    timestamp(i.queued_at.unwrap_or(i.created_at))
}

/// The `gsi1` key of an interaction's META item, by its state: in its queue's waiting list, in
/// its agent's list, or (ended) in no list. `dynamodb.rs`'s META builder calls this on every write.
pub(super) fn interaction_index(i: &Interaction) -> Option<(String, String)> {
    match i.state {
        InteractionState::Queued => {
            // Inverted so that an ascending query returns the highest priority first; three digits
            // cover any `u8`, so the key stays fixed width whatever the priority range becomes.
            let inverted = u8::MAX - i.priority.value();
            Some((waiting_pk(&i.queue), format!("{inverted:03}#{}#{}", waiting_since(i), i.id)))
        }
        InteractionState::Offered | InteractionState::Assigned => {
            let agent = i.routing.agent.as_ref()?;
            Some((held_pk(agent), format!("{}#{}", waiting_since(i), i.id)))
        }
        InteractionState::Ended => None,
    }
}

/// The `gsi2` key of an agent item: present only while the agent can take an offer.
fn available_index(record: &AgentRecord) -> Option<(String, String)> {
    record
        .state
        .can_take_offer(record.agent.capacity)
        .then(|| (AVAILABLE_GSI_PK.to_owned(), format!("{}#{}", timestamp(record.state.idle_since), record.agent.id)))
}

/// The whole agent item. A `Put` replaces the item, so leaving out the `gsi2` keys removes the
/// agent from the available index.
fn agent_item(record: &AgentRecord, version: u64) -> BackendResult<Item> {
    let mut item = agent_key(&record.agent.id);
    item.insert("agent".into(), s(encode(&record.agent)?));
    item.insert("state".into(), s(encode(&record.state)?));
    item.insert("version".into(), AttributeValue::N(version.to_string()));
    item.insert("gsi1pk".into(), s(AGENTS_GSI_PK));
    item.insert("gsi1sk".into(), s(record.agent.id.as_str()));
    if let Some((pk, sk)) = available_index(record) {
        item.insert("gsi2pk".into(), s(pk));
        item.insert("gsi2sk".into(), s(sk));
    }
    Ok(item)
}

fn agent_record(item: &Item) -> BackendResult<AgentRecord> {
    Ok(AgentRecord { agent: decode(item, "agent")?, state: decode(item, "state")? })
}

/// The condition that a record is as it was read: the same `version`, or still absent.
fn unchanged_since(read: Option<u64>) -> (&'static str, Item, HashMap<String, String>) {
    let names = HashMap::from([("#version".to_owned(), "version".to_owned())]);
    match read {
        None => ("attribute_not_exists(pk)", Item::new(), HashMap::new()),
        Some(0) => ("attribute_exists(pk) AND attribute_not_exists(#version)", Item::new(), names),
        Some(v) => {
            ("#version = :version", Item::from([(":version".to_owned(), AttributeValue::N(v.to_string()))]), names)
        }
    }
}

impl DynamoIngestStore {
    async fn read_agent(&self, id: &AgentId) -> BackendResult<Option<(AgentRecord, u64)>> {
        let Some(item) = self.get("dynamodb get agent", agent_key(id)).await? else {
            return Ok(None);
        };
        Ok(Some((agent_record(&item)?, version_of(&item))))
    }

    /// Items under one `gsi1` partition in index order, following `LastEvaluatedKey` until it is
    /// absent (or `limit` items are in).
    async fn query_index(&self, operation: &'static str, pk: String, limit: Option<usize>) -> BackendResult<Vec<Item>> {
        self.query_gsi(operation, (GSI1, "gsi1pk"), pk, limit).await
    }

    /// Items under one partition of `index` (its name and partition key attribute), as
    /// [`Self::query_index`].
    async fn query_gsi(
        &self,
        operation: &'static str,
        (index, index_pk): (&str, &str),
        pk: String,
        limit: Option<usize>,
    ) -> BackendResult<Vec<Item>> {
        let mut items = Vec::new();
        if limit == Some(0) {
            return Ok(items);
        }
        let mut start: Option<Item> = None;
        loop {
            let page = limit.map(|l| (l - items.len()).min(MAX_PAGE) as i32);
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#index_pk = :pk")
                .expression_attribute_names("#index_pk", index_pk)
                .expression_attribute_values(":pk", s(pk.clone()))
                .set_limit(page)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(operation, e))?;
            items.extend(output.items.unwrap_or_default());
            if let Some(limit) = limit
                && items.len() >= limit
            {
                items.truncate(limit);
                return Ok(items);
            }
            match output.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => return Ok(items),
            }
        }
    }

    /// The write of one record in a transition: the new item if it changed, else a check that it
    /// did not change either, so the decision rests on both records as read.
    fn guarded(
        &self,
        key: Item,
        read: Option<u64>,
        changed: Option<BackendResult<Item>>,
    ) -> BackendResult<TransactWriteItem> {
        let condition = unchanged_since(read);
        if let Some(item) = changed {
            return self.put(item?, Some(condition));
        }
        let (expression, values, names) = condition;
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .condition_expression(expression)
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .set_expression_attribute_names((!names.is_empty()).then_some(names))
            .build()
            .map_err(|e| BackendError::permanent("dynamodb build transaction", e))?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }
}

#[async_trait]
impl RoutingStore for DynamoIngestStore {
    async fn put_agent(&self, agent: &Agent) -> BackendResult<()> {
        const OP: &str = "dynamodb put agent";
        // Read, then write the whole item conditioned on what was read: the directory entry is
        // replaced, an existing state is kept, the available index follows a changed capacity,
        // and an unchanged entry is not written (so re-seeding at every cold start costs nothing).
        for attempt in 1..=MAX_ATTEMPTS {
            let (record, read) = match self.read_agent(&agent.id).await? {
                Some((existing, _)) if existing.agent == *agent => return Ok(()),
                Some((existing, version)) => {
                    (AgentRecord { agent: agent.clone(), state: existing.state }, Some(version))
                }
                None => (AgentRecord { agent: agent.clone(), state: AgentState::new(chrono::Utc::now()) }, None),
            };
            let (condition, values, names) = unchanged_since(read);
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(agent_item(&record, read.unwrap_or(0) + 1)?))
                .condition_expression(condition)
                .set_expression_attribute_values((!values.is_empty()).then_some(values))
                .set_expression_attribute_names((!names.is_empty()).then_some(names))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                // Changed meanwhile (an offer, a presence change): apply again on the new state.
                Err(err)
                    if matches!(err.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) =>
                {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(err) => return Err(classify(OP, err)),
            }
        }
        Err(BackendError::transient(
            OP,
            RoutingItemError::Contention { records: format!("agent {}", agent.id), attempts: MAX_ATTEMPTS },
        ))
    }

    async fn agent(&self, id: &AgentId) -> BackendResult<Option<AgentRecord>> {
        Ok(self.read_agent(id).await?.map(|(record, _)| record))
    }

    async fn agents(&self) -> BackendResult<Vec<AgentRecord>> {
        self.query_index("dynamodb query agents", AGENTS_GSI_PK.to_owned(), None)
            .await?
            .iter()
            .map(agent_record)
            .collect()
    }

    async fn available_agents(&self) -> BackendResult<Vec<AgentRecord>> {
        let items = self
            .query_gsi("dynamodb query available agents", (AVAILABLE_GSI, "gsi2pk"), AVAILABLE_GSI_PK.into(), None)
            .await?;
        let mut available = Vec::with_capacity(items.len());
        for item in &items {
            let record = agent_record(item)?;
            // The index key and the state are one item version; this only guards against a
            // hand-edited item.
            if record.state.can_take_offer(record.agent.capacity) {
                available.push(record);
            }
        }
        Ok(available)
    }

    async fn put_queue(&self, queue: &EmailQueue) -> BackendResult<()> {
        let mut item = queue_key(&queue.name);
        item.insert("data".into(), s(encode(queue)?));
        item.insert("gsi1pk".into(), s(QUEUES_GSI_PK));
        item.insert("gsi1sk".into(), s(queue.name.as_str()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| classify("dynamodb put queue", e))?;
        Ok(())
    }

    async fn queues(&self) -> BackendResult<Vec<EmailQueue>> {
        self.query_index("dynamodb query queues", QUEUES_GSI_PK.to_owned(), None)
            .await?
            .iter()
            .map(|item| decode(item, "data"))
            .collect()
    }

    async fn waiting(&self, queue: &QueueName, limit: usize) -> BackendResult<Vec<Interaction>> {
        self.query_index("dynamodb query waiting", waiting_pk(queue), Some(limit))
            .await?
            .iter()
            .map(|item| decode(item, "data"))
            .collect()
    }

    async fn held_by(&self, agent: &AgentId) -> BackendResult<Vec<Interaction>> {
        let items = self.query_index("dynamodb query held", held_pk(agent), None).await?;
        let mut held = Vec::with_capacity(items.len());
        for item in &items {
            let i: Interaction = decode(item, "data")?;
            // The index key and the data are one item version; this only guards against a
            // hand-edited item.
            if matches!(i.state, InteractionState::Offered | InteractionState::Assigned)
                && i.routing.agent.as_ref() == Some(agent)
            {
                held.push(i);
            }
        }
        Ok(held)
    }

    async fn transition(
        &self,
        interaction: Option<&InteractionId>,
        agent: Option<&AgentId>,
        change: &TransitionFn<'_>,
    ) -> BackendResult<Result<Transitioned, Refusal>> {
        const OP: &str = "dynamodb route";
        for attempt in 1..=MAX_ATTEMPTS {
            let (read_i, read_a) = tokio::try_join!(
                async {
                    match interaction {
                        Some(id) => self.read_interaction(id).await,
                        None => Ok(None),
                    }
                },
                async {
                    match agent {
                        Some(id) => self.read_agent(id).await,
                        None => Ok(None),
                    }
                },
            )?;
            let mut i = read_i.as_ref().map(|(i, _)| i.clone());
            let mut a = read_a.as_ref().map(|(a, _)| a.clone());
            // Refusals are not re-checked under a condition: each one rests on a single record,
            // as read consistently just now.
            if let Err(refusal) = change(i.as_mut(), a.as_mut()) {
                return Ok(Err(refusal));
            }

            let mut items = Vec::with_capacity(2);
            if let Some(id) = interaction {
                let read = read_i.as_ref().map(|(_, v)| *v);
                let changed = match (&i, &read_i) {
                    (Some(new), Some((old, _))) if new == old => None,
                    (Some(new), _) => Some(Self::meta_item(new, read.unwrap_or(0) + 1)),
                    (None, _) => None,
                };
                items.push(self.guarded(key(interaction_pk(id), "META"), read, changed)?);
            }
            if let Some(id) = agent {
                let read = read_a.as_ref().map(|(_, v)| *v);
                let changed = match (&a, &read_a) {
                    (Some(new), Some((old, _))) if new == old => None,
                    (Some(new), _) => Some(agent_item(new, read.unwrap_or(0) + 1)),
                    (None, _) => None,
                };
                items.push(self.guarded(agent_key(id), read, changed)?);
            }
            if items.is_empty() {
                return Ok(Ok(Transitioned { interaction: i, agent: a }));
            }

            // The SDK gives the request an idempotency token, so its own retries cannot apply it twice.
            let cancelled = match self.transact(OP, items).await? {
                Ok(()) => return Ok(Ok(Transitioned { interaction: i, agent: a })),
                Err(cancelled) => cancelled,
            };
            if !cancelled.any_condition_failed() && !cancelled.error.is_transient() {
                return Err(cancelled.error);
            }
            debug!(
                interaction_id = interaction.map(InteractionId::as_str),
                agent_id = agent.map(AgentId::as_str),
                attempt,
                "routing records changed concurrently; applying again"
            );
            tokio::time::sleep(backoff(attempt)).await;
        }
        let records = [interaction.map(|i| format!("interaction {i}")), agent.map(|a| format!("agent {a}"))]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        Err(BackendError::transient(OP, RoutingItemError::Contention { records, attempts: MAX_ATTEMPTS }))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::domain::ids::{Category, ChannelName, EmailAddress, Fingerprint};
    use crate::domain::interaction::{Priority, Sentiment};

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc)
    }

    fn interaction(n: u8, priority: u8, queued_at: &str) -> Interaction {
        let fp = Fingerprint::from_digest([n; 32]);
        Interaction {
            id: InteractionId::for_first_message(&fp),
            channel: ChannelName::parse("support").unwrap(),
            customer: EmailAddress::parse("alice@example.org").unwrap(),
            customer_name: None,
            subject: "Help".into(),
            queue: QueueName::parse("support").unwrap(),
            priority: Priority::new(priority).unwrap(),
            state: InteractionState::Queued,
            category: Category::parse("general").unwrap(),
            sentiment: Sentiment::Neutral,
            participants: vec![],
            origin: fp,
            message_count: 1,
            created_at: at(queued_at),
            updated_at: at(queued_at),
            queued_at: Some(at(queued_at)),
            routing: Default::default(),
        }
    }

    fn sk(i: &Interaction) -> String {
        interaction_index(i).unwrap().1
    }

    #[test]
    fn priority_is_inverted_and_zero_padded() {
        let (p1, p9, p10) = (
            interaction(1, 1, "2026-01-01T00:00:00Z"),
            interaction(2, 9, "2026-01-01T00:00:00Z"),
            interaction(3, 10, "2026-01-01T00:00:00Z"),
        );
        assert!(sk(&p1).starts_with("254#"), "{}", sk(&p1));
        assert!(sk(&p10).starts_with("245#"), "{}", sk(&p10));
        // As strings, not numbers: 10 sorts before 9 before 1.
        assert!(sk(&p10) < sk(&p9) && sk(&p9) < sk(&p1));
    }

    #[test]
    fn waiting_keys_sort_like_waiting_order() {
        let mut list = vec![
            interaction(1, 5, "2026-01-01T10:00:00.5Z"),
            interaction(2, 5, "2026-01-01T09:59:59Z"),
            interaction(3, 9, "2026-01-01T12:00:00Z"),
            interaction(4, 1, "2025-12-31T00:00:00Z"),
            interaction(5, 5, "2026-01-01T10:00:00.000001Z"),
            interaction(6, 5, "2026-01-01T10:00:00.000001Z"),
        ];
        let mut by_key = list.clone();
        by_key.sort_by_key(sk);
        list.sort_by(|a, b| crate::domain::presence::waiting_order((a, 0), (b, 0)));
        let ids = |v: &[Interaction]| v.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&by_key), ids(&list));
    }

    #[test]
    fn timestamps_in_keys_have_a_fixed_width() {
        let whole = interaction(1, 5, "2026-01-01T10:00:00Z");
        let fraction = interaction(1, 5, "2026-01-01T10:00:00.123456789Z");
        assert_eq!(sk(&whole), format!("250#2026-01-01T10:00:00.000000Z#{}", whole.id));
        assert_eq!(sk(&fraction), format!("250#2026-01-01T10:00:00.123456Z#{}", fraction.id));
        assert_eq!(sk(&whole).len(), sk(&fraction).len());
        // A later time with fewer significant digits still sorts after.
        assert!(sk(&interaction(1, 5, "2026-01-01T10:00:00.9Z")) < sk(&interaction(1, 5, "2026-01-01T10:00:01Z")));
        // Non-UTC input is stored in UTC.
        let offset = interaction(1, 5, "2026-01-01T12:00:00+02:00");
        assert_eq!(sk(&offset), sk(&whole));
    }

    #[test]
    fn the_index_follows_the_state() {
        let mut i = interaction(1, 5, "2026-01-01T10:00:00Z");
        assert_eq!(interaction_index(&i).unwrap().0, "WAITING#support");
        let ana = AgentId::parse("ana").unwrap();
        i.state = InteractionState::Offered;
        i.routing.agent = Some(ana.clone());
        assert_eq!(
            interaction_index(&i).unwrap(),
            ("HELD#ana".into(), format!("2026-01-01T10:00:00.000000Z#{}", i.id))
        );
        i.state = InteractionState::Assigned;
        assert_eq!(interaction_index(&i).unwrap().0, "HELD#ana");
        i.state = InteractionState::Ended;
        i.routing.agent = None;
        assert_eq!(interaction_index(&i), None);
    }

    #[test]
    fn only_agents_who_can_take_an_offer_are_in_the_available_index() {
        let since = at("2026-01-01T09:00:00Z");
        let agent = Agent {
            id: AgentId::parse("ana").unwrap(),
            name: "Ana".into(),
            email: crate::domain::ids::EmailAddress::parse("ana@example.com").unwrap(),
            queues: vec![QueueName::parse("support").unwrap()],
            capacity: 2,
            role: crate::domain::agent::Role::Agent,
        };
        let mut record = AgentRecord { agent, state: AgentState::new(since) };
        let indexed = |r: &AgentRecord| {
            let item = agent_item(r, 1).unwrap();
            assert_eq!(item.contains_key("gsi2pk"), item.contains_key("gsi2sk"));
            item.get("gsi2sk").map(|v| v.as_s().unwrap().clone())
        };
        assert_eq!(indexed(&record), None, "working offline");
        record.state.presence = crate::domain::presence::Presence::Available;
        assert_eq!(indexed(&record).as_deref(), Some("2026-01-01T09:00:00.000000Z#ana"), "longest idle sorts first");
        record.state.active = 1;
        assert!(indexed(&record).is_some(), "below capacity");
        record.state.active = 2;
        assert_eq!(indexed(&record), None, "at capacity");
        record.state.active = 0;
        record.state.pending_offer = Some(interaction(1, 5, "2026-01-01T10:00:00Z").id);
        assert_eq!(indexed(&record), None, "an offer is pending");
    }

    #[test]
    fn settings_name_the_missing_variable() {
        let env = HashMap::from([("MAILROOM_TABLE", "t"), ("MAILROOM_ROUTING_QUEUE_URL", " u ")]);
        let s = RoutingSettings::from_lookup(|n| env.get(n).map(|v| v.to_string())).unwrap();
        assert_eq!((s.table.as_str(), s.routing_queue_url.as_str()), ("t", "u"));
        let err = RoutingSettings::from_lookup(|n| (n == "MAILROOM_TABLE").then(|| "t".to_owned())).unwrap_err();
        assert!(matches!(err, ConfigError::MissingEnv { name: "MAILROOM_ROUTING_QUEUE_URL" }), "{err:?}");
    }

    #[test]
    fn conditions_match_what_was_read() {
        assert_eq!(unchanged_since(None).0, "attribute_not_exists(pk)");
        assert_eq!(unchanged_since(Some(0)).0, "attribute_exists(pk) AND attribute_not_exists(#version)");
        let (expression, values, _) = unchanged_since(Some(7));
        assert_eq!(expression, "#version = :version");
        assert_eq!(values.get(":version"), Some(&AttributeValue::N("7".into())));
    }
}
