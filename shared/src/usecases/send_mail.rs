//! The send worker: takes send jobs off the send queue and delivers each message once.
//!
//! One job names one delivery record (by interaction and our Message-ID). The worker claims the
//! record with a conditional state change (`queued`/`retrying`/`parked` → `sending`, version
//! checked), sends the stored bytes through the account the message was composed for, and records
//! the outcome with another conditional change. So a job delivered twice (SQS at-least-once, a
//! crash before the delete) finds the message `sent` and does nothing; two workers holding the
//! same job cannot both send it.
//!
//! Outcomes: accepted → `sent`; a transient failure (4xx, timeout) → `retrying`, the job comes
//! back after a growing delay, and after [`RetryPolicy::max_attempts`] it is parked; a rejection
//! (5xx to the message or a recipient) → `failed` with the server's words, shown in the
//! transcript; a configuration problem (authentication refused, no password, From not matching
//! the account) → `parked`: the job goes to the dead-letter queue, to be replayed once fixed.
//!
//! The same [`SendWorker::process`] serves the SQS-triggered Lambda (`functions/send-mail`), the
//! loop in `mailroom serve` ([`SendWorker::run`]) and the tests ([`SendWorker::step`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, instrument, warn};

use super::outbound::{RouteProblem, identity, route_for};
use crate::domain::outbound::{self, Claim, DeliveryState, OutboundRecord, SendJob, ServerReply};
use crate::domain::profile::AgentProfile;
use crate::ports::outbound::{
    ChannelDirectory, MailEnvelope, MailSender, OutboundStore, ProfileStore, SendError, Written,
};
use crate::ports::secrets::SecretStore;
use crate::ports::{BackendError, Clock, RawMailStore, WorkQueue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a message that keeps failing transiently is parked.
    pub max_attempts: u32,
    /// The delay after the first failure; each next one is 4 times longer, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// How long a worker holds a message it is sending; past it, another may take over.
    pub lease: Duration,
}

impl Default for RetryPolicy {
    /// 30 s, 2 min, 8 min, 32 min, then parked: about 45 minutes of trying, within the SQS
    /// visibility limit of 12 hours and under the queues' `maxReceiveCount` of 10.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            lease: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 4u32.saturating_pow(attempt.saturating_sub(1).min(8));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What became of one job, and what the queue should do with it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Accepted by the server now: delete the job.
    Sent,
    /// Sent or failed earlier (a redelivered job): delete it.
    AlreadyFinished(DeliveryState),
    /// Refused for good; recorded on the interaction: delete the job.
    Failed(ServerReply),
    /// A transient failure: deliver the job again after the delay.
    Retry { after: Duration, reply: ServerReply },
    /// Another worker is sending it: look again after the delay.
    Busy { after: Duration },
    /// Cannot be sent until someone fixes the cause: move the job to the dead-letter queue.
    Park(String),
}

impl JobOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::AlreadyFinished(_) => "already_finished",
            Self::Failed(_) => "failed",
            Self::Retry { .. } => "retry",
            Self::Busy { .. } => "busy",
            Self::Park(_) => "parked",
        }
    }
}

/// What one [`SendWorker::step`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    pub received: usize,
    pub sent: usize,
    pub finished_before: usize,
    pub failed: usize,
    pub retried: usize,
    pub parked: usize,
}

#[derive(Clone)]
pub struct SendWorker {
    pub outbound: Arc<dyn OutboundStore>,
    pub raw_store: Arc<dyn RawMailStore>,
    pub profiles: Arc<dyn ProfileStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub channels: Arc<dyn ChannelDirectory>,
    pub sender: Arc<dyn MailSender>,
    pub queue: Arc<dyn WorkQueue>,
    pub dead_letters: Arc<dyn WorkQueue>,
    pub clock: Arc<dyn Clock>,
    pub policy: RetryPolicy,
}

fn lease(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::minutes(2))
}

impl SendWorker {
    /// Handles one job body. `Err` only for a backend failure (the job stays on the queue and is
    /// delivered again); every send outcome is an `Ok`.
    #[instrument(skip_all, fields(interaction_id, message_id, outcome))]
    pub async fn process(&self, body: &str) -> Result<JobOutcome, BackendError> {
        let outcome = self.process_inner(body).await;
        if let Ok(o) = &outcome {
            tracing::Span::current().record("outcome", o.as_str());
        }
        outcome
    }

    async fn process_inner(&self, body: &str) -> Result<JobOutcome, BackendError> {
        let Ok(job) = SendJob::from_body(body) else {
            error!("a send job is not valid JSON of the expected shape; parking it");
            return Ok(JobOutcome::Park("the job is malformed".into()));
        };
        let span = tracing::Span::current();
        span.record("interaction_id", job.interaction_id.as_str());
        span.record("message_id", job.message_id.as_str());
        let Some(record) = self.outbound.record(&job.interaction_id, &job.message_id).await? else {
            error!("no delivery record for this job; parking it");
            return Ok(JobOutcome::Park("no delivery record for this message".into()));
        };
        let now = self.clock.now();
        let sending = match record.claim(now, lease(self.policy.lease)) {
            Claim::Finished(state) => {
                info!(state = state.as_str(), "redelivered job: the message was handled before");
                return Ok(JobOutcome::AlreadyFinished(state));
            }
            Claim::Busy { until } => {
                let after = (until - now).to_std().unwrap_or_default().max(Duration::from_secs(1));
                return Ok(JobOutcome::Busy { after });
            }
            Claim::Send(next) => *next,
        };
        if record.state == DeliveryState::Sending {
            warn!("an earlier attempt stopped mid-send; sending again with the same Message-ID");
        }
        match self.outbound.replace_record(&sending, record.version).await? {
            Written::Done => {}
            Written::Stale(_) => return Ok(JobOutcome::Busy { after: Duration::from_secs(1) }),
        }

        let Some(raw) = self.raw_store.get(&sending.raw_key).await? else {
            let reply =
                ServerReply { code: None, text: "the rendered message is missing from the raw mail store".into() };
            self.settle(&sending, sending.failed(DeliveryState::Parked, reply.clone(), self.clock.now())).await?;
            return Ok(JobOutcome::Park(reply.text));
        };
        let route = match self.route(&sending).await {
            Ok(route) => route,
            Err(RouteProblem::Backend(e)) => return Err(e),
            Err(problem) => {
                warn!(problem = %problem, "cannot send with this account; parked until it is fixed");
                let reply = problem.reply();
                self.settle(&sending, sending.failed(DeliveryState::Parked, reply.clone(), self.clock.now())).await?;
                return Ok(JobOutcome::Park(reply.text));
            }
        };
        let envelope = MailEnvelope { from: sending.from.clone(), recipients: sending.recipients.clone() };
        let result = self.sender.send(&route, &envelope, &raw).await;
        let now = self.clock.now();
        match result {
            Ok(accepted) => {
                self.settle(&sending, sending.sent(accepted.response, now)).await?;
                info!(attempt = sending.attempts, "message sent");
                Ok(JobOutcome::Sent)
            }
            Err(SendError::Transient { reply, .. }) if sending.attempts < self.policy.max_attempts => {
                let after = self.policy.delay(sending.attempts);
                warn!(
                    attempt = sending.attempts,
                    code = reply.code,
                    retry_in_s = after.as_secs(),
                    "temporary failure; will retry"
                );
                self.settle(&sending, sending.failed(DeliveryState::Retrying, reply.clone(), now)).await?;
                Ok(JobOutcome::Retry { after, reply })
            }
            Err(SendError::Transient { reply, .. }) => {
                warn!(attempt = sending.attempts, code = reply.code, "temporary failures did not stop; parked");
                self.settle(&sending, sending.failed(DeliveryState::Parked, reply.clone(), now)).await?;
                Ok(JobOutcome::Park(reply.text))
            }
            Err(SendError::Rejected { reply, .. }) => {
                warn!(code = reply.code, "the server refused the message for good");
                self.settle(&sending, sending.failed(DeliveryState::Failed, reply.clone(), now)).await?;
                Ok(JobOutcome::Failed(reply))
            }
            Err(SendError::Configuration { reply, .. }) => {
                warn!(code = reply.code, "the account cannot send; parked until it is fixed");
                self.settle(&sending, sending.failed(DeliveryState::Parked, reply.clone(), now)).await?;
                Ok(JobOutcome::Park(reply.text))
            }
        }
    }

    /// Resolves the account again at send time (settings may have changed since composing) and
    /// checks From against it before anything is sent.
    async fn route(&self, record: &OutboundRecord) -> Result<crate::ports::outbound::Route, RouteProblem> {
        let channel = self
            .channels
            .sending_channel(&record.channel)
            .await?
            .ok_or_else(|| RouteProblem::UnknownChannel(record.channel.clone()))?;
        let profile = match self.profiles.profile(&record.agent).await? {
            Some(p) => p,
            None => AgentProfile::new(record.agent.clone(), None, self.clock.now()),
        };
        let account = outbound::resolve_account(&channel, record.send_as, &identity(&profile))?;
        outbound::check_from(&record.from, &account)?;
        route_for(self.secrets.as_ref(), &account).await
    }

    /// Writes the outcome, conditional on the claim still being ours.
    async fn settle(&self, claimed: &OutboundRecord, next: OutboundRecord) -> Result<(), BackendError> {
        if let Written::Stale(_) = self.outbound.replace_record(&next, claimed.version).await? {
            // Our lease ran out and another worker took over; its outcome stands.
            warn!("the delivery record changed while this worker was sending");
        }
        Ok(())
    }

    /// Receives up to `max` jobs and handles each: deletes what is done, releases what must wait,
    /// moves what cannot be sent to the dead-letter queue.
    pub async fn step(&self, max: usize, wait: Duration) -> Result<StepReport, BackendError> {
        let jobs = self.queue.receive(max, self.policy.lease, wait).await?;
        let mut report = StepReport { received: jobs.len(), ..StepReport::default() };
        for job in jobs {
            match self.process(&job.body).await {
                Ok(outcome) => {
                    match &outcome {
                        JobOutcome::Sent => report.sent += 1,
                        JobOutcome::AlreadyFinished(_) => report.finished_before += 1,
                        JobOutcome::Failed(_) => report.failed += 1,
                        JobOutcome::Retry { .. } | JobOutcome::Busy { .. } => report.retried += 1,
                        JobOutcome::Park(_) => report.parked += 1,
                    }
                    self.acknowledge(&job.receipt, &job.body, &outcome).await?;
                }
                Err(e) => {
                    // Backend trouble: the job comes back by itself when its visibility ends.
                    error!(error = %e, transient = e.is_transient(), "send job not finished");
                    let _ = self.queue.release(&job.receipt, Duration::from_secs(5)).await;
                }
            }
        }
        Ok(report)
    }

    async fn acknowledge(&self, receipt: &str, body: &str, outcome: &JobOutcome) -> Result<(), BackendError> {
        match outcome {
            JobOutcome::Sent | JobOutcome::AlreadyFinished(_) | JobOutcome::Failed(_) => {
                self.queue.delete(receipt).await
            }
            JobOutcome::Retry { after, .. } | JobOutcome::Busy { after } => self.queue.release(receipt, *after).await,
            JobOutcome::Park(_) => {
                // Sent before deleted: a crash in between duplicates the job, never loses it.
                self.dead_letters.send(body, Duration::ZERO).await?;
                self.queue.delete(receipt).await
            }
        }
    }

    /// Steps until the queue has nothing visible (for tests and one-shot runs). Returns the total.
    pub async fn drain(&self) -> Result<StepReport, BackendError> {
        let mut total = StepReport::default();
        loop {
            let r = self.step(10, Duration::ZERO).await?;
            if r.received == 0 {
                return Ok(total);
            }
            total.received += r.received;
            total.sent += r.sent;
            total.finished_before += r.finished_before;
            total.failed += r.failed;
            total.retried += r.retried;
            total.parked += r.parked;
        }
    }

    /// The worker loop of `mailroom serve`: runs until `shutdown` turns true, finishing the job
    /// in hand.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        info!("send worker started");
        while !*shutdown.borrow() {
            let idle = match self.step(10, Duration::from_millis(500)).await {
                Ok(r) => r.received == 0,
                Err(e) => {
                    error!(error = %e, "send worker could not read its queue");
                    true
                }
            };
            if idle {
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
        info!("send worker stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::adapters::channels::MemoryChannelStore;
    use crate::adapters::memory::{MemoryRawStore, MemoryWorkQueue};
    use crate::adapters::outbound::{MemoryOutboundStore, RecordingSender, StoredChannels};
    use crate::adapters::secrets::MemorySecretStore;
    use crate::ports::SystemClock;

    fn worker() -> SendWorker {
        let store = Arc::new(MemoryOutboundStore::default());
        SendWorker {
            outbound: store.clone(),
            raw_store: Arc::new(MemoryRawStore::default()),
            profiles: store,
            secrets: Arc::new(MemorySecretStore::default()),
            channels: StoredChannels::new(Arc::new(MemoryChannelStore::default())),
            sender: Arc::new(RecordingSender::default()),
            queue: Arc::new(MemoryWorkQueue::new("send", 10)),
            dead_letters: Arc::new(MemoryWorkQueue::new("send-dlq", u32::MAX)),
            clock: Arc::new(SystemClock),
            policy: RetryPolicy::default(),
        }
    }

    #[tokio::test]
    async fn the_loop_parks_garbage_and_stops_on_shutdown() {
        let w = worker();
        w.queue.send("not a job", Duration::ZERO).await.unwrap();
        let (tx, rx) = watch::channel(false);
        let runner = {
            let w = w.clone();
            tokio::spawn(async move { w.run(rx).await })
        };
        for _ in 0..100 {
            if w.dead_letters.depth().await.unwrap() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(w.dead_letters.depth().await.unwrap(), 1, "the malformed job is parked");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), runner).await.expect("stops").unwrap();
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_secs(30));
        assert_eq!(p.delay(2), Duration::from_secs(120));
        assert_eq!(p.delay(4), Duration::from_secs(1920));
        assert_eq!(p.delay(9), Duration::from_secs(3600));
    }
}
