//! From Lambda events to the ingest use case.
//!
//! The function is triggered by SQS, whose messages are S3 event notifications for objects SES
//! wrote under `inbound/`. It also accepts being invoked directly with an S3 event, or by an SES
//! receipt rule's Lambda action (the rule's S3 action must come first: the object is then
//! `MAILROOM_INBOUND_PREFIX + mail.messageId` in `MAILROOM_RAW_BUCKET`).
//!
//! Every record is handled on its own: from SQS a failed record is reported in
//! `batchItemFailures` (retried alone, then dead-lettered), and the rest of the batch is kept.
//! An object that no longer exists is logged and acknowledged, because no retry can bring it back.

use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::event::s3::{S3Event, S3EventRecord};
use aws_lambda_events::event::ses::SimpleEmailEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use mailroom::adapters::aws::S3RawStore;
use mailroom::domain::ids::EmailAddress;
use mailroom::domain::journal::{Disposition, Source};
use mailroom::ports::{BackendError, BackendResult};
use mailroom::usecases::ingest::{InboundEmail, IngestError, IngestService};
use serde::Serialize;
use serde_json::Value;
use tracing::{error, info, instrument, warn};

/// Where the raw bytes of an inbound email are read from (S3 in Lambda, a map in tests).
#[async_trait]
pub trait ObjectSource: Send + Sync {
    /// The object's bytes, or `None` when it does not exist.
    async fn fetch(&self, bucket: &str, key: &str) -> BackendResult<Option<Vec<u8>>>;
}

#[async_trait]
impl ObjectSource for S3RawStore {
    async fn fetch(&self, bucket: &str, key: &str) -> BackendResult<Option<Vec<u8>>> {
        self.get_object(bucket, key).await
    }
}

/// What the handler needs, built once at INIT.
pub struct Handler {
    pub ingest: IngestService,
    pub objects: Arc<dyn ObjectSource>,
    /// Where SES's S3 action writes mail (used for SES receipt events).
    pub raw_bucket: String,
    pub inbound_prefix: String,
}

/// The function's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// To the SQS event source: the records to retry (`ReportBatchItemFailures`).
    Batch(SqsBatchResponse),
    /// To an SES receipt rule's synchronous Lambda action: carry on with the rule.
    Ses { disposition: &'static str },
    /// To a direct S3 invocation, or for an event with nothing to do.
    Done { ingested: usize, skipped: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("unrecognised event: {0}")]
    Unrecognised(&'static str),
    #[error("malformed {kind}")]
    Malformed {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("S3 record without {0}")]
    Incomplete(&'static str),
    #[error("S3 object key {key:?} is not valid percent-encoded UTF-8")]
    Key {
        key: String,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("cannot read s3://{bucket}/{key}")]
    Fetch {
        bucket: String,
        key: String,
        #[source]
        source: BackendError,
    },
    #[error("ingest of s3://{bucket}/{key} did not finish")]
    Ingest {
        bucket: String,
        key: String,
        #[source]
        source: IngestError,
    },
    #[error("{failed} of {total} records failed; the first failure follows")]
    Records {
        failed: usize,
        total: usize,
        #[source]
        first: Box<HandlerError>,
    },
}

impl HandlerError {
    /// Whether another attempt can succeed (for logs; SQS retries every reported failure, and
    /// its redrive policy dead-letters what keeps failing).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Fetch { source, .. } => source.is_transient(),
            Self::Ingest { source, .. } => source.is_transient(),
            Self::Records { first, .. } => first.is_transient(),
            Self::Unrecognised(_) | Self::Malformed { .. } | Self::Incomplete(_) | Self::Key { .. } => false,
        }
    }
}

/// How a failed invocation is reported to Lambda (and shown in CloudWatch): a stable type that
/// says whether a retry can help, and the cause chain.
impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(e: HandlerError) -> Self {
        let error_type = if e.is_transient() { "Mailroom.TransientFailure" } else { "Mailroom.PermanentFailure" };
        Self { error_type: error_type.to_owned(), error_message: ErrorChain(&e).to_string() }
    }
}

/// What became of one S3 object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Ingested(Disposition),
    /// Not for us (another event type, another prefix) or gone: acknowledged.
    Skipped,
}

/// Decodes an S3 notification key: `+` is a space, then percent-decoding.
pub fn decode_s3_key(raw: &str) -> Result<String, HandlerError> {
    let plus_as_space = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|source| HandlerError::Key { key: raw.to_owned(), source })
}

fn records_source(event: &Value) -> Option<&str> {
    event.get("Records")?.get(0)?.get("eventSource")?.as_str()
}

fn is_s3_test_event(event: &Value) -> bool {
    event.get("Event").and_then(Value::as_str) == Some("s3:TestEvent")
}

impl Handler {
    /// Handles any event the function can receive.
    pub async fn handle(&self, event: Value) -> Result<Response, HandlerError> {
        match records_source(&event) {
            Some("aws:sqs") => {
                let event: SqsEvent = serde_json::from_value(event)
                    .map_err(|source| HandlerError::Malformed { kind: "SQS event", source })?;
                Ok(Response::Batch(self.handle_sqs(event).await))
            }
            Some("aws:s3") => {
                let event: S3Event = serde_json::from_value(event)
                    .map_err(|source| HandlerError::Malformed { kind: "S3 event", source })?;
                self.handle_s3_direct(event).await
            }
            Some("aws:ses") => {
                let event: SimpleEmailEvent = serde_json::from_value(event)
                    .map_err(|source| HandlerError::Malformed { kind: "SES event", source })?;
                self.handle_ses(event).await
            }
            Some(_) => Err(HandlerError::Unrecognised("records from an event source other than SQS, S3 or SES")),
            None if is_s3_test_event(&event) => {
                info!("S3 test event ignored");
                Ok(Response::Done { ingested: 0, skipped: 1 })
            }
            None if event.get("Records").is_some_and(|r| r.as_array().is_some_and(Vec::is_empty)) => {
                Ok(Response::Done { ingested: 0, skipped: 0 })
            }
            None => Err(HandlerError::Unrecognised("no Records and not an S3 test event")),
        }
    }

    /// Each SQS message on its own; failures are reported by message id, the rest acknowledged.
    pub async fn handle_sqs(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let message_id = record.message_id.unwrap_or_default();
            let result = match record.body.as_deref() {
                Some(body) => self.handle_sqs_body(body).await,
                None => Err(HandlerError::Unrecognised("SQS message without a body")),
            };
            if let Err(e) = result {
                error!(sqs_message_id = %message_id, transient = e.is_transient(), error = %ErrorChain(&e), "record failed; SQS will retry it");
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
    async fn handle_sqs_body(&self, body: &str) -> Result<(), HandlerError> {
        let notification: Value = serde_json::from_str(body)
            .map_err(|source| HandlerError::Malformed { kind: "SQS message body (not JSON)", source })?;
        if is_s3_test_event(&notification) {
            info!("S3 test event ignored");
            return Ok(());
        }
        let event: S3Event = serde_json::from_value(notification)
            .map_err(|source| HandlerError::Malformed { kind: "S3 notification in an SQS message", source })?;
        for record in &event.records {
            self.handle_s3_record(record).await?;
        }
        Ok(())
    }

    async fn handle_s3_direct(&self, event: S3Event) -> Result<Response, HandlerError> {
        let total = event.records.len();
        let (mut ingested, mut skipped, mut failures) = (0, 0, Vec::new());
        for record in &event.records {
            match self.handle_s3_record(record).await {
                Ok(Handled::Ingested(_)) => ingested += 1,
                Ok(Handled::Skipped) => skipped += 1,
                Err(e) => failures.push(e),
            }
        }
        fail_if_any(failures, total)?;
        Ok(Response::Done { ingested, skipped })
    }

    async fn handle_s3_record(&self, record: &S3EventRecord) -> Result<Handled, HandlerError> {
        let event_name = record.event_name.as_deref().unwrap_or_default();
        if !event_name.trim_start_matches("s3:").starts_with("ObjectCreated:") {
            info!(event_name, "S3 event ignored: not an object creation");
            return Ok(Handled::Skipped);
        }
        let bucket = record.s3.bucket.name.as_deref().ok_or(HandlerError::Incomplete("a bucket name"))?;
        let key = decode_s3_key(record.s3.object.key.as_deref().ok_or(HandlerError::Incomplete("an object key"))?)?;
        if !key.starts_with(&self.inbound_prefix) {
            warn!(key, prefix = %self.inbound_prefix, "S3 object outside the inbound prefix ignored");
            return Ok(Handled::Skipped);
        }
        self.ingest_object(bucket, &key, Vec::new()).await
    }

    async fn handle_ses(&self, event: SimpleEmailEvent) -> Result<Response, HandlerError> {
        let total = event.records.len();
        let mut failures = Vec::new();
        for record in &event.records {
            let Some(message_id) = record.ses.mail.message_id.as_deref() else {
                failures.push(HandlerError::Incomplete("an SES message id"));
                continue;
            };
            let recipients: Vec<EmailAddress> = record
                .ses
                .receipt
                .recipients
                .iter()
                .filter_map(|r| {
                    EmailAddress::parse(r).inspect_err(|e| warn!(error = %e, "unusable SES recipient skipped")).ok()
                })
                .collect();
            let key = format!("{}{message_id}", self.inbound_prefix);
            if let Err(e) = self.ingest_object(&self.raw_bucket, &key, recipients).await {
                failures.push(e);
            }
        }
        fail_if_any(failures, total)?;
        Ok(Response::Ses { disposition: "CONTINUE" })
    }

    #[instrument(skip_all, fields(key = %key))]
    async fn ingest_object(
        &self,
        bucket: &str,
        key: &str,
        envelope_recipients: Vec<EmailAddress>,
    ) -> Result<Handled, HandlerError> {
        let fetched = self.objects.fetch(bucket, key).await;
        let raw = match fetched {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                warn!("inbound object no longer exists; acknowledged (a retry cannot bring it back)");
                return Ok(Handled::Skipped);
            }
            Err(source) => return Err(HandlerError::Fetch { bucket: bucket.to_owned(), key: key.to_owned(), source }),
        };
        let inbound = InboundEmail {
            raw,
            source: Source::Ses { bucket: bucket.to_owned(), key: key.to_owned() },
            envelope_recipients,
            channel: None,
        };
        let outcome = self.ingest.ingest(inbound).await.map_err(|source| HandlerError::Ingest {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            source,
        })?;
        Ok(Handled::Ingested(outcome.disposition()))
    }
}

fn fail_if_any(mut failures: Vec<HandlerError>, total: usize) -> Result<(), HandlerError> {
    if failures.is_empty() {
        return Ok(());
    }
    let failed = failures.len();
    let first = failures.swap_remove(0);
    Err(HandlerError::Records { failed, total, first: Box::new(first) })
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
    use std::collections::HashMap;
    use std::path::PathBuf;

    use mailroom::adapters::memory::{MemoryIngestStore, MemoryRawStore, MemoryWorkQueue};
    use mailroom::app::ingest_service;
    use mailroom::config::AppConfig;
    use mailroom::ports::{IngestStore, WorkQueue};

    use super::*;

    const BUCKET: &str = "mailroom-raw-123456789012-eu-west-1-abcdef";

    fn fixture(rel: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn event(name: &str) -> Value {
        serde_json::from_slice(&fixture(&format!("events/{name}"))).expect("fixture is JSON")
    }

    /// Objects by (bucket, key); keys in `failing` fail as S3 would under throttling.
    #[derive(Default)]
    struct FakeObjects {
        objects: HashMap<(String, String), Vec<u8>>,
        failing: Vec<String>,
    }

    impl FakeObjects {
        fn with(mut self, key: &str, mail: &str) -> Self {
            self.objects.insert((BUCKET.to_owned(), key.to_owned()), fixture(&format!("mail/{mail}")));
            self
        }
    }

    #[async_trait]
    impl ObjectSource for FakeObjects {
        async fn fetch(&self, bucket: &str, key: &str) -> BackendResult<Option<Vec<u8>>> {
            if self.failing.iter().any(|k| k == key) {
                return Err(BackendError::transient("s3 get object", "throttled"));
            }
            Ok(self.objects.get(&(bucket.to_owned(), key.to_owned())).cloned())
        }
    }

    struct Setup {
        handler: Handler,
        store: Arc<MemoryIngestStore>,
        routing: Arc<MemoryWorkQueue>,
    }

    fn setup(objects: FakeObjects, config: AppConfig) -> Setup {
        let store = Arc::new(MemoryIngestStore::default());
        let routing = Arc::new(MemoryWorkQueue::new("routing", 5));
        let ingest = ingest_service(&config, Arc::new(MemoryRawStore::default()), store.clone(), routing.clone())
            .expect("valid config");
        let handler = Handler {
            ingest,
            objects: Arc::new(objects),
            raw_bucket: BUCKET.to_owned(),
            inbound_prefix: "inbound/".to_owned(),
        };
        Setup { handler, store, routing }
    }

    fn two_channels() -> AppConfig {
        AppConfig::parse(
            r#"
            [[channels]]
            name = "support"
            address = "support@example.com"
            default_queue = "support"

            [[channels]]
            name = "billing"
            address = "billing@example.com"
            default_queue = "billing"

            [[queues]]
            name = "support"

            [[queues]]
            name = "billing"
            "#,
            "test",
        )
        .expect("valid")
    }

    fn failed_ids(response: &Response) -> Vec<String> {
        match response {
            Response::Batch(batch) => batch.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect(),
            other => panic!("expected a batch response, got {other:?}"),
        }
    }

    #[test]
    fn s3_keys_are_url_decoded() {
        assert_eq!(decode_s3_key("inbound/manual+test%281%29.eml").unwrap(), "inbound/manual test(1).eml");
        assert_eq!(decode_s3_key("inbound/a%2Bb").unwrap(), "inbound/a+b");
        assert!(decode_s3_key("inbound/%FF").is_err());
    }

    #[tokio::test]
    async fn sqs_batch_reports_only_the_failed_records() {
        let mut objects = FakeObjects::default()
            .with("inbound/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g81", "customer-question.eml")
            .with("inbound/manual test(1).eml", "billing-question.eml");
        objects.failing.push("inbound/throttled0e2ic28trm7dfhrc2v0clambda4n".to_owned());
        let s = setup(objects, AppConfig::demo());

        let response = s.handler.handle(event("sqs-s3-notifications.json")).await.expect("handled");
        // Throttled fetch and a body that is not JSON are retried; the deleted object is not.
        assert_eq!(
            failed_ids(&response),
            vec!["7b5f0a4c-0003-4b8e-9d3e-5c9a1f2e8d03", "7b5f0a4c-0005-4b8e-9d3e-5c9a1f2e8d05"]
        );

        let journal = s.store.journal_recent(10).await.unwrap();
        assert_eq!(journal.len(), 2, "both readable emails are journaled");
        assert!(journal.iter().all(|e| e.disposition == Some(Disposition::New)), "{journal:?}");
        let keys: Vec<_> = journal
            .iter()
            .map(|e| match &e.source {
                Source::Ses { bucket, key } => (bucket.as_str(), key.as_str()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(keys.contains(&(BUCKET, "inbound/manual test(1).eml")), "{keys:?}");
        assert_eq!(s.routing.depth().await.unwrap(), 2, "both interactions requested routing");

        // Redelivery of the same batch records nothing new.
        let again = s.handler.handle(event("sqs-s3-notifications.json")).await.expect("handled");
        assert_eq!(failed_ids(&again).len(), 2);
        assert_eq!(s.store.journal_recent(10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn s3_test_event_is_acknowledged() {
        let s = setup(FakeObjects::default(), AppConfig::demo());
        let response = s.handler.handle(event("sqs-s3-test-event.json")).await.expect("handled");
        assert!(failed_ids(&response).is_empty());
        assert!(s.store.journal_recent(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn ses_receipt_event_uses_the_envelope_recipients() {
        let objects =
            FakeObjects::default().with("inbound/jpo3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g81", "billing-question.eml");
        let s = setup(objects, two_channels());
        let response = s.handler.handle(event("ses-lambda-action.json")).await.expect("handled");
        assert_eq!(response, Response::Ses { disposition: "CONTINUE" });
        assert_eq!(serde_json::to_value(&response).unwrap(), serde_json::json!({ "disposition": "CONTINUE" }));

        let journal = s.store.journal_recent(1).await.unwrap();
        // The mail is addressed to a list; only the SES recipient names the billing channel.
        assert_eq!(journal[0].channel.as_ref().map(|c| c.as_str()), Some("billing"), "{:?}", journal[0]);
        assert_eq!(journal[0].disposition, Some(Disposition::New));
    }

    #[tokio::test]
    async fn direct_s3_event_fails_the_invocation_only_for_failed_records() {
        let objects =
            FakeObjects::default().with("inbound/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g81", "customer-question.eml");
        let s = setup(objects, AppConfig::demo());
        let response = s.handler.handle(event("s3-object-created.json")).await.expect("handled");
        assert_eq!(response, Response::Done { ingested: 1, skipped: 0 });

        let s = setup(
            FakeObjects {
                failing: vec!["inbound/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g81".into()],
                ..Default::default()
            },
            AppConfig::demo(),
        );
        let err = s.handler.handle(event("s3-object-created.json")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[tokio::test]
    async fn unknown_events_are_refused() {
        let s = setup(FakeObjects::default(), AppConfig::demo());
        let err = s.handler.handle(serde_json::json!({ "hello": "world" })).await.unwrap_err();
        assert!(matches!(err, HandlerError::Unrecognised(_)), "{err}");
        let err =
            s.handler.handle(serde_json::json!({ "Records": [{ "eventSource": "aws:kinesis" }] })).await.unwrap_err();
        assert!(matches!(err, HandlerError::Unrecognised(_)), "{err}");
    }
}
