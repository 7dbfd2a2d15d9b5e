//! Work queues on SQS (standard queues with a redrive policy to a dead-letter queue).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use super::classify;
use crate::ports::{BackendResult, ReceivedWork, WorkQueue};

/// SQS limits: 10 messages per receive, 20 s long polling, 15 min delay, 12 h visibility.
const MAX_BATCH: usize = 10;
const MAX_WAIT_SECS: u64 = 20;
const MAX_DELAY_SECS: u64 = 900;
const MAX_VISIBILITY_SECS: u64 = 12 * 60 * 60;

pub struct SqsWorkQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    name: String,
}

impl SqsWorkQueue {
    /// The queue's name is the last segment of its URL.
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        let url = url.into();
        let name = url.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_owned();
        Self { client, url, name }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Whole seconds for SQS, rounded up (a visibility or delay is never shorter than asked) and
/// bounded by `max`, which fits in an i32.
fn secs(d: Duration, max: u64) -> i32 {
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    whole.min(max) as i32
}

#[async_trait]
impl WorkQueue for SqsWorkQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str, delay: Duration) -> BackendResult<()> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(secs(delay, MAX_DELAY_SECS))
            .send()
            .await
            .map_err(|e| classify("sqs send message", e))?;
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> BackendResult<Vec<ReceivedWork>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.min(MAX_BATCH) as i32)
            .visibility_timeout(secs(visibility, MAX_VISIBILITY_SECS))
            .wait_time_seconds(secs(wait, MAX_WAIT_SECS))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| classify("sqs receive message", e))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                Some(ReceivedWork { body: m.body.unwrap_or_default(), receipt: m.receipt_handle?, receive_count })
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> BackendResult<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| classify("sqs delete message", e))?;
        Ok(())
    }

    async fn release(&self, receipt: &str, delay: Duration) -> BackendResult<()> {
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(secs(delay, MAX_VISIBILITY_SECS))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Its visibility ended already: it is (or will be) delivered again, which is what a
            // release asks for.
            Err(err) if matches!(err.as_service_error(), Some(ChangeMessageVisibilityError::MessageNotInflight(_))) => {
                Ok(())
            }
            Err(err) => Err(classify("sqs change message visibility", err)),
        }
    }

    /// Visible, in flight and delayed messages (SQS's approximate counts).
    async fn depth(&self) -> BackendResult<u64> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| classify("sqs get queue attributes", e))?;
        Ok(output.attributes().map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_clamped_to_sqs_limits() {
        assert_eq!(secs(Duration::from_secs(3600), MAX_DELAY_SECS), 900);
        assert_eq!(secs(Duration::from_millis(1500), MAX_WAIT_SECS), 2);
        assert_eq!(secs(Duration::ZERO, MAX_WAIT_SECS), 0);
        assert_eq!(secs(Duration::from_secs(u64::MAX), MAX_VISIBILITY_SECS), 43_200);
    }
}
