//! From SQS events to the handoff use case.
//!
//! Each record is one `HandoffRequest` (see `mailroom::usecases::handoff`). Every record is handled
//! on its own: what worked or was parked (refused by Dynamics for good, with the reason, on the
//! dead-letter queue) is acknowledged; what failed transiently is reported in `batchItemFailures`,
//! so SQS retries just that record (and dead-letters it after 5 receives). When Dynamics said how
//! long to wait (`Retry-After`), the record's visibility is set to that first.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use mailroom::usecases::handoff::{HandoffService, WorkOutcome};
use tracing::{error, info, warn};

/// What the handler needs, built once at INIT.
pub struct Handler {
    pub service: Arc<HandoffService>,
}

impl Handler {
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let message_id = record.message_id.unwrap_or_default();
            let outcome = match record.body.as_deref() {
                Some(body) => self.service.handle_work(body).await,
                None => self.service.handle_work("").await,
            };
            match outcome {
                WorkOutcome::Done => {}
                WorkOutcome::Parked { reason } => {
                    info!(sqs_message_id = %message_id, reason = %reason, "handoff parked on the dead-letter queue");
                }
                WorkOutcome::Retry { after, reason } => {
                    error!(sqs_message_id = %message_id, reason = %reason, "handoff failed; SQS will retry it");
                    if let (Some(after), Some(receipt)) = (after, record.receipt_handle.as_deref())
                        && let Err(e) = self.service.queue.release(receipt, after).await
                    {
                        warn!(sqs_message_id = %message_id, error = %e, "could not delay the retry");
                    }
                    if message_id.is_empty() {
                        // Cannot be reported alone; an empty id makes Lambda retry the whole batch.
                        warn!("failed record has no messageId");
                    }
                    response.add_failure(message_id);
                }
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use async_trait::async_trait;
    use mailroom::adapters::embedded::EmbeddedBackend;
    use mailroom::adapters::local_crm::{EmbeddedCrmState, LocalCrm, MimeAttachments};
    use mailroom::adapters::memory::MemoryWorkQueue;
    use mailroom::adapters::secrets::MemorySecretStore;
    use mailroom::app::embedded_ingest_service;
    use mailroom::config::AppConfig;
    use mailroom::domain::crm::CrmSettings;
    use mailroom::domain::journal::Source;
    use mailroom::ports::crm::{Crm, CrmConnector, CrmSettingsStore};
    use mailroom::ports::{BackendError, BackendResult, SystemClock, WorkQueue};
    use mailroom::usecases::crm_settings::CrmRuntime;
    use mailroom::usecases::ingest::InboundEmail;

    use super::*;

    fn fixture(rel: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn event(name: &str) -> SqsEvent {
        serde_json::from_slice(&fixture(&format!("events/{name}"))).expect("fixture is an SQS event")
    }

    struct NoDataverse;

    impl CrmConnector for NoDataverse {
        fn connect(&self, _: &mailroom::domain::crm::DataverseConnection, _: secrecy::SecretString) -> Arc<dyn Crm> {
            unreachable!("these tests use the Local CRM")
        }
    }

    /// A settings store that is down (DynamoDB throttling), for the transient path.
    struct Down;

    #[async_trait]
    impl CrmSettingsStore for Down {
        async fn load(&self) -> BackendResult<Option<CrmSettings>> {
            Err(BackendError::transient("dynamodb get crm settings", "throttled"))
        }
        async fn save(&self, _: &CrmSettings) -> BackendResult<()> {
            Ok(())
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        handler: Handler,
        local: Arc<LocalCrm>,
        dead_letters: Arc<MemoryWorkQueue>,
    }

    async fn setup(settings_down: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let backend = EmbeddedBackend::open(dir.path()).unwrap();
        let ingest = embedded_ingest_service(&AppConfig::demo(), &backend).unwrap();
        let outcome =
            ingest.ingest(InboundEmail::new(fixture("mail/customer-question.eml"), Source::Replay)).await.unwrap();
        // The fixture events name this interaction.
        assert_eq!(outcome.entry.interaction_id.as_ref().map(|i| i.as_str()), Some("X7QS1J3FMJ7X"));
        let local = Arc::new(LocalCrm::open(&backend).unwrap());
        let state = Arc::new(EmbeddedCrmState::open(&backend).unwrap());
        let settings: Arc<dyn CrmSettingsStore> = if settings_down { Arc::new(Down) } else { state.clone() };
        let runtime = CrmRuntime::new(
            settings,
            Arc::new(MemorySecretStore::default()),
            Arc::new(NoDataverse),
            Some(local.clone() as Arc<dyn Crm>),
            Arc::new(SystemClock),
        );
        let dead_letters = Arc::new(MemoryWorkQueue::new("handoff-dlq", u32::MAX));
        let service = HandoffService {
            runtime: Arc::new(runtime),
            store: state,
            interactions: Arc::new(backend.clone()),
            attachments: Some(Arc::new(MimeAttachments::new(Arc::new(backend.clone())))),
            queue: Arc::new(MemoryWorkQueue::new("handoff", 5)),
            dead_letters: dead_letters.clone(),
            clock: Arc::new(SystemClock),
        };
        Setup { _dir: dir, handler: Handler { service: Arc::new(service) }, local, dead_letters }
    }

    fn failed_ids(response: &SqsBatchResponse) -> Vec<String> {
        response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect()
    }

    #[tokio::test]
    async fn each_record_is_handled_on_its_own() {
        let s = setup(false).await;
        let response = s.handler.handle(event("sqs-handoff-requests.json")).await;
        assert!(failed_ids(&response).is_empty(), "handled or parked, none retried: {response:?}");
        // The interaction request created one case (its redelivery in the same batch none).
        let cases = s.local.list_cases(10).unwrap();
        assert_eq!(cases.len(), 1);
        assert_eq!(cases[0].title, "general - Alice Moreau");
        // The malformed record was parked with its reason, not retried.
        let parked =
            s.dead_letters.receive(10, std::time::Duration::from_secs(1), std::time::Duration::ZERO).await.unwrap();
        assert_eq!(parked.len(), 1);
        let parked: serde_json::Value = serde_json::from_str(&parked[0].body).unwrap();
        assert_eq!(parked["type"], "parked");
        assert_eq!(parked["body"], "{\"type\":\"interaction\"}", "the body as it came");
        assert!(parked["reason"].as_str().unwrap().contains("not a handoff request"), "{parked}");
        assert_eq!(serde_json::to_value(&response).unwrap(), serde_json::json!({ "batchItemFailures": [] }));
    }

    #[tokio::test]
    async fn transient_failures_are_reported_for_retry() {
        let s = setup(true).await;
        let response = s.handler.handle(event("sqs-handoff-requests.json")).await;
        // The two interaction requests wait for a retry; the message request had nothing to do
        // (no case yet) and the malformed record is parked regardless.
        assert_eq!(
            failed_ids(&response),
            vec!["5d1c2a4e-0001-4f3b-9a51-7e0c9b1d2f01", "5d1c2a4e-0002-4f3b-9a51-7e0c9b1d2f02"]
        );
        assert!(s.local.list_cases(10).unwrap().is_empty());
    }
}
