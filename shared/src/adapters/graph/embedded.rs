//! The Teams stores on the embedded backend: tables in the data directory's SQLite database.
//!
//! Records are JSON in a `data` column, with the columns queries need beside them. Timestamps in
//! columns are RFC 3339 in UTC with a fixed width, so text order is time order. An entry change
//! takes the next value of one counter in the same write transaction as the entry, so `seq` order
//! is commit order and a poller never skips a change.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::adapters::embedded::{EmbeddedBackend, json_error, sql_error};
use crate::domain::ids::AgentId;
use crate::domain::teams::{
    ChatEntry, ChatId, ChatSubscription, GraphMessageId, OtherDirectoryEntry, PendingSignIn, SubscriptionId, TeamsChat,
    TeamsConnection, TeamsUser, TeamsUserId,
};
use crate::ports::BackendResult;
use crate::ports::teams::{
    DirectorySources, Replaced, TeamsChatStore, TeamsConnectionStore, TeamsDirectoryStore, Upserted,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS teams_users (id TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS teams_other_directory (id TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS teams_sources (name TEXT PRIMARY KEY, at TEXT NOT NULL, count INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS teams_connections (agent TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS teams_sign_ins (state_hash TEXT PRIMARY KEY, expires_at TEXT NOT NULL, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS teams_chats (id TEXT PRIMARY KEY, agent TEXT NOT NULL, data TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS teams_chats_by_agent ON teams_chats(agent);
CREATE TABLE IF NOT EXISTS teams_subscriptions (id TEXT PRIMARY KEY, expires_at TEXT NOT NULL, data TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS teams_subscriptions_by_expiry ON teams_subscriptions(expires_at);
CREATE TABLE IF NOT EXISTS teams_entries (
    chat TEXT NOT NULL,
    key TEXT NOT NULL,
    agent TEXT NOT NULL,
    message_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (chat, key)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS teams_entries_by_seq ON teams_entries(agent, seq);
CREATE INDEX IF NOT EXISTS teams_entries_by_message ON teams_entries(chat, message_id);
CREATE INDEX IF NOT EXISTS teams_entries_by_time ON teams_entries(chat, created_at, key);
CREATE TABLE IF NOT EXISTS teams_seq (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
"#;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

fn encode<T: serde::Serialize>(value: &T) -> BackendResult<String> {
    serde_json::to_string(value).map_err(|e| json_error("encode Teams record", e))
}

fn decode<T: serde::de::DeserializeOwned>(data: &str) -> BackendResult<T> {
    serde_json::from_str(data).map_err(|e| json_error("decode Teams record", e))
}

/// Every Teams store on one embedded backend.
#[derive(Clone)]
pub struct EmbeddedTeamsStore {
    backend: EmbeddedBackend,
}

impl EmbeddedTeamsStore {
    /// Opens the stores, creating their tables if needed.
    pub fn open(backend: &EmbeddedBackend) -> BackendResult<Self> {
        backend.db().lock().execute_batch(SCHEMA).map_err(|e| sql_error("create Teams tables", e))?;
        Ok(Self { backend: backend.clone() })
    }

    fn all<T: serde::de::DeserializeOwned>(&self, sql: &str, operation: &'static str) -> BackendResult<Vec<T>> {
        let conn = self.backend.db().lock();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| sql_error(operation, e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error(operation, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error(operation, e))?;
        rows.iter().map(|d| decode(d)).collect()
    }

    fn replace<T: serde::Serialize>(
        &self,
        table: &'static str,
        source: &'static str,
        rows: &[(String, T)],
        at: DateTime<Utc>,
    ) -> BackendResult<Replaced> {
        const OP: &str = "replace Teams directory";
        let mut conn = self.backend.db().lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| sql_error(OP, e))?;
        let before: Vec<String> = {
            let mut stmt = tx.prepare(&format!("SELECT id FROM {table}")).map_err(|e| sql_error(OP, e))?;
            stmt.query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| sql_error(OP, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| sql_error(OP, e))?
        };
        let wanted: std::collections::HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        let removed = before.iter().filter(|id| !wanted.contains(id.as_str())).count();
        tx.execute(&format!("DELETE FROM {table}"), []).map_err(|e| sql_error(OP, e))?;
        {
            let mut insert = tx
                .prepare(&format!("INSERT OR REPLACE INTO {table} (id, data) VALUES (?1, ?2)"))
                .map_err(|e| sql_error(OP, e))?;
            for (id, row) in rows {
                insert.execute(params![id, encode(row)?]).map_err(|e| sql_error(OP, e))?;
            }
        }
        let after: usize = tx
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get::<_, i64>(0))
            .map_err(|e| sql_error(OP, e))? as usize;
        tx.execute(
            "INSERT INTO teams_sources (name, at, count) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET at = excluded.at, count = excluded.count",
            params![source, ts(at), after as i64],
        )
        .map_err(|e| sql_error(OP, e))?;
        tx.commit().map_err(|e| sql_error(OP, e))?;
        Ok(Replaced { stored: after, removed })
    }
}

#[async_trait]
impl TeamsDirectoryStore for EmbeddedTeamsStore {
    async fn replace_teams_users(&self, users: &[TeamsUser], at: DateTime<Utc>) -> BackendResult<Replaced> {
        let rows: Vec<(String, &TeamsUser)> = users.iter().map(|u| (u.id.to_string(), u)).collect();
        self.replace("teams_users", "teams", &rows, at)
    }

    async fn teams_users(&self) -> BackendResult<Vec<TeamsUser>> {
        self.all("SELECT data FROM teams_users ORDER BY id", "read Teams users")
    }

    async fn teams_user(&self, id: &TeamsUserId) -> BackendResult<Option<TeamsUser>> {
        let data: Option<String> = self
            .backend
            .db()
            .lock()
            .query_row("SELECT data FROM teams_users WHERE id = ?1", [id.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read Teams user", e))?;
        data.map(|d| decode(&d)).transpose()
    }

    async fn replace_other_directory(
        &self,
        entries: &[OtherDirectoryEntry],
        at: DateTime<Utc>,
    ) -> BackendResult<Replaced> {
        let rows: Vec<(String, &OtherDirectoryEntry)> = entries.iter().map(|e| (e.id.to_string(), e)).collect();
        self.replace("teams_other_directory", "other_directory", &rows, at)
    }

    async fn other_directory(&self) -> BackendResult<Vec<OtherDirectoryEntry>> {
        self.all("SELECT data FROM teams_other_directory ORDER BY id", "read the other directory")
    }

    async fn sources(&self) -> BackendResult<DirectorySources> {
        let conn = self.backend.db().lock();
        let mut stmt = conn
            .prepare_cached("SELECT name, at, count FROM teams_sources")
            .map_err(|e| sql_error("read sources", e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))
            .map_err(|e| sql_error("read sources", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read sources", e))?;
        let mut out = DirectorySources::default();
        for (name, at, count) in rows {
            match name.as_str() {
                "teams" => (out.teams_synced_at, out.teams_count) = (parse_ts(&at), count as usize),
                "other_directory" => (out.other_imported_at, out.other_count) = (parse_ts(&at), count as usize),
                _ => {}
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl TeamsConnectionStore for EmbeddedTeamsStore {
    async fn connection(&self, agent: &AgentId) -> BackendResult<Option<TeamsConnection>> {
        let data: Option<String> = self
            .backend
            .db()
            .lock()
            .query_row("SELECT data FROM teams_connections WHERE agent = ?1", [agent.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read Teams connection", e))?;
        data.map(|d| decode(&d)).transpose()
    }

    async fn put_connection(&self, c: &TeamsConnection) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute(
                "INSERT INTO teams_connections (agent, data) VALUES (?1, ?2)
                 ON CONFLICT(agent) DO UPDATE SET data = excluded.data",
                params![c.agent.as_str(), encode(c)?],
            )
            .map_err(|e| sql_error("store Teams connection", e))?;
        Ok(())
    }

    async fn put_pending_sign_in(&self, p: &PendingSignIn) -> BackendResult<()> {
        let conn = self.backend.db().lock();
        // Expired sign-ins are dropped on the way.
        conn.execute("DELETE FROM teams_sign_ins WHERE expires_at < ?1", [ts(Utc::now())])
            .map_err(|e| sql_error("store sign-in", e))?;
        conn.execute(
            "INSERT OR REPLACE INTO teams_sign_ins (state_hash, expires_at, data) VALUES (?1, ?2, ?3)",
            params![p.state_hash, ts(p.expires_at), encode(p)?],
        )
        .map_err(|e| sql_error("store sign-in", e))?;
        Ok(())
    }

    async fn take_pending_sign_in(&self, state_hash: &str) -> BackendResult<Option<PendingSignIn>> {
        let data: Option<String> = self
            .backend
            .db()
            .lock()
            .query_row("DELETE FROM teams_sign_ins WHERE state_hash = ?1 RETURNING data", [state_hash], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("take sign-in", e))?;
        data.map(|d| decode(&d)).transpose()
    }
}

#[async_trait]
impl TeamsChatStore for EmbeddedTeamsStore {
    async fn chat(&self, id: &ChatId) -> BackendResult<Option<TeamsChat>> {
        let data: Option<String> = self
            .backend
            .db()
            .lock()
            .query_row("SELECT data FROM teams_chats WHERE id = ?1", [id.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read chat", e))?;
        data.map(|d| decode(&d)).transpose()
    }

    async fn agent_chats(&self, agent: &AgentId) -> BackendResult<Vec<TeamsChat>> {
        let conn = self.backend.db().lock();
        let mut stmt = conn
            .prepare_cached("SELECT data FROM teams_chats WHERE agent = ?1")
            .map_err(|e| sql_error("read chats", e))?;
        let rows = stmt
            .query_map([agent.as_str()], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("read chats", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read chats", e))?;
        rows.iter().map(|d| decode(d)).collect()
    }

    async fn put_chat(&self, chat: &TeamsChat) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute(
                "INSERT INTO teams_chats (id, agent, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                params![chat.id.as_str(), chat.agent.as_str(), encode(chat)?],
            )
            .map_err(|e| sql_error("store chat", e))?;
        Ok(())
    }

    async fn subscription(&self, id: &SubscriptionId) -> BackendResult<Option<ChatSubscription>> {
        let data: Option<String> = self
            .backend
            .db()
            .lock()
            .query_row("SELECT data FROM teams_subscriptions WHERE id = ?1", [id.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read subscription", e))?;
        data.map(|d| decode(&d)).transpose()
    }

    async fn put_subscription(&self, s: &ChatSubscription) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute(
                "INSERT INTO teams_subscriptions (id, expires_at, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET expires_at = excluded.expires_at, data = excluded.data",
                params![s.id.as_str(), ts(s.expires_at), encode(s)?],
            )
            .map_err(|e| sql_error("store subscription", e))?;
        Ok(())
    }

    async fn delete_subscription(&self, id: &SubscriptionId) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute("DELETE FROM teams_subscriptions WHERE id = ?1", [id.as_str()])
            .map_err(|e| sql_error("delete subscription", e))?;
        Ok(())
    }

    async fn subscriptions_expiring(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> BackendResult<Vec<ChatSubscription>> {
        let conn = self.backend.db().lock();
        let mut stmt = conn
            .prepare_cached("SELECT data FROM teams_subscriptions WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?2")
            .map_err(|e| sql_error("read subscriptions", e))?;
        let rows = stmt
            .query_map(params![ts(before), limit as i64], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("read subscriptions", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read subscriptions", e))?;
        rows.iter().map(|d| decode(d)).collect()
    }

    async fn upsert_entry(&self, entry: &ChatEntry) -> BackendResult<Upserted> {
        const OP: &str = "store chat entry";
        let mut conn = self.backend.db().lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| sql_error(OP, e))?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT data FROM teams_entries WHERE chat = ?1 AND key = ?2",
                params![entry.chat.as_str(), entry.key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| sql_error(OP, e))?;
        if let Some(existing) = existing {
            let existing: ChatEntry = decode(&existing)?;
            if entry.source_modified_at < existing.source_modified_at || !entry.differs_from(&existing) {
                return Ok(Upserted::Unchanged);
            }
        }
        let seq: i64 = tx
            .query_row(
                "INSERT INTO teams_seq (id, value) VALUES (1, 1)
                 ON CONFLICT(id) DO UPDATE SET value = value + 1 RETURNING value",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql_error(OP, e))?;
        let stored = ChatEntry { seq: seq as u64, ..entry.clone() };
        tx.execute(
            "INSERT INTO teams_entries (chat, key, agent, message_id, created_at, seq, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(chat, key) DO UPDATE SET seq = excluded.seq, data = excluded.data",
            params![
                stored.chat.as_str(),
                stored.key,
                stored.agent.as_str(),
                stored.message_id.as_str(),
                ts(stored.created_at),
                seq,
                encode(&stored)?
            ],
        )
        .map_err(|e| sql_error(OP, e))?;
        tx.commit().map_err(|e| sql_error(OP, e))?;
        Ok(Upserted::Changed(Box::new(stored)))
    }

    async fn message_entries(&self, chat: &ChatId, message: &GraphMessageId) -> BackendResult<Vec<ChatEntry>> {
        let conn = self.backend.db().lock();
        let mut stmt = conn
            .prepare_cached("SELECT data FROM teams_entries WHERE chat = ?1 AND message_id = ?2 ORDER BY key")
            .map_err(|e| sql_error("read chat entries", e))?;
        let rows = stmt
            .query_map(params![chat.as_str(), message.as_str()], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("read chat entries", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read chat entries", e))?;
        rows.iter().map(|d| decode(d)).collect()
    }

    async fn chat_entries(&self, chat: &ChatId, limit: usize) -> BackendResult<Vec<ChatEntry>> {
        let conn = self.backend.db().lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT data FROM teams_entries WHERE chat = ?1 ORDER BY created_at DESC, key DESC LIMIT ?2",
            )
            .map_err(|e| sql_error("read chat entries", e))?;
        let rows = stmt
            .query_map(params![chat.as_str(), limit as i64], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("read chat entries", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read chat entries", e))?;
        let mut entries: Vec<ChatEntry> = rows.iter().map(|d| decode(d)).collect::<BackendResult<_>>()?;
        entries.reverse();
        Ok(entries)
    }

    async fn changes(
        &self,
        agent: &AgentId,
        chat: Option<&ChatId>,
        after_seq: u64,
        limit: usize,
    ) -> BackendResult<Vec<ChatEntry>> {
        let conn = self.backend.db().lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT data FROM teams_entries WHERE agent = ?1 AND seq > ?2 AND (?3 IS NULL OR chat = ?3)
                 ORDER BY seq LIMIT ?4",
            )
            .map_err(|e| sql_error("read chat changes", e))?;
        let rows = stmt
            .query_map(params![agent.as_str(), after_seq as i64, chat.map(|c| c.as_str()), limit as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| sql_error("read chat changes", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read chat changes", e))?;
        rows.iter().map(|d| decode(d)).collect()
    }
}
