//! Outbound state on the embedded SQLite database, in tables of its own: delivery records and
//! agent profiles. (SMTP passwords live in the shared secret store.)

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::adapters::embedded::{Db, EmbeddedBackend, json_error, sql_error};
use crate::domain::ids::{AgentId, InteractionId, MessageId};
use crate::domain::outbound::OutboundRecord;
use crate::domain::profile::AgentProfile;
use crate::ports::outbound::{OutboundStore, ProfileStore, Written};
use crate::ports::{BackendError, BackendResult};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS outbound_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    interaction_id TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbound_by_interaction ON outbound_messages(interaction_id, seq);
CREATE TABLE IF NOT EXISTS agent_profiles (
    agent_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
) WITHOUT ROWID;
"#;

#[derive(Clone)]
pub struct EmbeddedOutboundStore {
    db: Arc<Db>,
}

impl EmbeddedOutboundStore {
    /// Creates the tables if needed, in the backend's database.
    pub fn open(backend: &EmbeddedBackend) -> BackendResult<Self> {
        let db = backend.db().clone();
        db.lock().execute_batch(SCHEMA).map_err(|e| BackendError::permanent("create outbound schema", e))?;
        Ok(Self { db })
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> BackendResult<String> {
    serde_json::to_string(v).map_err(|e| json_error("encode record", e))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> BackendResult<T> {
    serde_json::from_str(s).map_err(|e| json_error("decode record", e))
}

#[async_trait]
impl OutboundStore for EmbeddedOutboundStore {
    async fn create_record(&self, record: &OutboundRecord) -> BackendResult<OutboundRecord> {
        let conn = self.db.lock();
        conn.execute(
            "INSERT OR IGNORE INTO outbound_messages (message_id, interaction_id, state, version, data)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.message_id.as_str(),
                record.interaction_id.as_str(),
                record.state.as_str(),
                record.version as i64,
                to_json(record)?
            ],
        )
        .map_err(|e| sql_error("store outbound message", e))?;
        let data: String = conn
            .query_row("SELECT data FROM outbound_messages WHERE message_id = ?1", [record.message_id.as_str()], |r| {
                r.get(0)
            })
            .map_err(|e| sql_error("read outbound message", e))?;
        from_json(&data)
    }

    async fn record(
        &self,
        interaction: &InteractionId,
        message_id: &MessageId,
    ) -> BackendResult<Option<OutboundRecord>> {
        let conn = self.db.lock();
        let data: Option<String> = conn
            .query_row(
                "SELECT data FROM outbound_messages WHERE message_id = ?1 AND interaction_id = ?2",
                [message_id.as_str(), interaction.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| sql_error("read outbound message", e))?;
        data.map(|d| from_json(&d)).transpose()
    }

    async fn replace_record(&self, record: &OutboundRecord, expected_version: u64) -> BackendResult<Written> {
        let conn = self.db.lock();
        let changed = conn
            .execute(
                "UPDATE outbound_messages SET state = ?1, version = ?2, data = ?3 WHERE message_id = ?4 AND version = ?5",
                params![
                    record.state.as_str(),
                    record.version as i64,
                    to_json(record)?,
                    record.message_id.as_str(),
                    expected_version as i64
                ],
            )
            .map_err(|e| sql_error("update outbound message", e))?;
        if changed == 1 {
            return Ok(Written::Done);
        }
        let current: Option<String> = conn
            .query_row("SELECT data FROM outbound_messages WHERE message_id = ?1", [record.message_id.as_str()], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| sql_error("read outbound message", e))?;
        Ok(Written::Stale(current.map(|d| from_json(&d)).transpose()?.map(Box::new)))
    }

    async fn records_of(&self, interaction: &InteractionId) -> BackendResult<Vec<OutboundRecord>> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare("SELECT data FROM outbound_messages WHERE interaction_id = ?1 ORDER BY seq")
            .map_err(|e| sql_error("list outbound messages", e))?;
        let rows = stmt
            .query_map([interaction.as_str()], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("list outbound messages", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("list outbound messages", e))?;
        rows.iter().map(|d| from_json(d)).collect()
    }
}

#[async_trait]
impl ProfileStore for EmbeddedOutboundStore {
    async fn profile(&self, agent: &AgentId) -> BackendResult<Option<AgentProfile>> {
        let conn = self.db.lock();
        let data: Option<String> = conn
            .query_row("SELECT data FROM agent_profiles WHERE agent_id = ?1", [agent.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read agent profile", e))?;
        data.map(|d| from_json(&d)).transpose()
    }

    async fn put_profile(&self, profile: &AgentProfile) -> BackendResult<()> {
        let conn = self.db.lock();
        conn.execute(
            "INSERT INTO agent_profiles (agent_id, data) VALUES (?1, ?2)
             ON CONFLICT(agent_id) DO UPDATE SET data = excluded.data",
            params![profile.agent_id.as_str(), to_json(profile)?],
        )
        .map_err(|e| sql_error("store agent profile", e))?;
        Ok(())
    }
}
