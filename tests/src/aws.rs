//! The AWS adapters against moto's server: clients, and fresh uniquely named resources per test
//! (table with its GSI, bucket, queues with a dead-letter queue) so tests run in parallel.
//!
//! moto's URL comes from `MAILROOM_TEST_MOTO_URL` (`infra/moto.sh env`); credentials are static
//! (`test`/`test`, `us-east-1`), so nothing here can reach a real AWS account.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;
use mailroom::adapters::aws::{AwsBackend, AwsSettings, SqsWorkQueue, s3_client};
use mailroom::ports::WorkQueue;

use crate::contract::{Backend, BackendFactory};
use crate::routing::{RoutingBackend, RoutingFactory};

/// The environment variable naming moto's endpoint.
pub const MOTO_URL_VAR: &str = "MAILROOM_TEST_MOTO_URL";

/// SDK clients pointed at one moto server.
#[derive(Clone)]
pub struct Moto {
    pub url: String,
    pub config: SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
}

/// moto's clients, or `None` (after printing why) when `MAILROOM_TEST_MOTO_URL` is unset.
/// Panics instead when `MAILROOM_REQUIRE_SERVERS=1`, so CI cannot pass by skipping.
pub async fn moto() -> Option<Moto> {
    let url = crate::server_env(MOTO_URL_VAR)?;
    Some(Moto::connect(&url).await)
}

/// A name no other test (or test run against the same moto) uses: lower-case letters, digits
/// and `-`, valid for tables, buckets and queues alike.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!(
        "{prefix}-{}-{:x}-{}",
        std::process::id(),
        nanos % 0xffff_ffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh set of resources with the adapters on them.
#[derive(Clone)]
pub struct FreshAws {
    pub backend: AwsBackend,
    pub settings: AwsSettings,
    /// The routing queue's dead-letter queue.
    pub routing_dlq_url: String,
}

impl Moto {
    pub async fn connect(url: &str) -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(url)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "mailroom-tests"))
            .load()
            .await;
        Self {
            url: url.to_owned(),
            s3: s3_client(&config, true),
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            config,
        }
    }

    /// A state table shaped like `StateTable` in `template.yaml`.
    pub async fn create_table(&self, name: &str) {
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("key")
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute")
        };
        self.dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(
                ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"].into_iter().map(attr).collect(),
            ))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            // As template.yaml's StateTable: the listings (gsi1) and the available agents (gsi2).
            .set_global_secondary_indexes(Some(
                ["gsi1", "gsi2"]
                    .into_iter()
                    .map(|index| {
                        GlobalSecondaryIndex::builder()
                            .index_name(index)
                            .key_schema(key(&format!("{index}pk"), KeyType::Hash))
                            .key_schema(key(&format!("{index}sk"), KeyType::Range))
                            .projection(Projection::builder().projection_type(ProjectionType::All).build())
                            .build()
                            .expect("gsi")
                    })
                    .collect(),
            ))
            .send()
            .await
            .unwrap_or_else(|e| panic!("create table {name}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)));
    }

    pub async fn create_bucket(&self, name: &str) {
        self.s3
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    }

    /// A queue whose messages move to a new dead-letter queue after `max_receives` receives.
    /// Returns (queue URL, dead-letter queue URL).
    pub async fn create_queue_with_dlq(&self, name: &str, max_receives: u32) -> (String, String) {
        let dlq_url = self.create_queue(&format!("{name}-dlq"), None).await;
        let dlq_arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("dlq attributes")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("dlq arn");
        let policy = serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string() });
        let url = self.create_queue(name, Some(policy.to_string())).await;
        (url, dlq_url)
    }

    async fn create_queue(&self, name: &str, redrive_policy: Option<String>) -> String {
        self.sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(redrive_policy.map(|p| [(QueueAttributeName::RedrivePolicy, p)].into()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("create queue {name}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))
            .queue_url
            .expect("queue url")
    }

    /// A table, a bucket and a routing queue (with a dead-letter queue after 5 receives, as in
    /// `template.yaml`) that no other test uses, and the adapters on them.
    pub async fn fresh_backend(&self) -> FreshAws {
        let name = unique_name("mr");
        self.create_table(&name).await;
        self.create_bucket(&name).await;
        let (routing_url, routing_dlq_url) = self.create_queue_with_dlq(&format!("{name}-routing"), 5).await;
        let settings = AwsSettings {
            table: name.clone(),
            raw_bucket: name,
            routing_queue_url: routing_url,
            inbound_prefix: AwsSettings::DEFAULT_INBOUND_PREFIX.to_owned(),
        };
        let backend = AwsBackend::from_clients(self.s3.clone(), self.dynamodb.clone(), self.sqs.clone(), &settings);
        FreshAws { backend, settings, routing_dlq_url }
    }

    /// An adapter on an existing queue.
    pub fn queue(&self, url: &str) -> SqsWorkQueue {
        SqsWorkQueue::new(self.sqs.clone(), url)
    }
}

/// The backend contract's resources on moto.
#[async_trait]
impl BackendFactory for Moto {
    async fn fresh(&self) -> Backend {
        let fresh = self.fresh_backend().await;
        Backend { raw: fresh.backend.raw, store: fresh.backend.store, routing: fresh.backend.routing }
    }

    async fn queue_with_dlq(&self, max_receives: u32) -> (Arc<dyn WorkQueue>, Arc<dyn WorkQueue>) {
        let (url, dlq_url) = self.create_queue_with_dlq(&unique_name("mr-q"), max_receives).await;
        (Arc::new(self.queue(&url)), Arc::new(self.queue(&dlq_url)))
    }
}

/// The routing scenarios' resources on moto: a fresh table (interactions, agents and queues in
/// one, as in AWS) and a routing queue with its dead-letter queue.
#[async_trait]
impl RoutingFactory for Moto {
    async fn fresh(&self) -> RoutingBackend {
        let fresh = self.fresh_backend().await;
        RoutingBackend {
            store: fresh.backend.store.clone(),
            transcripts: fresh.backend.store,
            work: fresh.backend.routing,
        }
    }
}
