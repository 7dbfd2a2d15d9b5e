//! Outbound state in the DynamoDB state table (the single table ingest uses).
//!
//! | record | pk | sk | attributes |
//! |---|---|---|---|
//! | delivery record | `INT#<interaction>` | `OUT#<message-id>` | `data` (JSON), `state`, `version` (N) |
//! | agent profile | `PROFILE#<agent>` | `PROFILE` | `data` (JSON) |
//!
//! A delivery record lives in its interaction's partition, beside the transcript (`MSG#…`), so
//! "what did we send on this interaction and how did it go" is one `Query`. State changes are
//! conditional on `version`. SMTP passwords are not here: they live in the shared secret store.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::adapters::aws::is_transient;
use crate::domain::ids::{AgentId, InteractionId, MessageId};
use crate::domain::outbound::OutboundRecord;
use crate::domain::profile::AgentProfile;
use crate::ports::outbound::{OutboundStore, ProfileStore, Written};
use crate::ports::{BackendError, BackendResult};

type Item = HashMap<String, AttributeValue>;

#[derive(Clone, Debug)]
pub struct DynamoOutboundStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn key(pk: String, sk: String) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn record_key(interaction: &InteractionId, message_id: &MessageId) -> Item {
    key(format!("INT#{interaction}"), format!("OUT#{message_id}"))
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

fn decode<T: serde::de::DeserializeOwned>(item: &Item, attribute: &str) -> BackendResult<T> {
    match item.get(attribute) {
        Some(AttributeValue::S(json)) => {
            serde_json::from_str(json).map_err(|e| BackendError::permanent("dynamodb decode outbound item", e))
        }
        _ => Err(BackendError::permanent(
            "dynamodb read outbound item",
            format!("item has no string attribute {attribute}"),
        )),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> BackendResult<String> {
    serde_json::to_string(value).map_err(|e| BackendError::permanent("dynamodb encode outbound item", e))
}

impl DynamoOutboundStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self { client, table: table.to_owned() }
    }

    fn record_item(record: &OutboundRecord) -> BackendResult<Item> {
        let mut item = record_key(&record.interaction_id, &record.message_id);
        item.insert("data".into(), s(encode(record)?));
        item.insert("state".into(), s(record.state.as_str()));
        item.insert("version".into(), AttributeValue::N(record.version.to_string()));
        Ok(item)
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
        Ok(out.item)
    }
}

#[async_trait]
impl OutboundStore for DynamoOutboundStore {
    async fn create_record(&self, record: &OutboundRecord) -> BackendResult<OutboundRecord> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::record_item(record)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(record.clone()),
            Err(err) if matches!(err.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {
                let item = self
                    .get("dynamodb get outbound message", record_key(&record.interaction_id, &record.message_id))
                    .await?
                    .ok_or_else(|| {
                        BackendError::transient("dynamodb create outbound message", "the record vanished")
                    })?;
                decode(&item, "data")
            }
            Err(err) => Err(classify("dynamodb put outbound message", err)),
        }
    }

    async fn record(
        &self,
        interaction: &InteractionId,
        message_id: &MessageId,
    ) -> BackendResult<Option<OutboundRecord>> {
        match self.get("dynamodb get outbound message", record_key(interaction, message_id)).await? {
            Some(item) => Ok(Some(decode(&item, "data")?)),
            None => Ok(None),
        }
    }

    async fn replace_record(&self, record: &OutboundRecord, expected_version: u64) -> BackendResult<Written> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::record_item(record)?))
            .condition_expression("#version = :expected")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":expected", AttributeValue::N(expected_version.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Written::Done),
            Err(err) if matches!(err.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {
                let current = self.record(&record.interaction_id, &record.message_id).await?;
                Ok(Written::Stale(current.map(Box::new)))
            }
            Err(err) => Err(classify("dynamodb update outbound message", err)),
        }
    }

    async fn records_of(&self, interaction: &InteractionId) -> BackendResult<Vec<OutboundRecord>> {
        let mut records = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(format!("INT#{interaction}")))
                .expression_attribute_values(":prefix", s("OUT#"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("dynamodb query outbound messages", e))?;
            for item in out.items.unwrap_or_default() {
                records.push(decode::<OutboundRecord>(&item, "data")?);
            }
            match out.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => break,
            }
        }
        records.sort_by_key(|r| r.created_at);
        Ok(records)
    }
}

fn profile_key(agent: &AgentId) -> Item {
    key(format!("PROFILE#{agent}"), "PROFILE".into())
}

#[async_trait]
impl ProfileStore for DynamoOutboundStore {
    async fn profile(&self, agent: &AgentId) -> BackendResult<Option<AgentProfile>> {
        match self.get("dynamodb get agent profile", profile_key(agent)).await? {
            Some(item) => Ok(Some(decode(&item, "data")?)),
            None => Ok(None),
        }
    }

    async fn put_profile(&self, profile: &AgentProfile) -> BackendResult<()> {
        let mut item = profile_key(&profile.agent_id);
        item.insert("data".into(), s(encode(profile)?));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| classify("dynamodb put agent profile", e))?;
        Ok(())
    }
}
