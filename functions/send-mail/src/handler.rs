//! From SQS events to the send worker.
//!
//! Each record is one send job, handled on its own ([`SendWorker::process`]):
//! - sent, sent before (a redelivery), or refused for good (recorded on the interaction): done;
//! - a transient failure, or another worker holding it: its visibility is set to the backoff
//!   delay and it is reported in `batchItemFailures`, so SQS delivers it again then;
//! - cannot be sent until someone fixes the cause: sent to the dead-letter queue (for replay)
//!   and acknowledged;
//! - a backend failure: reported, so SQS retries it (and its redrive policy parks it).

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use mailroom::usecases::send_mail::{JobOutcome, SendWorker};
use tracing::{error, info, warn};

pub struct Handler {
    pub worker: SendWorker,
}

impl Handler {
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        let total = event.records.len();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let Some(body) = record.body.as_deref() else {
                warn!("an SQS record without a body; acknowledged");
                continue;
            };
            let retry = match self.worker.process(body).await {
                Ok(JobOutcome::Sent | JobOutcome::AlreadyFinished(_) | JobOutcome::Failed(_)) => false,
                Ok(JobOutcome::Retry { after, .. } | JobOutcome::Busy { after }) => {
                    if let Some(receipt) = record.receipt_handle.as_deref()
                        && let Err(e) = self.worker.queue.release(receipt, after).await
                    {
                        // The job then comes back when the queue's visibility timeout ends.
                        warn!(error = %e, "could not set the retry delay");
                    }
                    true
                }
                Ok(JobOutcome::Park(_)) => match self.worker.dead_letters.send(body, std::time::Duration::ZERO).await {
                    Ok(()) => false,
                    Err(e) => {
                        error!(error = %e, "could not park a send job; SQS will deliver it again");
                        true
                    }
                },
                Err(e) => {
                    error!(error = %e, transient = e.is_transient(), "send job not finished");
                    true
                }
            };
            if retry {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
        info!(records = total, retried = response.batch_item_failures.len(), "batch handled");
        response
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use mailroom::adapters::channels::MemoryChannelStore;
    use mailroom::adapters::memory::{MemoryRawStore, MemoryWorkQueue};
    use mailroom::adapters::outbound::{MemoryOutboundStore, RecordingSender, StoredChannels};
    use mailroom::adapters::secrets::MemorySecretStore;
    use mailroom::config::AppConfig;
    use mailroom::domain::ids::{AgentId, ChannelName, EmailAddress, InteractionId, MessageId};
    use mailroom::domain::outbound::{DeliveryState, OutboundKind, OutboundRecord, SendAs, ServerReply};
    use mailroom::ports::channels::{ChannelStore, StoredChannel};
    use mailroom::ports::outbound::{OutboundStore, SendError};
    use mailroom::ports::{Clock, RawMailStore, SystemClock, WorkQueue};
    use mailroom::usecases::send_mail::RetryPolicy;

    use super::*;

    fn event(name: &str) -> SqsEvent {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/events").join(name);
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("an SQS event")
    }

    struct Fixture {
        handler: Handler,
        records: Arc<MemoryOutboundStore>,
        sender: Arc<RecordingSender>,
        dead_letters: Arc<MemoryWorkQueue>,
    }

    /// A worker whose store holds the record the fixtures' first job names (`INTERACTION` /
    /// `mr.fixture.1@example.com`), sending through SES.
    async fn fixture() -> Fixture {
        let records = Arc::new(MemoryOutboundStore::default());
        let raw = Arc::new(MemoryRawStore::default());
        let raw_key =
            raw.put(b"From: support@example.com\r\nTo: a@example.org\r\nSubject: x\r\n\r\nhi\r\n").await.unwrap();
        let now = SystemClock.now();
        records
            .create_record(&OutboundRecord {
                message_id: MessageId::parse("mr.fixture.1@example.com").unwrap(),
                interaction_id: InteractionId::parse("3FMPSZ5629DM").unwrap(),
                channel: ChannelName::parse("support").unwrap(),
                agent: AgentId::parse("ana").unwrap(),
                kind: OutboundKind::Reply,
                send_as: SendAs::Channel,
                from: EmailAddress::parse("support@example.com").unwrap(),
                recipients: vec![EmailAddress::parse("a@example.org").unwrap()],
                raw_key,
                size: 60,
                state: DeliveryState::Queued,
                attempts: 0,
                version: 1,
                lease_until: None,
                last_error: None,
                accepted: None,
                created_at: now,
                updated_at: now,
                sent_at: None,
            })
            .await
            .unwrap();
        let sender = Arc::new(RecordingSender::default());
        let dead_letters = Arc::new(MemoryWorkQueue::new("send-dlq", u32::MAX));
        // The demo channel `support`, as the channel store holds it: the internal server (SES).
        let channels = Arc::new(MemoryChannelStore::default());
        let support = AppConfig::demo().channels[0].clone();
        let record = StoredChannel { channel: support, version: 0, position: 0, seed: None, updated_at: now };
        channels.put(&record, None).await.unwrap();
        let worker = SendWorker {
            outbound: records.clone(),
            raw_store: raw,
            profiles: records.clone(),
            secrets: Arc::new(MemorySecretStore::default()),
            channels: StoredChannels::new(channels),
            sender: sender.clone(),
            queue: Arc::new(MemoryWorkQueue::new("send", 10)),
            dead_letters: dead_letters.clone(),
            clock: Arc::new(SystemClock),
            policy: RetryPolicy::default(),
        };
        Fixture { handler: Handler { worker }, records, sender, dead_letters }
    }

    #[tokio::test]
    async fn sends_once_and_parks_what_cannot_be_sent() {
        let f = fixture().await;
        // Record 1: the job; 2: the same job redelivered; 3: a job for no record; 4: not JSON.
        let response = f.handler.handle(event("sqs-send-jobs.json")).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        assert_eq!(f.sender.sent().len(), 1, "sent once");
        let record = f
            .records
            .record(
                &InteractionId::parse("3FMPSZ5629DM").unwrap(),
                &MessageId::parse("mr.fixture.1@example.com").unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.state, DeliveryState::Sent);
        assert_eq!(f.dead_letters.depth().await.unwrap(), 2, "the unknown and the malformed job are parked");
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(json, serde_json::json!({"batchItemFailures": []}));
    }

    #[tokio::test]
    async fn a_transient_failure_is_reported_for_retry() {
        let f = fixture().await;
        f.sender.fail_next([SendError::Transient {
            reply: ServerReply { code: Some(421), text: "421 4.7.0 try again later".into() },
            source: None,
        }]);
        let response = f.handler.handle(event("sqs-one-send-job.json")).await;
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(json, serde_json::json!({"batchItemFailures": [{"itemIdentifier": "job-1"}]}));
        let record = f
            .records
            .record(
                &InteractionId::parse("3FMPSZ5629DM").unwrap(),
                &MessageId::parse("mr.fixture.1@example.com").unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((record.state, record.attempts), (DeliveryState::Retrying, 1));
        assert_eq!(record.last_error.unwrap().code, Some(421));
        // The redelivery sends it.
        let response = f.handler.handle(event("sqs-one-send-job.json")).await;
        assert!(response.batch_item_failures.is_empty());
        assert_eq!(f.sender.sent().len(), 1);
    }
}
