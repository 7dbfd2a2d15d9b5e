//! Channels and polling state in the DynamoDB state table (`pk`/`sk`).
//!
//! | record | pk | sk | attributes |
//! |---|---|---|---|
//! | channel | `CHANNELS` | `CHANNEL#<name>` | `data` (JSON), `version` (N), `position` (N), `seed`, `updated_at` |
//! | IMAP cursor | `MAILBOX#<channel>` | `CURSOR#<mailbox key>` | `data` (JSON) |
//! | POP3 UIDL taken | `MAILBOX#<channel>` | `UIDL#<mailbox key>#<uidl>` | |
//! | health | `MAILBOX#<channel>` | `HEALTH` | `data` (JSON) |
//! | polling lease | `MAILBOX#<channel>` | `LEASE` | `owner`, `until` (RFC 3339, fixed width) |
//!
//! All channels share one partition, so listing them is one strongly consistent `Query` (a
//! deployment has tens or hundreds of channels, not millions). Channel writes are conditional
//! on `version`; the lease is a conditional put.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};

use super::{ensure_secrets_stored, version_conflict};
use crate::adapters::aws::classify;
use crate::domain::ids::ChannelName;
use crate::domain::mailbox::{ChannelHealth, ImapCursor, MailboxKey};
use crate::ports::channels::{ChannelStore, StoredChannel};
use crate::ports::mailbox::MailboxStateStore;
use crate::ports::{BackendError, BackendResult};

type Item = HashMap<String, AttributeValue>;

const CHANNELS_PK: &str = "CHANNELS";
const CONDITION_FAILED: &str = "ConditionalCheckFailedException";
/// Parallel deletes when forgetting POP3 UIDLs.
const DELETE_CONCURRENCY: usize = 8;

pub struct DynamoChannelStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoChannelStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self { client, table: table.to_owned() }
    }

    pub fn from_sdk_config(config: &aws_config::SdkConfig, table: &str) -> Self {
        Self::new(aws_sdk_dynamodb::Client::new(config), table)
    }

    async fn get_item(&self, operation: &'static str, pk: String, sk: String) -> BackendResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .send()
            .await
            .map_err(|e| classify(operation, e))?;
        Ok(out.item)
    }

    async fn put_data(&self, operation: &'static str, pk: String, sk: String, data: String) -> BackendResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("data", s(data))
            .send()
            .await
            .map_err(|e| classify(operation, e))?;
        Ok(())
    }

    /// Every item of a partition whose sort key starts with `prefix`, following
    /// `LastEvaluatedKey` until it is absent.
    async fn query_prefix(&self, operation: &'static str, pk: String, prefix: &str) -> BackendResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(pk.clone()))
                .expression_attribute_values(":prefix", s(prefix))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(operation, e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => return Ok(items),
            }
        }
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn mailbox_pk(channel: &ChannelName) -> String {
    format!("MAILBOX#{channel}")
}

fn channel_sk(name: &str) -> String {
    format!("CHANNEL#{name}")
}

fn uidl_prefix(mailbox: &MailboxKey) -> String {
    format!("UIDL#{mailbox}#")
}

fn corrupt(what: &'static str) -> BackendError {
    BackendError::permanent("dynamodb read item", format!("item without a valid {what}"))
}

fn text<'a>(item: &'a Item, attribute: &'static str) -> BackendResult<&'a str> {
    match item.get(attribute) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(attribute)),
    }
}

fn number(item: &Item, attribute: &'static str) -> BackendResult<u64> {
    match item.get(attribute) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(attribute)),
        _ => Err(corrupt(attribute)),
    }
}

fn decode<T: serde::de::DeserializeOwned>(item: &Item) -> BackendResult<T> {
    serde_json::from_str(text(item, "data")?).map_err(|e| BackendError::permanent("dynamodb decode item", e))
}

fn encode<T: serde::Serialize>(value: &T) -> BackendResult<String> {
    serde_json::to_string(value).map_err(|e| BackendError::permanent("dynamodb encode item", e))
}

fn channel_record(item: &Item) -> BackendResult<StoredChannel> {
    let updated_at =
        DateTime::parse_from_rfc3339(text(item, "updated_at")?).map_err(|_| corrupt("updated_at"))?.with_timezone(&Utc);
    Ok(StoredChannel {
        channel: decode(item)?,
        version: number(item, "version")?,
        position: number(item, "position")?,
        seed: text(item, "seed").ok().map(str::to_owned),
        updated_at,
    })
}

#[async_trait]
impl ChannelStore for DynamoChannelStore {
    async fn list(&self) -> BackendResult<Vec<StoredChannel>> {
        let items = self.query_prefix("dynamodb list channels", CHANNELS_PK.to_owned(), "CHANNEL#").await?;
        let mut all = items.iter().map(channel_record).collect::<BackendResult<Vec<_>>>()?;
        all.sort_by(|a, b| (a.position, &a.channel.name).cmp(&(b.position, &b.channel.name)));
        Ok(all)
    }

    async fn get(&self, name: &ChannelName) -> BackendResult<Option<StoredChannel>> {
        let item = self.get_item("dynamodb get channel", CHANNELS_PK.to_owned(), channel_sk(name.as_str())).await?;
        item.as_ref().map(channel_record).transpose()
    }

    async fn put(&self, record: &StoredChannel, expected_version: Option<u64>) -> BackendResult<u64> {
        ensure_secrets_stored(record)?;
        let name = record.channel.name.as_str();
        let version = expected_version.unwrap_or(0) + 1;
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(CHANNELS_PK))
            .item("sk", s(channel_sk(name)))
            .item("data", s(encode(&record.channel)?))
            .item("version", n(version))
            .item("position", n(record.position))
            .item("updated_at", s(stamp(record.updated_at)));
        if let Some(seed) = &record.seed {
            request = request.item("seed", s(seed.clone()));
        }
        request = match expected_version {
            None => request.condition_expression("attribute_not_exists(pk)"),
            Some(v) => {
                request.condition_expression("version = :expected").expression_attribute_values(":expected", n(v))
            }
        };
        match request.send().await {
            Ok(_) => Ok(version),
            Err(e) if e.code() == Some(CONDITION_FAILED) => Err(version_conflict(name, expected_version)),
            Err(e) => Err(classify("dynamodb put channel", e)),
        }
    }
}

#[async_trait]
impl MailboxStateStore for DynamoChannelStore {
    async fn imap_cursor(&self, channel: &ChannelName, mailbox: &MailboxKey) -> BackendResult<Option<ImapCursor>> {
        let item =
            self.get_item("dynamodb get mailbox cursor", mailbox_pk(channel), format!("CURSOR#{mailbox}")).await?;
        item.as_ref().map(decode).transpose()
    }

    async fn save_imap_cursor(
        &self,
        channel: &ChannelName,
        mailbox: &MailboxKey,
        cursor: &ImapCursor,
    ) -> BackendResult<()> {
        self.put_data("dynamodb put mailbox cursor", mailbox_pk(channel), format!("CURSOR#{mailbox}"), encode(cursor)?)
            .await
    }

    async fn pop3_taken(&self, channel: &ChannelName, mailbox: &MailboxKey) -> BackendResult<HashSet<String>> {
        let prefix = uidl_prefix(mailbox);
        let items = self.query_prefix("dynamodb list POP3 UIDLs", mailbox_pk(channel), &prefix).await?;
        items.iter().map(|i| text(i, "sk").map(|sk| sk.trim_start_matches(prefix.as_str()).to_owned())).collect()
    }

    async fn pop3_add(&self, channel: &ChannelName, mailbox: &MailboxKey, uidl: &str) -> BackendResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(mailbox_pk(channel)))
            .item("sk", s(format!("{}{uidl}", uidl_prefix(mailbox))))
            .send()
            .await
            .map_err(|e| classify("dynamodb put POP3 UIDL", e))?;
        Ok(())
    }

    async fn pop3_forget(&self, channel: &ChannelName, mailbox: &MailboxKey, uidls: &[String]) -> BackendResult<()> {
        let pk = mailbox_pk(channel);
        let prefix = uidl_prefix(mailbox);
        let requests: Vec<_> = uidls
            .iter()
            .map(|u| {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", s(pk.clone()))
                    .key("sk", s(format!("{prefix}{u}")))
            })
            .collect();
        stream::iter(requests)
            .map(|request| async move {
                request.send().await.map(|_| ()).map_err(|e| classify("dynamodb delete POP3 UIDL", e))
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn health(&self, channel: &ChannelName) -> BackendResult<Option<ChannelHealth>> {
        let item = self.get_item("dynamodb get channel health", mailbox_pk(channel), "HEALTH".to_owned()).await?;
        item.as_ref().map(decode).transpose()
    }

    async fn save_health(&self, channel: &ChannelName, health: &ChannelHealth) -> BackendResult<()> {
        self.put_data("dynamodb put channel health", mailbox_pk(channel), "HEALTH".to_owned(), encode(health)?).await
    }

    async fn try_lease(
        &self,
        channel: &ChannelName,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BackendResult<bool> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(mailbox_pk(channel)))
            .item("sk", s("LEASE"))
            .item("owner", s(owner))
            .item("until", s(stamp(until)))
            .condition_expression("attribute_not_exists(pk) OR #until <= :now OR #owner = :owner")
            .expression_attribute_names("#until", "until")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":now", s(stamp(now)))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(CONDITION_FAILED) => Ok(false),
            Err(e) => Err(classify("dynamodb take polling lease", e)),
        }
    }

    async fn release_lease(&self, channel: &ChannelName, owner: &str) -> BackendResult<()> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(mailbox_pk(channel)))
            .key("sk", s("LEASE"))
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(CONDITION_FAILED) => Ok(()),
            Err(e) => Err(classify("dynamodb release polling lease", e)),
        }
    }
}
