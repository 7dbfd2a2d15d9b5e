//! Ingest state in one DynamoDB table (`pk`/`sk` strings, GSI `gsi1` on `gsi1pk`/`gsi1sk`).
//!
//! | record | pk | sk | attributes |
//! |---|---|---|---|
//! | journal entry | `JOURNAL#<raw>` | `JOURNAL` | `data` (JSON), `state`; `gsi1pk` = `JOURNAL`, `gsi1sk` = `<received_at>#<raw>` |
//! | fingerprint claim | `FP#<fp>` | `FP` | `raw` |
//! | message pointer | `MSG#<fp>` | `MSG` | `interaction_id`, `transcript_sk` |
//! | Message-ID index | `MID#<message-id>` | `INT#<interaction>` | `message_id`, `interaction_id` (also for Outlook's conversation key) |
//! | interaction | `INT#<id>` | `META` | `data` (JSON), `origin`, `state`, `version` (N); `gsi1pk`/`gsi1sk` while waiting or held (see `routing.rs`) |
//! | transcript entry | `INT#<id>` | `MSG#<received_at>#<fp>` | `data` (JSON message), `fp` |
//!
//! A message's JSON lives once, on its transcript entry, so a transcript is one `Query`; the
//! `MSG#<fp>` pointer answers "do we hold this message, and where". Timestamps are RFC 3339 in
//! UTC with microseconds, fixed width, so they sort as strings.
//!
//! Every write is idempotent: first writes are conditional (`attribute_not_exists(pk)`), an
//! interaction's first message is written in the same transaction as the interaction, and appends
//! use optimistic concurrency on `version` with the message pointer's own condition deciding
//! whether a retried append already happened.
//!
//! Routing (`routing.rs`) shares the interaction's META item and its `version`, so an offer and
//! an append cannot overwrite each other, and [`DynamoIngestStore::meta_item`] is the one writer
//! of its routing index keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::classify;
use crate::domain::ids::{EmailAddress, Fingerprint, InteractionId, MessageId, RawMailKey};
use crate::domain::interaction::{Interaction, StoredMessage};
use crate::domain::journal::{JournalEntry, JournalState};
use crate::domain::threading::ThreadCandidate;
use crate::ports::{BackendError, BackendResult, FingerprintClaim, IngestStore};

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) const GSI1: &str = "gsi1";
const JOURNAL_GSI_PK: &str = "JOURNAL";
const NOT_EXISTS: &str = "attribute_not_exists(pk)";
const CONDITION_FAILED: &str = "ConditionalCheckFailed";
/// Cancellation reasons that a retry can get past.
const RETRYABLE_REASONS: &[&str] = &["TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"];
/// Attempts at a contended transaction. Each round lets at least one writer through, so this
/// covers a burst of that many concurrent appends to one interaction.
pub(super) const MAX_ATTEMPTS: u32 = 16;
/// Items are capped at 400 KB; keep the JSON well below, leaving room for keys and attributes.
const MAX_DATA_BYTES: usize = 380 * 1024;
/// Parallel `Query` calls for `messages_with_ids` (up to 50 ids).
const ID_LOOKUP_CONCURRENCY: usize = 8;

/// A stored item that does not have the shape this adapter writes.
#[derive(Debug, thiserror::Error)]
enum ItemError {
    #[error("item {pk} has no string attribute {attribute}")]
    Missing { pk: String, attribute: &'static str },
    #[error("attribute {attribute} of item {pk} does not decode")]
    Decode {
        pk: String,
        attribute: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("message {0} does not fit in a DynamoDB item even without its body")]
    TooLarge(Fingerprint),
    #[error("interaction {id} kept changing; gave up after {attempts} attempts")]
    Contention { id: InteractionId, attempts: u32 },
}

pub struct DynamoIngestStore {
    pub(super) client: aws_sdk_dynamodb::Client,
    pub(super) table: String,
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(super) fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn journal_pk(raw: &RawMailKey) -> String {
    format!("JOURNAL#{raw}")
}

fn fingerprint_pk(fp: &Fingerprint) -> String {
    format!("FP#{fp}")
}

fn message_pk(fp: &Fingerprint) -> String {
    format!("MSG#{fp}")
}

fn message_id_pk(id: &MessageId) -> String {
    format!("MID#{id}")
}

pub(super) fn interaction_pk(id: &InteractionId) -> String {
    format!("INT#{id}")
}

fn transcript_sk(m: &StoredMessage) -> String {
    format!("MSG#{}#{}", timestamp(m.received_at), m.fingerprint)
}

fn text<'a>(item: &'a Item, attribute: &'static str) -> BackendResult<&'a str> {
    match item.get(attribute) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(ItemError::Missing { pk: pk_of(item), attribute })),
    }
}

fn pk_of(item: &Item) -> String {
    match item.get("pk") {
        Some(AttributeValue::S(v)) => v.clone(),
        _ => "?".to_owned(),
    }
}

fn corrupt(error: ItemError) -> BackendError {
    BackendError::permanent("dynamodb read item", error)
}

pub(super) fn decode<T: DeserializeOwned>(item: &Item, attribute: &'static str) -> BackendResult<T> {
    let json = text(item, attribute)?;
    serde_json::from_str(json).map_err(|source| corrupt(ItemError::Decode { pk: pk_of(item), attribute, source }))
}

pub(super) fn encode<T: Serialize>(value: &T) -> BackendResult<String> {
    serde_json::to_string(value).map_err(|e| BackendError::permanent("dynamodb encode item", e))
}

pub(super) fn version_of(item: &Item) -> u64 {
    match item.get("version") {
        Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
        _ => 0,
    }
}

fn journal_state(state: JournalState) -> &'static str {
    match state {
        JournalState::Pending => "pending",
        JournalState::Final => "final",
    }
}

/// A message's JSON, with its body shortened if the item would exceed DynamoDB's size limit
/// (only possible for bodies that are mostly characters JSON escapes; the raw mail keeps all).
fn message_data(m: &StoredMessage) -> BackendResult<String> {
    let json = encode(m)?;
    if json.len() <= MAX_DATA_BYTES {
        return Ok(json);
    }
    let mut clipped = m.clone();
    clipped.body_truncated = true;
    loop {
        let mut end = clipped.text_body.len() / 2;
        while !clipped.text_body.is_char_boundary(end) {
            end -= 1;
        }
        clipped.text_body.truncate(end);
        let json = encode(&clipped)?;
        if json.len() <= MAX_DATA_BYTES {
            return Ok(json);
        }
        if clipped.text_body.is_empty() {
            return Err(BackendError::permanent("dynamodb encode message", ItemError::TooLarge(m.fingerprint.clone())));
        }
    }
}

/// Backoff with jitter before another attempt at a contended write.
pub(super) fn backoff(attempt: u32) -> Duration {
    let ceiling = 10u64 << attempt.min(5);
    let jitter = std::collections::hash_map::RandomState::new().build_hasher().finish() % (ceiling / 2 + 1);
    Duration::from_millis(ceiling / 2 + jitter)
}

/// How a transaction ended when it did not commit.
pub(super) struct Cancelled {
    /// One reason code per item, in the order of the items (`None` for an item that was fine).
    codes: Vec<String>,
    /// The SDK error, classified: transient when only conflicts or throttling stopped it.
    pub(super) error: BackendError,
}

impl Cancelled {
    fn condition_failed(&self, index: usize) -> bool {
        self.codes.get(index).is_some_and(|c| c == CONDITION_FAILED)
    }

    pub(super) fn any_condition_failed(&self) -> bool {
        self.codes.iter().any(|c| c == CONDITION_FAILED)
    }
}

impl DynamoIngestStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub(super) async fn get(&self, operation: &'static str, key: Item) -> BackendResult<Option<Item>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(operation, e))?;
        Ok(output.item)
    }

    /// All items of a partition (optionally those whose sort key starts with `sk_prefix`), in
    /// sort-key order, following `LastEvaluatedKey` until it is absent.
    async fn query_partition(
        &self,
        operation: &'static str,
        pk: String,
        sk_prefix: Option<&str>,
    ) -> BackendResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_values(":pk", s(pk.clone()))
                .set_exclusive_start_key(start.take());
            request = match sk_prefix {
                Some(prefix) => request
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix)),
                None => request.key_condition_expression("pk = :pk"),
            };
            let output = request.send().await.map_err(|e| classify(operation, e))?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => return Ok(items),
            }
        }
    }

    pub(super) async fn read_interaction(&self, id: &InteractionId) -> BackendResult<Option<(Interaction, u64)>> {
        let Some(item) = self.get("dynamodb get interaction", key(interaction_pk(id), "META")).await? else {
            return Ok(None);
        };
        Ok(Some((decode(&item, "data")?, version_of(&item))))
    }

    async fn message_exists(&self, fp: &Fingerprint) -> BackendResult<bool> {
        Ok(self.get("dynamodb get message", key(message_pk(fp), "MSG")).await?.is_some())
    }

    pub(super) async fn transact(
        &self,
        operation: &'static str,
        items: Vec<TransactWriteItem>,
    ) -> BackendResult<Result<(), Cancelled>> {
        let err = match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => return Ok(Ok(())),
            Err(err) => err,
        };
        let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error() else {
            return Err(classify(operation, err));
        };
        let codes: Vec<String> =
            cancelled.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None").to_owned()).collect();
        let retryable =
            codes.iter().all(|c| c == "None" || c == CONDITION_FAILED || RETRYABLE_REASONS.contains(&c.as_str()));
        let error =
            if retryable { BackendError::transient(operation, err) } else { BackendError::permanent(operation, err) };
        Ok(Err(Cancelled { codes, error }))
    }

    pub(super) fn put(
        &self,
        item: Item,
        condition: Option<(&str, Item, HashMap<String, String>)>,
    ) -> BackendResult<TransactWriteItem> {
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        if let Some((expression, values, names)) = condition {
            put = put
                .condition_expression(expression)
                .set_expression_attribute_values((!values.is_empty()).then_some(values))
                .set_expression_attribute_names((!names.is_empty()).then_some(names));
        }
        let put = put.build().map_err(|e| BackendError::permanent("dynamodb build transaction", e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// The interaction's META item: every write of it (ingest's and routing's) goes through here.
    /// A `Put` replaces the whole item, so leaving out the index keys removes them from `gsi1`.
    pub(super) fn meta_item(interaction: &Interaction, version: u64) -> BackendResult<Item> {
        let mut item = key(interaction_pk(&interaction.id), "META");
        item.insert("data".into(), s(encode(interaction)?));
        item.insert("origin".into(), s(interaction.origin.as_str()));
        item.insert("state".into(), s(interaction.state.as_str()));
        item.insert("version".into(), AttributeValue::N(version.to_string()));
        if let Some((gsi1pk, gsi1sk)) = super::routing::interaction_index(interaction) {
            item.insert("gsi1pk".into(), s(gsi1pk));
            item.insert("gsi1sk".into(), s(gsi1sk));
        }
        Ok(item)
    }

    /// The items of a stored message: pointer (conditional: first write wins), transcript entry,
    /// and an index entry for its Message-ID and for its conversation key (when it has them).
    fn message_items(&self, m: &StoredMessage) -> BackendResult<Vec<TransactWriteItem>> {
        let transcript = transcript_sk(m);
        let mut pointer = key(message_pk(&m.fingerprint), "MSG");
        pointer.insert("interaction_id".into(), s(m.interaction_id.as_str()));
        pointer.insert("transcript_sk".into(), s(transcript.clone()));
        let mut entry = key(interaction_pk(&m.interaction_id), transcript);
        entry.insert("fp".into(), s(m.fingerprint.as_str()));
        entry.insert("data".into(), s(message_data(m)?));
        let mut items =
            vec![self.put(pointer, Some((NOT_EXISTS, Item::new(), HashMap::new())))?, self.put(entry, None)?];
        // The Message-ID and Outlook's conversation key are both looked up when threading.
        let mut ids: Vec<&MessageId> = m.message_id.iter().chain(m.conversation_key.iter()).collect();
        ids.dedup();
        for id in ids {
            let mut index = key(message_id_pk(id), format!("INT#{}", m.interaction_id));
            index.insert("message_id".into(), s(id.as_str()));
            index.insert("interaction_id".into(), s(m.interaction_id.as_str()));
            items.push(self.put(index, None)?);
        }
        Ok(items)
    }
}

#[async_trait]
impl IngestStore for DynamoIngestStore {
    async fn journal_get(&self, raw: &RawMailKey) -> BackendResult<Option<JournalEntry>> {
        match self.get("dynamodb get journal entry", key(journal_pk(raw), "JOURNAL")).await? {
            Some(item) => Ok(Some(decode(&item, "data")?)),
            None => Ok(None),
        }
    }

    async fn journal_begin(&self, entry: &JournalEntry) -> BackendResult<()> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(journal_item(entry)?))
            .condition_expression(NOT_EXISTS)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {
                Ok(())
            }
            Err(err) => Err(classify("dynamodb put journal entry", err)),
        }
    }

    async fn journal_finalize(&self, entry: &JournalEntry) -> BackendResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(journal_item(entry)?))
            .send()
            .await
            .map_err(|e| classify("dynamodb put journal entry", e))?;
        Ok(())
    }

    async fn journal_recent(&self, limit: usize) -> BackendResult<Vec<JournalEntry>> {
        const OP: &str = "dynamodb query journal";
        let mut entries = Vec::new();
        let mut start: Option<Item> = None;
        while entries.len() < limit {
            let page = (limit - entries.len()).min(1000) as i32;
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(JOURNAL_GSI_PK))
                .scan_index_forward(false)
                .limit(page)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(OP, e))?;
            for item in output.items.unwrap_or_default() {
                entries.push(decode(&item, "data")?);
            }
            match output.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => break,
            }
        }
        entries.truncate(limit);
        Ok(entries)
    }

    async fn claim_fingerprint(&self, fingerprint: &Fingerprint, raw: &RawMailKey) -> BackendResult<FingerprintClaim> {
        let mut item = key(fingerprint_pk(fingerprint), "FP");
        item.insert("raw".into(), s(raw.as_str()));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(NOT_EXISTS)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let existing = match result {
            Ok(_) => return Ok(FingerprintClaim::Ours),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(e)) => e.item().cloned(),
                _ => return Err(classify("dynamodb claim fingerprint", err)),
            },
        };
        // Emulators may not return the old item with the failure: read it.
        let existing = match existing {
            Some(item) => item,
            None => self.get("dynamodb get fingerprint", key(fingerprint_pk(fingerprint), "FP")).await?.ok_or_else(
                || {
                    BackendError::transient(
                        "dynamodb claim fingerprint",
                        "the claim vanished after a conditional failure",
                    )
                },
            )?,
        };
        let owner =
            RawMailKey::parse(text(&existing, "raw")?).map_err(|e| BackendError::permanent("dynamodb read item", e))?;
        Ok(if &owner == raw { FingerprintClaim::Ours } else { FingerprintClaim::Theirs(owner) })
    }

    async fn message(&self, fingerprint: &Fingerprint) -> BackendResult<Option<StoredMessage>> {
        let Some(pointer) = self.get("dynamodb get message", key(message_pk(fingerprint), "MSG")).await? else {
            return Ok(None);
        };
        let interaction = InteractionId::parse(text(&pointer, "interaction_id")?)
            .map_err(|e| BackendError::permanent("dynamodb read item", e))?;
        let transcript = text(&pointer, "transcript_sk")?.to_owned();
        let entry = self
            .get("dynamodb get transcript entry", key(interaction_pk(&interaction), transcript))
            .await?
            .ok_or_else(|| corrupt(ItemError::Missing { pk: pk_of(&pointer), attribute: "transcript entry" }))?;
        Ok(Some(decode(&entry, "data")?))
    }

    async fn messages_with_ids(&self, ids: &[MessageId]) -> BackendResult<Vec<ThreadCandidate>> {
        let lookups: Vec<_> =
            ids.iter().map(|id| self.query_partition("dynamodb query message ids", message_id_pk(id), None)).collect();
        let pages: Vec<Vec<Item>> = stream::iter(lookups).buffered(ID_LOOKUP_CONCURRENCY).try_collect().await?;
        pages
            .into_iter()
            .flatten()
            .map(|item| {
                let message_id = MessageId::parse(text(&item, "message_id")?)
                    .map_err(|e| BackendError::permanent("dynamodb read item", e))?;
                let interaction_id = InteractionId::parse(text(&item, "interaction_id")?)
                    .map_err(|e| BackendError::permanent("dynamodb read item", e))?;
                Ok(ThreadCandidate { message_id, interaction_id })
            })
            .collect()
    }

    async fn interaction(&self, id: &InteractionId) -> BackendResult<Option<Interaction>> {
        Ok(self.read_interaction(id).await?.map(|(interaction, _)| interaction))
    }

    async fn interaction_messages(&self, id: &InteractionId) -> BackendResult<Vec<StoredMessage>> {
        self.query_partition("dynamodb query transcript", interaction_pk(id), Some("MSG#"))
            .await?
            .iter()
            .map(|item| decode(item, "data"))
            .collect()
    }

    async fn create_interaction(&self, interaction: &Interaction, first: &StoredMessage) -> BackendResult<()> {
        const OP: &str = "create interaction";
        let mut items =
            vec![self.put(Self::meta_item(interaction, 1)?, Some((NOT_EXISTS, Item::new(), HashMap::new())))?];
        items.extend(self.message_items(first)?);
        let mut attempt = 0;
        loop {
            let cancelled = match self.transact("dynamodb create interaction", items.clone()).await? {
                Ok(()) => return Ok(()),
                Err(cancelled) => cancelled,
            };
            if cancelled.condition_failed(0) || cancelled.condition_failed(1) {
                return match self.read_interaction(&interaction.id).await? {
                    Some((existing, _)) if existing.origin == interaction.origin => Ok(()),
                    Some(_) => Err(BackendError::Conflict {
                        operation: OP,
                        detail: format!("interaction {} exists with another origin", interaction.id),
                    }),
                    None => Err(BackendError::Conflict {
                        operation: OP,
                        detail: format!("message {} is already stored in another interaction", first.fingerprint),
                    }),
                };
            }
            attempt += 1;
            if !cancelled.error.is_transient() || attempt >= MAX_ATTEMPTS {
                return Err(cancelled.error);
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    async fn append_message(
        &self,
        message: &StoredMessage,
        new_participants: &[EmailAddress],
        requeue: bool,
    ) -> BackendResult<Interaction> {
        const OP: &str = "append message";
        let id = &message.interaction_id;
        let message_items = self.message_items(message)?;
        for attempt in 1..=MAX_ATTEMPTS {
            let Some((mut interaction, version)) = self.read_interaction(id).await? else {
                return Err(BackendError::Conflict { operation: OP, detail: format!("no interaction {id}") });
            };
            if self.message_exists(&message.fingerprint).await? {
                return Ok(interaction);
            }
            interaction.absorb(message, new_participants, requeue);
            let condition = (
                "#version = :version",
                Item::from([(":version".to_owned(), AttributeValue::N(version.to_string()))]),
                HashMap::from([("#version".to_owned(), "version".to_owned())]),
            );
            let mut items = vec![self.put(Self::meta_item(&interaction, version + 1)?, Some(condition))?];
            items.extend(message_items.iter().cloned());
            let cancelled = match self.transact("dynamodb append message", items).await? {
                Ok(()) => return Ok(interaction),
                Err(cancelled) => cancelled,
            };
            if cancelled.condition_failed(1) {
                // Appended meanwhile (a concurrent retry of the same delivery): report it as stored.
                return match self.read_interaction(id).await? {
                    Some((current, _)) => Ok(current),
                    None => Err(BackendError::Conflict { operation: OP, detail: format!("no interaction {id}") }),
                };
            }
            if !cancelled.condition_failed(0) && !cancelled.error.is_transient() {
                return Err(cancelled.error);
            }
            // Another writer changed the interaction first: read it again and re-apply.
            tracing::debug!(interaction_id = %id, attempt, "interaction changed concurrently; appending again");
            tokio::time::sleep(backoff(attempt)).await;
        }
        Err(BackendError::transient(OP, ItemError::Contention { id: id.clone(), attempts: MAX_ATTEMPTS }))
    }
}

fn journal_item(entry: &JournalEntry) -> BackendResult<Item> {
    let mut item = key(journal_pk(&entry.raw_key), "JOURNAL");
    item.insert("data".into(), s(encode(entry)?));
    item.insert("state".into(), s(journal_state(entry.state)));
    item.insert("gsi1pk".into(), s(JOURNAL_GSI_PK));
    item.insert("gsi1sk".into(), s(format!("{}#{}", timestamp(entry.received_at), entry.raw_key)));
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_strings() {
        let a = DateTime::parse_from_rfc3339("2024-05-01T09:00:00Z").unwrap().with_timezone(&Utc);
        let b = a + chrono::Duration::milliseconds(1);
        let c = a + chrono::Duration::seconds(10);
        assert_eq!(timestamp(a), "2024-05-01T09:00:00.000000Z");
        assert!(timestamp(a) < timestamp(b) && timestamp(b) < timestamp(c));
    }

    #[test]
    fn backoff_stays_bounded() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(320), "{d:?}");
        }
    }
}
