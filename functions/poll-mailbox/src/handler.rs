//! From the schedule's event to the poll use case, and back to a summary and metrics.
//!
//! The function takes EventBridge's scheduled event (every channel's mailbox), or a direct
//! invocation `{"channel": "<name>"}` (one channel, e.g. from the console after fixing a
//! password). A mailbox that fails does not fail the invocation: the failure is recorded in
//! the channel's health, logged, and counted in the `MailboxPollFailures` metric. Only a
//! failure to read the channels at all fails it, so Lambda's own error metric shows it.

use async_trait::async_trait;
use mailroom::config::ConfigError;
use mailroom::domain::ids::ChannelName;
use mailroom::ports::BackendError;
use mailroom::usecases::poll_mailbox::{MailboxPoller, PollError, PollOutcome, PollReport};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{error, info};

/// Where the function's secrets live in Secrets Manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSettings {
    /// Names are `<prefix><secret name>`, e.g. `mailroom/prod/channel/support/password`; the
    /// function's policy grants exactly `<prefix>*`.
    pub secret_prefix: String,
}

impl PollSettings {
    /// Reads `MAILROOM_SECRETS_PREFIX`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let secret_prefix = lookup("MAILROOM_SECRETS_PREFIX")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or(ConfigError::MissingEnv { name: "MAILROOM_SECRETS_PREFIX" })?;
        Ok(Self { secret_prefix })
    }
}

/// The poller as the handler uses it (the real one, or a fake in tests).
#[async_trait]
pub trait Poll: Send + Sync {
    async fn poll_all(&self) -> Result<Vec<PollReport>, BackendError>;
    async fn poll_channel(&self, name: &ChannelName) -> Result<PollReport, PollError>;
}

#[async_trait]
impl Poll for MailboxPoller {
    async fn poll_all(&self) -> Result<Vec<PollReport>, BackendError> {
        MailboxPoller::poll_all(self).await
    }

    async fn poll_channel(&self, name: &ChannelName) -> Result<PollReport, PollError> {
        MailboxPoller::poll_channel(self, name).await
    }
}

pub struct Handler<P> {
    pub poller: P,
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("unrecognised event: expected EventBridge's scheduled event or {{\"channel\": \"<name>\"}}")]
    Unrecognised,
    #[error("{0:?} is not a channel name")]
    BadChannel(String),
    #[error("the channels could not be read")]
    Channels(#[source] BackendError),
    #[error("the channel could not be polled")]
    Channel(#[source] PollError),
}

impl HandlerError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Channels(e) => e.is_transient(),
            Self::Channel(PollError::State(e)) => e.is_transient(),
            _ => false,
        }
    }
}

/// How a failed invocation shows in Lambda: a stable type and the cause chain.
impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(e: HandlerError) -> Self {
        let error_type = if e.is_transient() { "Mailroom.TransientFailure" } else { "Mailroom.PermanentFailure" };
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self { error_type: error_type.to_owned(), error_message: message }
    }
}

/// One channel's run, as the function reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelSummary {
    pub channel: String,
    /// `done`, `skipped` or `failed`.
    pub outcome: &'static str,
    pub fetched: u32,
    pub ingested: u32,
    pub repeats: u32,
    pub acknowledged: u32,
    pub more_waiting: bool,
    /// Why it failed or was skipped, in plain words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The function's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub polled: usize,
    pub failed: usize,
    pub skipped: usize,
    pub ingested: u32,
    pub channels: Vec<ChannelSummary>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PollOne {
    channel: String,
}

fn is_schedule(event: &Value) -> bool {
    matches!(event.get("source").and_then(Value::as_str), Some("aws.events" | "aws.scheduler"))
        || event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
        || event.as_object().is_some_and(|o| o.is_empty())
}

fn summarize(reports: Vec<PollReport>) -> Summary {
    let mut summary = Summary::default();
    for r in reports {
        let (outcome, detail) = match &r.outcome {
            PollOutcome::Done => ("done", None),
            PollOutcome::Skipped(why) => ("skipped", Some((*why).to_owned())),
            PollOutcome::Failed(e) => ("failed", Some(e.plain_words())),
        };
        match outcome {
            "failed" => summary.failed += 1,
            "skipped" => summary.skipped += 1,
            _ => {}
        }
        summary.polled += 1;
        summary.ingested += r.counts.ingested;
        summary.channels.push(ChannelSummary {
            channel: r.channel.to_string(),
            outcome,
            fetched: r.counts.fetched,
            ingested: r.counts.ingested,
            repeats: r.counts.repeats,
            acknowledged: r.counts.acknowledged,
            more_waiting: r.counts.more_waiting,
            detail,
        });
    }
    summary
}

/// CloudWatch embedded-metric-format lines, one per channel: `MailboxMessagesIngested` and
/// `MailboxPollFailures` by `channel_id` (an alarm on the latter catches a mailbox that stopped).
pub fn metric_lines(summary: &Summary, timestamp_ms: i64) -> Vec<String> {
    summary
        .channels
        .iter()
        .map(|c| {
            serde_json::json!({
                "_aws": {
                    "Timestamp": timestamp_ms,
                    "CloudWatchMetrics": [{
                        "Namespace": "Mailroom",
                        "Dimensions": [["channel_id"]],
                        "Metrics": [
                            {"Name": "MailboxMessagesIngested", "Unit": "Count"},
                            {"Name": "MailboxPollFailures", "Unit": "Count"}
                        ]
                    }]
                },
                "channel_id": c.channel,
                "MailboxMessagesIngested": c.ingested,
                "MailboxPollFailures": u32::from(c.outcome == "failed"),
            })
            .to_string()
        })
        .collect()
}

impl<P: Poll> Handler<P> {
    pub async fn handle(&self, event: Value) -> Result<Summary, HandlerError> {
        let summary = if let Ok(PollOne { channel }) = serde_json::from_value::<PollOne>(event.clone()) {
            let name = ChannelName::parse(&channel).map_err(|_| HandlerError::BadChannel(channel))?;
            summarize(vec![self.poller.poll_channel(&name).await.map_err(HandlerError::Channel)?])
        } else if is_schedule(&event) {
            let reports = self.poller.poll_all().await.map_err(|e| {
                error!(error = %e, "cannot read the channels; no mailbox polled");
                HandlerError::Channels(e)
            })?;
            summarize(reports)
        } else {
            return Err(HandlerError::Unrecognised);
        };
        for line in metric_lines(&summary, chrono::Utc::now().timestamp_millis()) {
            // EMF goes to stdout, where CloudWatch turns it into metrics.
            println!("{line}");
        }
        info!(
            polled = summary.polled,
            failed = summary.failed,
            skipped = summary.skipped,
            ingested = summary.ingested,
            "mailboxes polled"
        );
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use mailroom::domain::mailbox::RunCounts;
    use mailroom::ports::mailbox::MailboxError;
    use mailroom::usecases::poll_mailbox::AccessError;

    use super::*;

    fn event(name: &str) -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/events").join(name);
        serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("fixture is JSON")
    }

    #[derive(Default)]
    struct FakePoller {
        calls: Mutex<Vec<String>>,
        store_down: bool,
    }

    fn report(channel: &str, outcome: PollOutcome, ingested: u32) -> PollReport {
        PollReport {
            channel: ChannelName::parse(channel).unwrap(),
            counts: RunCounts { fetched: ingested, ingested, acknowledged: ingested, ..Default::default() },
            outcome,
        }
    }

    #[async_trait]
    impl Poll for FakePoller {
        async fn poll_all(&self) -> Result<Vec<PollReport>, BackendError> {
            self.calls.lock().unwrap().push("all".into());
            if self.store_down {
                return Err(BackendError::transient("dynamodb list channels", "throttled"));
            }
            Ok(vec![
                report("support", PollOutcome::Done, 3),
                report(
                    "sales",
                    PollOutcome::Failed(PollError::Access(AccessError::Mailbox(MailboxError::AuthFailed {
                        detail: "[AUTHENTICATIONFAILED] Authentication failed.".into(),
                    }))),
                    0,
                ),
                report("billing", PollOutcome::Skipped("another poller is reading this mailbox"), 0),
            ])
        }

        async fn poll_channel(&self, name: &ChannelName) -> Result<PollReport, PollError> {
            self.calls.lock().unwrap().push(name.to_string());
            Ok(report(name.as_str(), PollOutcome::Done, 1))
        }
    }

    #[tokio::test]
    async fn the_schedule_polls_every_channel_and_failures_do_not_fail_the_invocation() {
        let handler = Handler { poller: FakePoller::default() };
        let summary = handler.handle(event("scheduled-event.json")).await.unwrap();
        assert_eq!((summary.polled, summary.failed, summary.skipped, summary.ingested), (3, 1, 1, 3));
        let sales = summary.channels.iter().find(|c| c.channel == "sales").unwrap();
        assert_eq!(sales.outcome, "failed");
        assert!(sales.detail.as_deref().unwrap().contains("the server refused the sign-in"));
        assert_eq!(handler.poller.calls.lock().unwrap().as_slice(), ["all"]);

        let lines = metric_lines(&summary, 1);
        let sales: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(sales["channel_id"], "sales");
        assert_eq!(sales["MailboxPollFailures"], 1);
        assert_eq!(sales["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Mailroom");
    }

    #[tokio::test]
    async fn a_direct_invocation_polls_one_channel() {
        let handler = Handler { poller: FakePoller::default() };
        let summary = handler.handle(event("poll-one-channel.json")).await.unwrap();
        assert_eq!(summary.channels.len(), 1);
        assert_eq!(handler.poller.calls.lock().unwrap().as_slice(), ["support"]);
        assert!(matches!(
            handler.handle(serde_json::json!({"channel": "no spaces"})).await,
            Err(HandlerError::BadChannel(_))
        ));
    }

    #[tokio::test]
    async fn an_unreadable_channel_store_fails_the_invocation_and_other_events_are_refused() {
        let handler = Handler { poller: FakePoller { store_down: true, ..Default::default() } };
        assert!(matches!(handler.handle(event("scheduled-event.json")).await, Err(HandlerError::Channels(_))));
        assert!(matches!(handler.handle(serde_json::json!({"Records": []})).await, Err(HandlerError::Unrecognised)));
    }

    #[test]
    fn the_secret_prefix_is_required() {
        let err = PollSettings::from_lookup(|_| None).unwrap_err();
        assert!(err.to_string().contains("MAILROOM_SECRETS_PREFIX"));
        let s = PollSettings::from_lookup(|_| Some("mailroom/prod/".into())).unwrap();
        assert_eq!(s.secret_prefix, "mailroom/prod/");
    }
}
