//! The embedded backend: raw mail, state and work queues in one SQLite database in the data
//! directory, so `mailroom` runs with nothing to install and survives restarts.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives a crash of the process
//! (what at-least-once delivery needs), and several processes (`mailroom serve` and
//! `mailroom ingest`) can share the directory.

mod queue;
mod routing;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Notify;

use crate::ports::{BackendError, BackendResult};

pub use queue::EmbeddedQueue;

/// How many times a work item is received before it moves to the dead-letter queue (as the
/// `maxReceiveCount` of the SQS redrive policies in `template.yaml`).
pub const DEFAULT_MAX_RECEIVES: u32 = 5;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS raw_mail (
    key TEXT PRIMARY KEY,
    bytes BLOB NOT NULL,
    stored_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    raw_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    disposition TEXT,
    received_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fingerprints (
    fingerprint TEXT PRIMARY KEY,
    raw_key TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS interactions (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    queued_at TEXT,
    -- the agent it is offered or assigned to
    agent TEXT,
    data TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS interactions_waiting ON interactions(queue, state, priority DESC, queued_at, id);
CREATE INDEX IF NOT EXISTS interactions_by_agent ON interactions(agent) WHERE agent IS NOT NULL;
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    state TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL UNIQUE,
    interaction_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_interaction ON messages(interaction_id, seq);
CREATE TABLE IF NOT EXISTS message_ids (
    message_id TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    PRIMARY KEY (message_id, interaction_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS work (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    sent_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS work_by_visibility ON work(queue, visible_at, id);
"#;

/// The shared database handle. One connection per process, serialized by a mutex: SQLite has a
/// single writer anyway, and each statement here takes microseconds.
pub struct Db {
    conn: Mutex<Connection>,
    /// Wakes receivers waiting on a queue of this process when something is sent.
    work_sent: Notify,
    path: PathBuf,
}

impl Db {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic), so a
        // poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The embedded backend rooted at a data directory.
#[derive(Clone)]
pub struct EmbeddedBackend {
    db: Arc<Db>,
}

impl EmbeddedBackend {
    /// Opens (creating if needed) `<data_dir>/mailroom.sqlite3`.
    pub fn open(data_dir: &Path) -> BackendResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| BackendError::permanent("create data directory", e))?;
        let path = data_dir.join("mailroom.sqlite3");
        let conn = Connection::open(&path).map_err(|e| BackendError::permanent("open database", e))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| BackendError::permanent("configure database", e))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(|e| BackendError::permanent("configure database", e))?;
        conn.execute_batch(SCHEMA).map_err(|e| BackendError::permanent("create schema", e))?;
        Ok(Self { db: Arc::new(Db { conn: Mutex::new(conn), work_sent: Notify::new(), path }) })
    }

    /// A durable work queue by name, with its dead-letter queue `<name>-dlq`.
    pub fn queue(&self, name: &str, max_receives: u32) -> EmbeddedQueue {
        EmbeddedQueue::new(self.db.clone(), name, max_receives)
    }

    /// The dead-letter queue of `name`.
    pub fn dead_letter_queue(&self, name: &str) -> EmbeddedQueue {
        EmbeddedQueue::new(self.db.clone(), &format!("{name}-dlq"), u32::MAX)
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }
}

/// SQLite reports a busy or locked database when another process holds the write lock past the
/// busy timeout: worth retrying. Everything else is not.
pub(crate) fn sql_error(operation: &'static str, e: rusqlite::Error) -> BackendError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => BackendError::transient(operation, e),
        _ => BackendError::permanent(operation, e),
    }
}

pub(crate) fn json_error(operation: &'static str, e: serde_json::Error) -> BackendError {
    BackendError::permanent(operation, e)
}

impl EmbeddedBackend {
    /// How many journal entries have each disposition (`pending` for unfinished ones).
    pub fn journal_counts(&self) -> BackendResult<Vec<(String, u64)>> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare("SELECT COALESCE(disposition, 'pending'), COUNT(*) FROM journal GROUP BY 1 ORDER BY 2 DESC")
            .map_err(|e| sql_error("count journal", e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| sql_error("count journal", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("count journal", e))?;
        Ok(rows)
    }

    /// The names of all queues that hold work.
    pub fn queue_names(&self) -> BackendResult<Vec<String>> {
        let conn = self.db.lock();
        let mut stmt =
            conn.prepare("SELECT DISTINCT queue FROM work ORDER BY queue").map_err(|e| sql_error("list queues", e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("list queues", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("list queues", e))?;
        Ok(rows)
    }
}
