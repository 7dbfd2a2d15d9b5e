//! Handoff records and CRM settings in the DynamoDB state table, for the AWS deployment (where the
//! CRM is always Dataverse).
//!
//! | record | pk | sk | attributes |
//! |---|---|---|---|
//! | handoff | `HANDOFF#<key>` | `HANDOFF` | `data` (JSON), `version` (N); `gsi1pk` = `HANDOFF`, `gsi1sk` = `<updated_at>#<key>` |
//! | CRM settings | `CRM#SETTINGS` | `CRM#SETTINGS` | `data` (JSON) |
//!
//! Handoff writes are conditional on `version` (optimistic concurrency), so two workers on the
//! same interaction cannot overwrite each other's progress. The client secret is not here: it is
//! in the `SecretStore`.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::SecondsFormat;

use crate::adapters::aws::classify;
use crate::domain::crm::{CrmSettings, HandoffKey, HandoffRecord};
use crate::ports::crm::{CrmSettingsStore, HandoffStore};
use crate::ports::{BackendError, BackendResult};

type Item = HashMap<String, AttributeValue>;

const GSI1: &str = "gsi1";
const HANDOFF_GSI_PK: &str = "HANDOFF";
const SETTINGS_KEY: &str = "CRM#SETTINGS";

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn handoff_pk(key: &HandoffKey) -> String {
    format!("HANDOFF#{key}")
}

fn data_of<T: serde::de::DeserializeOwned>(item: &Item, operation: &'static str) -> BackendResult<T> {
    let data = item
        .get("data")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| BackendError::permanent(operation, "item without its data attribute"))?;
    serde_json::from_str(data).map_err(|e| BackendError::permanent(operation, e))
}

/// `HandoffStore` on the state table.
pub struct DynamoHandoffStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoHandoffStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }
}

#[async_trait]
impl HandoffStore for DynamoHandoffStore {
    async fn get(&self, key_: &HandoffKey) -> BackendResult<Option<HandoffRecord>> {
        const OP: &str = "dynamodb get handoff";
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(handoff_pk(key_), "HANDOFF")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        let Some(item) = output.item else { return Ok(None) };
        let mut record: HandoffRecord = data_of(&item, OP)?;
        record.version = item.get("version").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok(Some(record))
    }

    async fn put(&self, record: &HandoffRecord) -> BackendResult<HandoffRecord> {
        const OP: &str = "dynamodb put handoff";
        let mut stored = record.clone();
        stored.version = record.version + 1;
        let data = serde_json::to_string(&stored).map_err(|e| BackendError::permanent(OP, e))?;
        let mut item = key(handoff_pk(&record.key), "HANDOFF");
        item.insert("data".into(), s(data));
        item.insert("version".into(), AttributeValue::N(stored.version.to_string()));
        item.insert("gsi1pk".into(), s(HANDOFF_GSI_PK));
        item.insert(
            "gsi1sk".into(),
            s(format!("{}#{}", stored.updated_at.to_rfc3339_opts(SecondsFormat::Micros, true), record.key)),
        );
        let request = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let request = if record.version == 0 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            request
                .condition_expression("version = :v")
                .expression_attribute_values(":v", AttributeValue::N(record.version.to_string()))
        };
        match request.send().await {
            Ok(_) => Ok(stored),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(_)) => Err(BackendError::Conflict {
                    operation: OP,
                    detail: format!("handoff {} changed since version {}", record.key, record.version),
                }),
                _ => Err(classify(OP, err)),
            },
        }
    }

    async fn recent(&self, limit: usize) -> BackendResult<Vec<HandoffRecord>> {
        const OP: &str = "dynamodb list handoffs";
        let mut records = Vec::new();
        let mut start: Option<Item> = None;
        while records.len() < limit {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(HANDOFF_GSI_PK))
                .scan_index_forward(false)
                .limit(limit.clamp(1, 100) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(OP, e))?;
            for item in output.items.unwrap_or_default() {
                let mut r: HandoffRecord = data_of(&item, OP)?;
                r.version = item.get("version").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).unwrap_or(0);
                records.push(r);
            }
            match output.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => break,
            }
        }
        records.truncate(limit);
        Ok(records)
    }
}

/// `CrmSettingsStore` on the state table.
pub struct DynamoCrmSettingsStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoCrmSettingsStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }
}

#[async_trait]
impl CrmSettingsStore for DynamoCrmSettingsStore {
    async fn load(&self) -> BackendResult<Option<CrmSettings>> {
        const OP: &str = "dynamodb get crm settings";
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(SETTINGS_KEY.to_owned(), SETTINGS_KEY)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        output.item.map(|item| data_of(&item, OP)).transpose()
    }

    async fn save(&self, settings: &CrmSettings) -> BackendResult<()> {
        const OP: &str = "dynamodb put crm settings";
        let data = serde_json::to_string(settings).map_err(|e| BackendError::permanent(OP, e))?;
        let mut item = key(SETTINGS_KEY.to_owned(), SETTINGS_KEY);
        item.insert("data".into(), s(data));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        Ok(())
    }
}
