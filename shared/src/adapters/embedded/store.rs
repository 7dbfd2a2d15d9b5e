//! `RawMailStore` and `IngestStore` on SQLite.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{EmbeddedBackend, json_error, sql_error};
use crate::domain::ids::{EmailAddress, Fingerprint, InteractionId, MessageId, RawMailKey};
use crate::domain::interaction::{Interaction, StoredMessage};
use crate::domain::journal::JournalEntry;
use crate::domain::threading::ThreadCandidate;
use crate::ports::{BackendError, BackendResult, FingerprintClaim, IngestStore, RawMailStore};

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> BackendResult<String> {
    serde_json::to_string(v).map_err(|e| json_error("encode record", e))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> BackendResult<T> {
    serde_json::from_str(s).map_err(|e| json_error("decode record", e))
}

#[async_trait]
impl RawMailStore for EmbeddedBackend {
    async fn put(&self, raw: &[u8]) -> BackendResult<RawMailKey> {
        let key = RawMailKey::of(raw);
        let conn = self.db.lock();
        conn.execute(
            "INSERT OR IGNORE INTO raw_mail (key, bytes, stored_at) VALUES (?1, ?2, ?3)",
            params![key.as_str(), raw, chrono::Utc::now().to_rfc3339()],
        )
        .map_err(|e| sql_error("store raw mail", e))?;
        Ok(key)
    }

    async fn get(&self, key: &RawMailKey) -> BackendResult<Option<Vec<u8>>> {
        let conn = self.db.lock();
        conn.query_row("SELECT bytes FROM raw_mail WHERE key = ?1", [key.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read raw mail", e))
    }
}

fn state_str(entry: &JournalEntry) -> &'static str {
    if entry.is_final() { "final" } else { "pending" }
}

fn put_message(conn: &rusqlite::Connection, m: &StoredMessage) -> BackendResult<bool> {
    let inserted = conn
        .execute(
            "INSERT OR IGNORE INTO messages (fingerprint, interaction_id, data) VALUES (?1, ?2, ?3)",
            params![m.fingerprint.as_str(), m.interaction_id.as_str(), to_json(m)?],
        )
        .map_err(|e| sql_error("store message", e))?;
    for id in m.message_id.iter().chain(m.conversation_key.iter()) {
        conn.execute(
            "INSERT OR IGNORE INTO message_ids (message_id, interaction_id) VALUES (?1, ?2)",
            params![id.as_str(), m.interaction_id.as_str()],
        )
        .map_err(|e| sql_error("index message id", e))?;
    }
    Ok(inserted == 1)
}

pub(super) fn put_interaction(conn: &rusqlite::Connection, i: &Interaction) -> BackendResult<()> {
    // Fixed-width UTC timestamps sort as text: the waiting index orders by them.
    let queued_at = i.queued_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    conn.execute(
        "INSERT INTO interactions (id, origin, state, queue, priority, queued_at, agent, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(id) DO UPDATE SET state = excluded.state, queue = excluded.queue, priority = excluded.priority,
                                      queued_at = excluded.queued_at, agent = excluded.agent, data = excluded.data",
        params![
            i.id.as_str(),
            i.origin.as_str(),
            i.state.as_str(),
            i.queue.as_str(),
            i.priority.value(),
            queued_at,
            i.routing.agent.as_ref().map(|a| a.as_str()),
            to_json(i)?
        ],
    )
    .map_err(|e| sql_error("store interaction", e))?;
    Ok(())
}

pub(super) fn get_interaction(conn: &rusqlite::Connection, id: &InteractionId) -> BackendResult<Option<Interaction>> {
    let data: Option<String> = conn
        .query_row("SELECT data FROM interactions WHERE id = ?1", [id.as_str()], |r| r.get(0))
        .optional()
        .map_err(|e| sql_error("read interaction", e))?;
    data.map(|d| from_json(&d)).transpose()
}

#[async_trait]
impl IngestStore for EmbeddedBackend {
    async fn journal_get(&self, raw: &RawMailKey) -> BackendResult<Option<JournalEntry>> {
        let conn = self.db.lock();
        let data: Option<String> = conn
            .query_row("SELECT data FROM journal WHERE raw_key = ?1", [raw.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read journal", e))?;
        data.map(|d| from_json(&d)).transpose()
    }

    async fn journal_begin(&self, entry: &JournalEntry) -> BackendResult<()> {
        let conn = self.db.lock();
        conn.execute(
            "INSERT OR IGNORE INTO journal (raw_key, state, disposition, received_at, data) VALUES (?1, ?2, NULL, ?3, ?4)",
            params![entry.raw_key.as_str(), state_str(entry), entry.received_at.to_rfc3339(), to_json(entry)?],
        )
        .map_err(|e| sql_error("write journal", e))?;
        Ok(())
    }

    async fn journal_finalize(&self, entry: &JournalEntry) -> BackendResult<()> {
        let conn = self.db.lock();
        conn.execute(
            "INSERT INTO journal (raw_key, state, disposition, received_at, data) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(raw_key) DO UPDATE SET state = excluded.state, disposition = excluded.disposition, data = excluded.data",
            params![
                entry.raw_key.as_str(),
                state_str(entry),
                entry.disposition.map(|d| d.as_str()),
                entry.received_at.to_rfc3339(),
                to_json(entry)?
            ],
        )
        .map_err(|e| sql_error("write journal", e))?;
        Ok(())
    }

    async fn journal_recent(&self, limit: usize) -> BackendResult<Vec<JournalEntry>> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare_cached("SELECT data FROM journal ORDER BY seq DESC LIMIT ?1")
            .map_err(|e| sql_error("read journal", e))?;
        let rows = stmt
            .query_map([limit as i64], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("read journal", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read journal", e))?;
        rows.iter().map(|d| from_json(d)).collect()
    }

    async fn claim_fingerprint(&self, fingerprint: &Fingerprint, raw: &RawMailKey) -> BackendResult<FingerprintClaim> {
        let conn = self.db.lock();
        conn.execute(
            "INSERT OR IGNORE INTO fingerprints (fingerprint, raw_key) VALUES (?1, ?2)",
            params![fingerprint.as_str(), raw.as_str()],
        )
        .map_err(|e| sql_error("claim fingerprint", e))?;
        let owner: String = conn
            .query_row("SELECT raw_key FROM fingerprints WHERE fingerprint = ?1", [fingerprint.as_str()], |r| r.get(0))
            .map_err(|e| sql_error("claim fingerprint", e))?;
        if owner == raw.as_str() {
            Ok(FingerprintClaim::Ours)
        } else {
            let key = RawMailKey::parse(&owner).map_err(|e| BackendError::permanent("claim fingerprint", e))?;
            Ok(FingerprintClaim::Theirs(key))
        }
    }

    async fn message(&self, fingerprint: &Fingerprint) -> BackendResult<Option<StoredMessage>> {
        let conn = self.db.lock();
        let data: Option<String> = conn
            .query_row("SELECT data FROM messages WHERE fingerprint = ?1", [fingerprint.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read message", e))?;
        data.map(|d| from_json(&d)).transpose()
    }

    async fn messages_with_ids(&self, ids: &[MessageId]) -> BackendResult<Vec<ThreadCandidate>> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare_cached("SELECT interaction_id FROM message_ids WHERE message_id = ?1")
            .map_err(|e| sql_error("look up message ids", e))?;
        let mut out = Vec::new();
        for id in ids {
            let rows = stmt
                .query_map([id.as_str()], |r| r.get::<_, String>(0))
                .map_err(|e| sql_error("look up message ids", e))?;
            for row in rows {
                let interaction = row.map_err(|e| sql_error("look up message ids", e))?;
                let interaction_id = InteractionId::parse(&interaction)
                    .map_err(|e| BackendError::permanent("look up message ids", e))?;
                out.push(ThreadCandidate { message_id: id.clone(), interaction_id });
            }
        }
        Ok(out)
    }

    async fn interaction(&self, id: &InteractionId) -> BackendResult<Option<Interaction>> {
        get_interaction(&self.db.lock(), id)
    }

    async fn interaction_messages(&self, id: &InteractionId) -> BackendResult<Vec<StoredMessage>> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare_cached("SELECT data FROM messages WHERE interaction_id = ?1 ORDER BY seq")
            .map_err(|e| sql_error("read transcript", e))?;
        let rows = stmt
            .query_map([id.as_str()], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("read transcript", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read transcript", e))?;
        rows.iter().map(|d| from_json(d)).collect()
    }

    async fn create_interaction(&self, interaction: &Interaction, first: &StoredMessage) -> BackendResult<()> {
        let mut conn = self.db.lock();
        let tx = conn.transaction().map_err(|e| sql_error("create interaction", e))?;
        let origin: Option<String> = tx
            .query_row("SELECT origin FROM interactions WHERE id = ?1", [interaction.id.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("create interaction", e))?;
        match origin {
            Some(o) if o == interaction.origin.as_str() => {}
            Some(_) => {
                return Err(BackendError::Conflict {
                    operation: "create interaction",
                    detail: format!("interaction {} exists with another origin", interaction.id),
                });
            }
            None => {
                put_interaction(&tx, interaction)?;
                put_message(&tx, first)?;
            }
        }
        tx.commit().map_err(|e| sql_error("create interaction", e))
    }

    async fn append_message(
        &self,
        message: &StoredMessage,
        new_participants: &[EmailAddress],
        requeue: bool,
    ) -> BackendResult<Interaction> {
        let mut conn = self.db.lock();
        let tx = conn.transaction().map_err(|e| sql_error("append message", e))?;
        let Some(mut interaction) = get_interaction(&tx, &message.interaction_id)? else {
            return Err(BackendError::Conflict {
                operation: "append message",
                detail: format!("no interaction {}", message.interaction_id),
            });
        };
        if put_message(&tx, message)? {
            interaction.absorb(message, new_participants, requeue);
            put_interaction(&tx, &interaction)?;
        }
        tx.commit().map_err(|e| sql_error("append message", e))?;
        Ok(interaction)
    }
}
