use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{OptionalExtension, params};

use super::{ensure_secrets_stored, version_conflict};
use crate::adapters::embedded::{EmbeddedBackend, sql_error};
use crate::domain::channel::Channel;
use crate::domain::ids::ChannelName;
use crate::domain::mailbox::{ChannelHealth, ImapCursor, MailboxKey};
use crate::ports::channels::{ChannelStore, StoredChannel};
use crate::ports::mailbox::MailboxStateStore;
use crate::ports::{BackendError, BackendResult};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    version INTEGER NOT NULL,
    seed TEXT,
    updated_at TEXT NOT NULL,
    data TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailbox_cursors (
    channel TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (channel, mailbox)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailbox_uidls (
    channel TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    uidl TEXT NOT NULL,
    PRIMARY KEY (channel, mailbox, uidl)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS channel_health (
    channel TEXT PRIMARY KEY,
    data TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailbox_leases (
    channel TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// Channels and polling state in the embedded database, beside ingest's tables.
#[derive(Clone)]
pub struct EmbeddedChannelStore {
    backend: EmbeddedBackend,
}

impl EmbeddedChannelStore {
    /// Opens the store, creating its tables if needed.
    pub fn open(backend: &EmbeddedBackend) -> BackendResult<Self> {
        backend.db().lock().execute_batch(SCHEMA).map_err(|e| sql_error("create channel tables", e))?;
        Ok(Self { backend: backend.clone() })
    }
}

/// Fixed width and UTC, so timestamps compare as strings.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn to_json<T: serde::Serialize>(v: &T) -> BackendResult<String> {
    serde_json::to_string(v).map_err(|e| BackendError::permanent("encode record", e))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> BackendResult<T> {
    serde_json::from_str(s).map_err(|e| BackendError::permanent("decode record", e))
}

type Row = (i64, i64, Option<String>, String, String);

fn record(row: Row) -> BackendResult<StoredChannel> {
    let (position, version, seed, updated_at, data) = row;
    let channel: Channel = from_json(&data)?;
    let updated_at = DateTime::parse_from_rfc3339(&updated_at)
        .map_err(|e| BackendError::permanent("decode record", e))?
        .with_timezone(&Utc);
    Ok(StoredChannel { channel, version: version as u64, position: position as u64, seed, updated_at })
}

#[async_trait]
impl ChannelStore for EmbeddedChannelStore {
    async fn list(&self) -> BackendResult<Vec<StoredChannel>> {
        let rows: Vec<Row> = {
            let conn = self.backend.db().lock();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT position, version, seed, updated_at, data FROM channels ORDER BY position, name",
                )
                .map_err(|e| sql_error("list channels", e))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .map_err(|e| sql_error("list channels", e))?
                .collect::<Result<_, _>>()
                .map_err(|e| sql_error("list channels", e))?
        };
        rows.into_iter().map(record).collect()
    }

    async fn get(&self, name: &ChannelName) -> BackendResult<Option<StoredChannel>> {
        let row: Option<Row> = self
            .backend
            .db()
            .lock()
            .query_row(
                "SELECT position, version, seed, updated_at, data FROM channels WHERE name = ?1",
                [name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(|e| sql_error("read channel", e))?;
        row.map(record).transpose()
    }

    async fn put(&self, record: &StoredChannel, expected_version: Option<u64>) -> BackendResult<u64> {
        ensure_secrets_stored(record)?;
        let data = to_json(&record.channel)?;
        let name = record.channel.name.as_str();
        let conn = self.backend.db().lock();
        let changed = match expected_version {
            None => conn.execute(
                "INSERT OR IGNORE INTO channels (name, position, version, seed, updated_at, data) VALUES (?1, ?2, 1, ?3, ?4, ?5)",
                params![name, record.position as i64, record.seed, stamp(record.updated_at), data],
            ),
            Some(v) => conn.execute(
                "UPDATE channels SET position = ?2, version = version + 1, seed = ?3, updated_at = ?4, data = ?5
                 WHERE name = ?1 AND version = ?6",
                params![name, record.position as i64, record.seed, stamp(record.updated_at), data, v as i64],
            ),
        }
        .map_err(|e| sql_error("store channel", e))?;
        if changed != 1 {
            return Err(version_conflict(name, expected_version));
        }
        Ok(expected_version.unwrap_or(0) + 1)
    }
}

#[async_trait]
impl MailboxStateStore for EmbeddedChannelStore {
    async fn imap_cursor(&self, channel: &ChannelName, mailbox: &MailboxKey) -> BackendResult<Option<ImapCursor>> {
        let data: Option<String> = self
            .backend
            .db()
            .lock()
            .query_row(
                "SELECT data FROM mailbox_cursors WHERE channel = ?1 AND mailbox = ?2",
                [channel.as_str(), mailbox.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| sql_error("read mailbox cursor", e))?;
        data.map(|d| from_json(&d)).transpose()
    }

    async fn save_imap_cursor(
        &self,
        channel: &ChannelName,
        mailbox: &MailboxKey,
        cursor: &ImapCursor,
    ) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute(
                "INSERT INTO mailbox_cursors (channel, mailbox, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT(channel, mailbox) DO UPDATE SET data = excluded.data",
                params![channel.as_str(), mailbox.as_str(), to_json(cursor)?],
            )
            .map_err(|e| sql_error("save mailbox cursor", e))?;
        Ok(())
    }

    async fn pop3_taken(&self, channel: &ChannelName, mailbox: &MailboxKey) -> BackendResult<HashSet<String>> {
        let conn = self.backend.db().lock();
        let mut stmt = conn
            .prepare_cached("SELECT uidl FROM mailbox_uidls WHERE channel = ?1 AND mailbox = ?2")
            .map_err(|e| sql_error("read POP3 UIDLs", e))?;
        stmt.query_map([channel.as_str(), mailbox.as_str()], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("read POP3 UIDLs", e))?
            .collect::<Result<_, _>>()
            .map_err(|e| sql_error("read POP3 UIDLs", e))
    }

    async fn pop3_add(&self, channel: &ChannelName, mailbox: &MailboxKey, uidl: &str) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute(
                "INSERT OR IGNORE INTO mailbox_uidls (channel, mailbox, uidl) VALUES (?1, ?2, ?3)",
                [channel.as_str(), mailbox.as_str(), uidl],
            )
            .map_err(|e| sql_error("save POP3 UIDL", e))?;
        Ok(())
    }

    async fn pop3_forget(&self, channel: &ChannelName, mailbox: &MailboxKey, uidls: &[String]) -> BackendResult<()> {
        let mut conn = self.backend.db().lock();
        let tx = conn.transaction().map_err(|e| sql_error("forget POP3 UIDLs", e))?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM mailbox_uidls WHERE channel = ?1 AND mailbox = ?2 AND uidl = ?3")
                .map_err(|e| sql_error("forget POP3 UIDLs", e))?;
            for u in uidls {
                stmt.execute([channel.as_str(), mailbox.as_str(), u]).map_err(|e| sql_error("forget POP3 UIDLs", e))?;
            }
        }
        tx.commit().map_err(|e| sql_error("forget POP3 UIDLs", e))
    }

    async fn health(&self, channel: &ChannelName) -> BackendResult<Option<ChannelHealth>> {
        let data: Option<String> = self
            .backend
            .db()
            .lock()
            .query_row("SELECT data FROM channel_health WHERE channel = ?1", [channel.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read channel health", e))?;
        data.map(|d| from_json(&d)).transpose()
    }

    async fn save_health(&self, channel: &ChannelName, health: &ChannelHealth) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute(
                "INSERT INTO channel_health (channel, data) VALUES (?1, ?2)
                 ON CONFLICT(channel) DO UPDATE SET data = excluded.data",
                params![channel.as_str(), to_json(health)?],
            )
            .map_err(|e| sql_error("save channel health", e))?;
        Ok(())
    }

    async fn try_lease(
        &self,
        channel: &ChannelName,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> BackendResult<bool> {
        let changed = self
            .backend
            .db()
            .lock()
            .execute(
                "INSERT INTO mailbox_leases (channel, owner, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT(channel) DO UPDATE SET owner = excluded.owner, until = excluded.until
                 WHERE mailbox_leases.until <= ?4 OR mailbox_leases.owner = ?2",
                params![channel.as_str(), owner, stamp(until), stamp(now)],
            )
            .map_err(|e| sql_error("take polling lease", e))?;
        Ok(changed == 1)
    }

    async fn release_lease(&self, channel: &ChannelName, owner: &str) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute("DELETE FROM mailbox_leases WHERE channel = ?1 AND owner = ?2", [channel.as_str(), owner])
            .map_err(|e| sql_error("release polling lease", e))?;
        Ok(())
    }
}
