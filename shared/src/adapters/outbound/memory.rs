//! Outbound state (delivery records, profiles) in memory, and a sender that records instead of sending: for unit tests.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::ids::{AgentId, InteractionId, MessageId};
use crate::domain::outbound::OutboundRecord;
use crate::domain::profile::AgentProfile;
use crate::ports::BackendResult;
use crate::ports::outbound::{
    Accepted, MailEnvelope, MailSender, OutboundStore, ProfileStore, Route, SendError, Written,
};

#[derive(Default)]
pub struct MemoryOutboundStore {
    records: Mutex<Vec<OutboundRecord>>,
    profiles: Mutex<HashMap<AgentId, AgentProfile>>,
}

#[async_trait]
impl OutboundStore for MemoryOutboundStore {
    async fn create_record(&self, record: &OutboundRecord) -> BackendResult<OutboundRecord> {
        let mut records = self.records.lock().expect("lock");
        if let Some(existing) = records.iter().find(|r| r.message_id == record.message_id) {
            return Ok(existing.clone());
        }
        records.push(record.clone());
        Ok(record.clone())
    }

    async fn record(
        &self,
        interaction: &InteractionId,
        message_id: &MessageId,
    ) -> BackendResult<Option<OutboundRecord>> {
        let records = self.records.lock().expect("lock");
        Ok(records.iter().find(|r| &r.message_id == message_id && &r.interaction_id == interaction).cloned())
    }

    async fn replace_record(&self, record: &OutboundRecord, expected_version: u64) -> BackendResult<Written> {
        let mut records = self.records.lock().expect("lock");
        let Some(slot) = records.iter_mut().find(|r| r.message_id == record.message_id) else {
            return Ok(Written::Stale(None));
        };
        if slot.version != expected_version {
            return Ok(Written::Stale(Some(Box::new(slot.clone()))));
        }
        *slot = record.clone();
        Ok(Written::Done)
    }

    async fn records_of(&self, interaction: &InteractionId) -> BackendResult<Vec<OutboundRecord>> {
        let records = self.records.lock().expect("lock");
        Ok(records.iter().filter(|r| &r.interaction_id == interaction).cloned().collect())
    }
}

#[async_trait]
impl ProfileStore for MemoryOutboundStore {
    async fn profile(&self, agent: &AgentId) -> BackendResult<Option<AgentProfile>> {
        Ok(self.profiles.lock().expect("lock").get(agent).cloned())
    }

    async fn put_profile(&self, profile: &AgentProfile) -> BackendResult<()> {
        self.profiles.lock().expect("lock").insert(profile.agent_id.clone(), profile.clone());
        Ok(())
    }
}

/// A message a [`RecordingSender`] was asked to send.
#[derive(Debug, Clone)]
pub struct SentMessage {
    pub route: String,
    pub envelope: MailEnvelope,
    pub raw: Vec<u8>,
}

/// Records what it is asked to send, and answers with scripted failures first (for tests of the
/// send worker's retries).
#[derive(Default)]
pub struct RecordingSender {
    sent: Mutex<Vec<SentMessage>>,
    failures: Mutex<VecDeque<SendError>>,
}

impl RecordingSender {
    /// The next sends fail with these errors, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = SendError>) {
        self.failures.lock().expect("lock").extend(errors);
    }

    pub fn sent(&self) -> Vec<SentMessage> {
        self.sent.lock().expect("lock").clone()
    }
}

fn describe(route: &Route) -> String {
    match route {
        Route::Ses => "ses".into(),
        Route::Smtp { server, login, .. } => format!("smtp {server} as {}", login.as_str()),
    }
}

#[async_trait]
impl MailSender for RecordingSender {
    async fn send(&self, route: &Route, envelope: &MailEnvelope, raw: &[u8]) -> Result<Accepted, SendError> {
        if let Some(e) = self.failures.lock().expect("lock").pop_front() {
            return Err(e);
        }
        let mut sent = self.sent.lock().expect("lock");
        sent.push(SentMessage { route: describe(route), envelope: envelope.clone(), raw: raw.to_vec() });
        Ok(Accepted { response: format!("250 recorded as message {}", sent.len()) })
    }

    async fn check(&self, route: &Route) -> Result<String, SendError> {
        if let Some(e) = self.failures.lock().expect("lock").pop_front() {
            return Err(e);
        }
        Ok(format!("{} answered", describe(route)))
    }
}
