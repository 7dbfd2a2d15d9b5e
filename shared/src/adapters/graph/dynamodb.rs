//! The Teams stores in the DynamoDB state table (the single table ingest uses).
//!
//! | record | pk | sk | index (`gsi1pk` / `gsi1sk`) |
//! |---|---|---|---|
//! | Teams user | `TEAMSDIR#teams` | `USER#<id>` | |
//! | other-directory entry | `TEAMSDIR#other` | `ENTRY#<id>` | |
//! | when each source was refreshed | `TEAMSDIR#sources` | `SOURCES` | |
//! | connection | `TEAMSCONN#<agent>` | `CONN` | |
//! | sign-in in progress | `TEAMSSIGNIN#<state hash>` | `SIGNIN` | |
//! | chat | `TEAMSCHAT#<chat>` | `CHAT` | `TEAMSAGENT#<agent>` / `CHAT#<chat>` |
//! | subscription | `TEAMSSUB#<id>` | `SUB` | `TEAMSSUBS` / `<expires at>#<id>` |
//! | chat entry | `TEAMSCHAT#<chat>` | `ENTRY#<message id, 24 digits>#<key>` | |
//! | change log | `TEAMSUPD#<agent>` | `SEQ#<seq, 20 digits>` | |
//! | change counter | `TEAMSUPD#<agent>` | `COUNTER` | |
//!
//! Every record is JSON in `data`. An entry change is one transaction: the agent's counter moves
//! from the value read (conditionally), the entry is written (conditionally on the version read),
//! and a change-log item with the new `seq` is added; a conflict re-reads and tries again. So `seq`
//! order is commit order, and "changes since N" is a strongly consistent query of the log.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, Put, PutRequest, TransactWriteItem, Update, WriteRequest,
};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::adapters::aws::is_transient;
use crate::domain::ids::AgentId;
use crate::domain::teams::{
    ChatEntry, ChatId, ChatSubscription, GraphMessageId, OtherDirectoryEntry, PendingSignIn, SubscriptionId, TeamsChat,
    TeamsConnection, TeamsUser, TeamsUserId,
};
use crate::ports::teams::{
    DirectorySources, Replaced, TeamsChatStore, TeamsConnectionStore, TeamsDirectoryStore, Upserted,
};
use crate::ports::{BackendError, BackendResult};

type Item = HashMap<String, AttributeValue>;

/// A transaction lost to a concurrent change this many times in a row is reported as transient.
const MAX_CONFLICTS: usize = 20;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn classify<E>(
    operation: &'static str,
    err: aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> BackendError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if is_transient(&err) { BackendError::transient(operation, err) } else { BackendError::permanent(operation, err) }
}

fn build_error(e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::permanent("dynamodb build request", e)
}

fn encode<T: serde::Serialize>(value: &T) -> BackendResult<String> {
    serde_json::to_string(value).map_err(|e| BackendError::permanent("dynamodb encode Teams item", e))
}

fn decode<T: serde::de::DeserializeOwned>(item: &Item) -> BackendResult<T> {
    match item.get("data") {
        Some(AttributeValue::S(json)) => {
            serde_json::from_str(json).map_err(|e| BackendError::permanent("dynamodb decode Teams item", e))
        }
        _ => Err(BackendError::permanent("dynamodb read Teams item", "item has no data attribute")),
    }
}

fn number(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

fn with_data<T: serde::Serialize>(mut item: Item, value: &T) -> BackendResult<Item> {
    item.insert("data".into(), s(encode(value)?));
    Ok(item)
}

fn chat_pk(chat: &ChatId) -> String {
    format!("TEAMSCHAT#{chat}")
}

fn entry_sk(message: &GraphMessageId, entry_key: &str) -> String {
    format!("ENTRY#{:0>24}#{entry_key}", message.as_str())
}

fn updates_pk(agent: &AgentId) -> String {
    format!("TEAMSUPD#{agent}")
}

/// The log holds every version of an entry; a reader wants each entry once, as it is now (its
/// last version, at its last `seq`), as the embedded store gives it.
fn latest_only(mut log: Vec<ChatEntry>) -> Vec<ChatEntry> {
    let mut seen = HashSet::new();
    log.reverse();
    log.retain(|e| seen.insert((e.chat.clone(), e.key.clone())));
    log.reverse();
    log
}

#[derive(Clone, Debug)]
pub struct DynamoTeamsStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoTeamsStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self { client, table: table.to_owned() }
    }

    async fn get(&self, operation: &'static str, key: Item) -> BackendResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(operation, e))?;
        Ok(out.item.filter(|i| !i.is_empty()))
    }

    async fn put(&self, operation: &'static str, item: Item) -> BackendResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| classify(operation, e))?;
        Ok(())
    }

    async fn delete(&self, operation: &'static str, key: Item) -> BackendResult<Option<Item>> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| classify(operation, e))?;
        Ok(out.attributes.filter(|i| !i.is_empty()))
    }

    /// Every item of a partition (whose sort key starts with `prefix`), in sort-key order.
    async fn query_all(
        &self,
        operation: &'static str,
        pk: &str,
        prefix: &str,
        forward: bool,
        limit: Option<usize>,
    ) -> BackendResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
                .scan_index_forward(forward)
                .set_limit(limit.map(|l| (l - items.len()).min(1000) as i32))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(operation, e))?;
            items.extend(out.items.unwrap_or_default());
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
            match out.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => break,
            }
        }
        Ok(items)
    }

    /// Items of `gsi1` under `gsi1pk`, optionally with `gsi1sk` below `below`.
    async fn query_index(
        &self,
        operation: &'static str,
        gsi1pk: &str,
        below: Option<&str>,
        limit: usize,
    ) -> BackendResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .expression_attribute_values(":pk", s(gsi1pk))
                .set_exclusive_start_key(start.take());
            q = match below {
                Some(b) => q
                    .key_condition_expression("gsi1pk = :pk AND gsi1sk < :below")
                    .expression_attribute_values(":below", s(b)),
                None => q.key_condition_expression("gsi1pk = :pk"),
            };
            let out = q.send().await.map_err(|e| classify(operation, e))?;
            items.extend(out.items.unwrap_or_default());
            if items.len() >= limit {
                items.truncate(limit);
                break;
            }
            match out.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => break,
            }
        }
        Ok(items)
    }

    /// Writes and deletes in batches of 25, retrying what DynamoDB leaves unprocessed.
    async fn batch(&self, operation: &'static str, requests: Vec<WriteRequest>) -> BackendResult<()> {
        for chunk in requests.chunks(25) {
            let mut pending = chunk.to_vec();
            let mut attempt = 0u32;
            while !pending.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(|e| classify(operation, e))?;
                pending = out.unprocessed_items.and_then(|mut u| u.remove(&self.table)).unwrap_or_default();
                if !pending.is_empty() {
                    attempt += 1;
                    if attempt > 8 {
                        return Err(BackendError::transient(operation, "DynamoDB kept items unprocessed"));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50 * 2u64.pow(attempt.min(6)))).await;
                }
            }
        }
        Ok(())
    }

    async fn replace(
        &self,
        partition: &str,
        prefix: &str,
        source: &'static str,
        rows: Vec<(String, String)>,
        at: DateTime<Utc>,
    ) -> BackendResult<Replaced> {
        const OP: &str = "dynamodb replace Teams directory";
        let existing: HashSet<String> = self
            .query_all(OP, partition, prefix, true, None)
            .await?
            .iter()
            .filter_map(|i| match i.get("sk") {
                Some(AttributeValue::S(sk)) => Some(sk.clone()),
                _ => None,
            })
            .collect();
        let wanted: HashSet<String> = rows.iter().map(|(id, _)| format!("{prefix}{id}")).collect();
        let mut requests = Vec::new();
        for (id, data) in &rows {
            let mut item = key(partition, format!("{prefix}{id}"));
            item.insert("data".into(), s(data.clone()));
            requests.push(
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item)).build().map_err(build_error)?)
                    .build(),
            );
        }
        let stale: Vec<&String> = existing.difference(&wanted).collect();
        for sk in &stale {
            requests.push(
                WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(key(partition, sk.as_str())))
                            .build()
                            .map_err(build_error)?,
                    )
                    .build(),
            );
        }
        self.batch(OP, requests).await?;
        let mut sources = self.sources().await?;
        match source {
            "teams" => (sources.teams_synced_at, sources.teams_count) = (Some(at), rows.len()),
            _ => (sources.other_imported_at, sources.other_count) = (Some(at), rows.len()),
        }
        self.put(OP, with_data(key("TEAMSDIR#sources", "SOURCES"), &sources)?).await?;
        Ok(Replaced { stored: rows.len(), removed: stale.len() })
    }
}

#[async_trait]
impl TeamsDirectoryStore for DynamoTeamsStore {
    async fn replace_teams_users(&self, users: &[TeamsUser], at: DateTime<Utc>) -> BackendResult<Replaced> {
        let rows = users.iter().map(|u| Ok((u.id.to_string(), encode(u)?))).collect::<BackendResult<Vec<_>>>()?;
        self.replace("TEAMSDIR#teams", "USER#", "teams", rows, at).await
    }

    async fn teams_users(&self) -> BackendResult<Vec<TeamsUser>> {
        self.query_all("dynamodb query Teams users", "TEAMSDIR#teams", "USER#", true, None)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn teams_user(&self, id: &TeamsUserId) -> BackendResult<Option<TeamsUser>> {
        self.get("dynamodb get Teams user", key("TEAMSDIR#teams", format!("USER#{id}")))
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    async fn replace_other_directory(
        &self,
        entries: &[OtherDirectoryEntry],
        at: DateTime<Utc>,
    ) -> BackendResult<Replaced> {
        let rows = entries.iter().map(|e| Ok((e.id.to_string(), encode(e)?))).collect::<BackendResult<Vec<_>>>()?;
        self.replace("TEAMSDIR#other", "ENTRY#", "other_directory", rows, at).await
    }

    async fn other_directory(&self) -> BackendResult<Vec<OtherDirectoryEntry>> {
        self.query_all("dynamodb query other directory", "TEAMSDIR#other", "ENTRY#", true, None)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn sources(&self) -> BackendResult<DirectorySources> {
        Ok(match self.get("dynamodb get directory sources", key("TEAMSDIR#sources", "SOURCES")).await? {
            Some(item) => decode(&item)?,
            None => DirectorySources::default(),
        })
    }
}

#[async_trait]
impl TeamsConnectionStore for DynamoTeamsStore {
    async fn connection(&self, agent: &AgentId) -> BackendResult<Option<TeamsConnection>> {
        self.get("dynamodb get Teams connection", key(format!("TEAMSCONN#{agent}"), "CONN"))
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    async fn put_connection(&self, c: &TeamsConnection) -> BackendResult<()> {
        self.put("dynamodb put Teams connection", with_data(key(format!("TEAMSCONN#{}", c.agent), "CONN"), c)?).await
    }

    async fn put_pending_sign_in(&self, p: &PendingSignIn) -> BackendResult<()> {
        let mut item = with_data(key(format!("TEAMSSIGNIN#{}", p.state_hash), "SIGNIN"), p)?;
        // For a TTL on the table, if one is set up: the record is useless after this anyway.
        item.insert("expires".into(), n(p.expires_at.timestamp().max(0) as u64));
        self.put("dynamodb put sign-in", item).await
    }

    async fn take_pending_sign_in(&self, state_hash: &str) -> BackendResult<Option<PendingSignIn>> {
        // The delete returns what it removed: two callbacks with one state cannot both get it.
        self.delete("dynamodb take sign-in", key(format!("TEAMSSIGNIN#{state_hash}"), "SIGNIN"))
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }
}

impl DynamoTeamsStore {
    async fn read_entry(&self, entry: &ChatEntry) -> BackendResult<Option<(ChatEntry, Item)>> {
        let item = self
            .get("dynamodb get chat entry", key(chat_pk(&entry.chat), entry_sk(&entry.message_id, &entry.key)))
            .await?;
        item.map(|i| Ok((decode(&i)?, i))).transpose()
    }

    fn transaction_put(&self, item: Item, condition: &str, values: Item) -> BackendResult<TransactWriteItem> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(
                condition.contains("#seq").then(|| HashMap::from([("#seq".to_owned(), "seq".to_owned())])),
            )
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}

#[async_trait]
impl TeamsChatStore for DynamoTeamsStore {
    async fn chat(&self, id: &ChatId) -> BackendResult<Option<TeamsChat>> {
        self.get("dynamodb get chat", key(chat_pk(id), "CHAT")).await?.as_ref().map(decode).transpose()
    }

    async fn agent_chats(&self, agent: &AgentId) -> BackendResult<Vec<TeamsChat>> {
        self.query_index("dynamodb query chats", &format!("TEAMSAGENT#{agent}"), None, 10_000)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn put_chat(&self, chat: &TeamsChat) -> BackendResult<()> {
        let mut item = with_data(key(chat_pk(&chat.id), "CHAT"), chat)?;
        item.insert("gsi1pk".into(), s(format!("TEAMSAGENT#{}", chat.agent)));
        item.insert("gsi1sk".into(), s(format!("CHAT#{}", chat.id)));
        self.put("dynamodb put chat", item).await
    }

    async fn subscription(&self, id: &SubscriptionId) -> BackendResult<Option<ChatSubscription>> {
        self.get("dynamodb get subscription", key(format!("TEAMSSUB#{id}"), "SUB"))
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    async fn put_subscription(&self, sub: &ChatSubscription) -> BackendResult<()> {
        let mut item = with_data(key(format!("TEAMSSUB#{}", sub.id), "SUB"), sub)?;
        item.insert("gsi1pk".into(), s("TEAMSSUBS"));
        item.insert("gsi1sk".into(), s(format!("{}#{}", ts(sub.expires_at), sub.id)));
        self.put("dynamodb put subscription", item).await
    }

    async fn delete_subscription(&self, id: &SubscriptionId) -> BackendResult<()> {
        self.delete("dynamodb delete subscription", key(format!("TEAMSSUB#{id}"), "SUB")).await.map(|_| ())
    }

    async fn subscriptions_expiring(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> BackendResult<Vec<ChatSubscription>> {
        self.query_index("dynamodb query subscriptions", "TEAMSSUBS", Some(&ts(before)), limit)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn upsert_entry(&self, entry: &ChatEntry) -> BackendResult<Upserted> {
        const OP: &str = "dynamodb store chat entry";
        for _ in 0..MAX_CONFLICTS {
            let existing = self.read_entry(entry).await?;
            if let Some((stored, _)) = &existing
                && (entry.source_modified_at < stored.source_modified_at || !entry.differs_from(stored))
            {
                return Ok(Upserted::Unchanged);
            }
            let counter_key = key(updates_pk(&entry.agent), "COUNTER");
            let current = self.get(OP, counter_key.clone()).await?.and_then(|i| number(&i, "value")).unwrap_or(0);
            let seq = current + 1;
            let stored = ChatEntry { seq, ..entry.clone() };
            let (counter_condition, counter_values) = if current == 0 {
                ("attribute_not_exists(pk)", HashMap::from([(":next".to_owned(), n(seq))]))
            } else {
                ("#v = :current", HashMap::from([(":next".to_owned(), n(seq)), (":current".to_owned(), n(current))]))
            };
            let counter = Update::builder()
                .table_name(&self.table)
                .set_key(Some(counter_key))
                .update_expression("SET #v = :next")
                .condition_expression(counter_condition)
                .expression_attribute_names("#v", "value")
                .set_expression_attribute_values(Some(counter_values))
                .build()
                .map_err(build_error)?;
            let mut entry_item =
                with_data(key(chat_pk(&entry.chat), entry_sk(&entry.message_id, &entry.key)), &stored)?;
            entry_item.insert("seq".into(), n(seq));
            let (condition, values) = match &existing {
                Some((before, _)) => ("#seq = :seen", HashMap::from([(":seen".to_owned(), n(before.seq))])),
                None => ("attribute_not_exists(pk)", HashMap::new()),
            };
            let mut log_item = with_data(key(updates_pk(&entry.agent), format!("SEQ#{seq:020}")), &stored)?;
            log_item.insert("chat".into(), s(entry.chat.as_str()));
            let items = vec![
                TransactWriteItem::builder().update(counter).build(),
                self.transaction_put(entry_item, condition, values)?,
                self.transaction_put(log_item, "attribute_not_exists(pk)", HashMap::new())?,
            ];
            match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
                Ok(_) => return Ok(Upserted::Changed(Box::new(stored))),
                Err(err)
                    if matches!(
                        err.as_service_error(),
                        Some(TransactWriteItemsError::TransactionCanceledException(_))
                    ) =>
                {
                    // Another change won the counter or the entry: read again.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(err) => return Err(classify(OP, err)),
            }
        }
        Err(BackendError::transient(OP, "too many concurrent changes"))
    }

    async fn message_entries(&self, chat: &ChatId, message: &GraphMessageId) -> BackendResult<Vec<ChatEntry>> {
        let prefix = format!("ENTRY#{:0>24}#", message.as_str());
        self.query_all("dynamodb query message entries", &chat_pk(chat), &prefix, true, None)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    async fn chat_entries(&self, chat: &ChatId, limit: usize) -> BackendResult<Vec<ChatEntry>> {
        let items = self.query_all("dynamodb query chat entries", &chat_pk(chat), "ENTRY#", false, Some(limit)).await?;
        let mut entries: Vec<ChatEntry> = items.iter().map(decode).collect::<BackendResult<_>>()?;
        entries.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.key.cmp(&b.key)));
        Ok(entries)
    }

    async fn changes(
        &self,
        agent: &AgentId,
        chat: Option<&ChatId>,
        after_seq: u64,
        limit: usize,
    ) -> BackendResult<Vec<ChatEntry>> {
        const OP: &str = "dynamodb query chat changes";
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(updates_pk(agent)))
                .expression_attribute_values(":from", s(format!("SEQ#{:020}", after_seq.saturating_add(1))))
                .expression_attribute_values(":to", s(format!("SEQ#{:020}", u64::MAX / 2)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some(chat) = chat {
                q = q
                    .filter_expression("#chat = :chat")
                    .expression_attribute_names("#chat", "chat")
                    .expression_attribute_values(":chat", s(chat.as_str()));
            }
            let page = q.send().await.map_err(|e| classify(OP, e))?;
            for item in page.items.unwrap_or_default() {
                out.push(decode(&item)?);
                if out.len() >= limit {
                    return Ok(latest_only(out));
                }
            }
            match page.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => return Ok(latest_only(out)),
            }
        }
    }
}
