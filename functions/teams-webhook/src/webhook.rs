//! From an API Gateway request to an answer for Graph.

use std::sync::Arc;
use std::time::Duration;

use lambda_http::{Body, Request, RequestExt, Response};
use mailroom::adapters::graph::notifications::{parse_notifications, validation_response};
use mailroom::ports::WorkQueue;
use mailroom::usecases::teams::NotificationIntake;
use tracing::{error, info, warn};

/// What the webhook answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn empty(status: u16) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: String::new() }
    }
}

pub struct Webhook {
    pub intake: NotificationIntake,
    /// Where checked notifications wait for the worker.
    pub queue: Arc<dyn WorkQueue>,
}

impl Webhook {
    /// `validation_token` is the decoded `validationToken` query parameter, if any.
    pub async fn handle(&self, validation_token: Option<&str>, body: &[u8]) -> Answer {
        if let Some(token) = validation_response(validation_token) {
            // Graph wants the token back as it decoded it, as text/plain, within 10 seconds.
            return Answer { status: 200, content_type: "text/plain; charset=utf-8", body: token };
        }
        let (items, skipped) = match parse_notifications(body) {
            Ok(parsed) => parsed,
            Err(e) => {
                warn!(error = %e, "a webhook call that is not a notification");
                return Answer::empty(400);
            }
        };
        let accepted = match self.intake.accept(items).await {
            Ok(a) => a,
            Err(e) => {
                error!(error = %e, "cannot check notifications now; Graph will deliver them again");
                return Answer::empty(if e.is_transient() { 503 } else { 500 });
            }
        };
        for n in &accepted.notifications {
            let body = serde_json::to_string(n).expect("notifications serialize");
            if let Err(e) = self.queue.send(&body, Duration::ZERO).await {
                // Graph delivers the whole batch again; processing is idempotent.
                error!(error = %e, "cannot queue a notification; asking Graph to deliver again");
                return Answer::empty(503);
            }
        }
        info!(queued = accepted.notifications.len(), rejected = accepted.rejected, skipped, "notifications accepted");
        Answer::empty(202)
    }

    /// The Lambda front door: API Gateway's request in, its response out.
    pub async fn respond(&self, request: Request) -> Response<Body> {
        let params = request.query_string_parameters();
        let answer = self.handle(params.first("validationToken"), request.body().as_ref()).await;
        Response::builder()
            .status(answer.status)
            .header("Content-Type", answer.content_type)
            .body(if answer.body.is_empty() { Body::Empty } else { Body::Text(answer.body) })
            .expect("a valid response")
    }
}
