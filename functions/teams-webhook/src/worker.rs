//! The worker: queued notifications (SQS) and scheduled tasks (EventBridge, with a constant
//! input `{"task": "renew"}` or `{"task": "sync"}`).

use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use mailroom::domain::teams::ChatNotification;
use mailroom::usecases::teams::TeamsService;
use serde_json::{Value, json};
use tracing::{error, info, warn};

pub struct Worker {
    pub teams: Arc<TeamsService>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the event is neither SQS records nor {{\"task\": \"renew\" | \"sync\"}}")]
    UnknownEvent,
    /// A scheduled task failed; the schedule runs it again.
    #[error("the scheduled task failed")]
    Task(#[source] mailroom::usecases::teams::TeamsError),
}

impl Worker {
    pub async fn handle(&self, event: Value) -> Result<Value, WorkerError> {
        if event.get("Records").is_some() {
            let sqs: SqsEvent = serde_json::from_value(event).map_err(|_| WorkerError::UnknownEvent)?;
            return Ok(json!(self.notifications(sqs).await));
        }
        match event.get("task").and_then(Value::as_str) {
            Some("renew") => Ok(json!(self.teams.renew_subscriptions().await.map_err(WorkerError::Task)?)),
            Some("sync") => Ok(json!(self.teams.sync_teams_directory().await.map_err(WorkerError::Task)?)),
            _ => Err(WorkerError::UnknownEvent),
        }
    }

    /// Each record on its own: a transient failure is retried by SQS (and parked in the DLQ after
    /// 5 receives); anything else is logged and acknowledged, since a later re-read of the chat
    /// catches up.
    pub async fn notifications(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        let total = event.records.len();
        for record in event.records {
            let id = record.message_id.clone().unwrap_or_default();
            let Some(n) = record.body.as_deref().and_then(|b| serde_json::from_str::<ChatNotification>(b).ok()) else {
                warn!("a queued notification that cannot be read; acknowledged");
                continue;
            };
            match self.teams.process(&n).await {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    warn!(error = %e, subscription_id = %n.subscription, "notification not processed; SQS retries it");
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    response.batch_item_failures.push(failure);
                }
                Err(e) => error!(error = %e, subscription_id = %n.subscription, "notification dropped"),
            }
        }
        info!(records = total, retried = response.batch_item_failures.len(), "notifications handled");
        response
    }
}
