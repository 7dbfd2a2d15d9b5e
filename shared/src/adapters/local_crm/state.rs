//! The handoff's own state (handoff records, CRM settings) in the embedded database and in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::adapters::embedded::{Db, EmbeddedBackend, sql_error};
use crate::domain::crm::{CrmSettings, HandoffKey, HandoffRecord};
use crate::ports::crm::{CrmSettingsStore, HandoffStore};
use crate::ports::{BackendError, BackendResult};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS handoffs (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    data TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS handoffs_by_time ON handoffs(updated_at);
CREATE TABLE IF NOT EXISTS crm_settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    data TEXT NOT NULL
);
"#;

fn conflict(record: &HandoffRecord) -> BackendError {
    BackendError::Conflict {
        operation: "write handoff",
        detail: format!("handoff {} changed since version {}", record.key, record.version),
    }
}

/// Handoff records and CRM settings in the embedded database.
#[derive(Clone)]
pub struct EmbeddedCrmState {
    db: Arc<Db>,
}

impl EmbeddedCrmState {
    pub fn open(backend: &EmbeddedBackend) -> BackendResult<Self> {
        let db = backend.db().clone();
        db.lock().execute_batch(SCHEMA).map_err(|e| sql_error("create handoff tables", e))?;
        Ok(Self { db })
    }
}

#[async_trait]
impl HandoffStore for EmbeddedCrmState {
    async fn get(&self, key: &HandoffKey) -> BackendResult<Option<HandoffRecord>> {
        let conn = self.db.lock();
        let row: Option<(i64, String)> = conn
            .query_row("SELECT version, data FROM handoffs WHERE key = ?1", [key.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| sql_error("read handoff", e))?;
        row.map(|(version, data)| {
            let mut record: HandoffRecord =
                serde_json::from_str(&data).map_err(|e| BackendError::permanent("read handoff", e))?;
            record.version = version as u64;
            Ok(record)
        })
        .transpose()
    }

    async fn put(&self, record: &HandoffRecord) -> BackendResult<HandoffRecord> {
        let mut stored = record.clone();
        stored.version = record.version + 1;
        let data = serde_json::to_string(&stored).map_err(|e| BackendError::permanent("write handoff", e))?;
        let conn = self.db.lock();
        let changed = if record.version == 0 {
            conn.execute(
                "INSERT OR IGNORE INTO handoffs (key, version, updated_at, data) VALUES (?1, ?2, ?3, ?4)",
                params![record.key.as_str(), stored.version as i64, stored.updated_at.to_rfc3339(), data],
            )
        } else {
            conn.execute(
                "UPDATE handoffs SET version = ?2, updated_at = ?3, data = ?4 WHERE key = ?1 AND version = ?5",
                params![
                    record.key.as_str(),
                    stored.version as i64,
                    stored.updated_at.to_rfc3339(),
                    data,
                    record.version as i64
                ],
            )
        }
        .map_err(|e| sql_error("write handoff", e))?;
        if changed == 1 { Ok(stored) } else { Err(conflict(record)) }
    }

    async fn recent(&self, limit: usize) -> BackendResult<Vec<HandoffRecord>> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare("SELECT version, data FROM handoffs ORDER BY updated_at DESC LIMIT ?1")
            .map_err(|e| sql_error("list handoffs", e))?;
        let rows = stmt
            .query_map([limit as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| sql_error("list handoffs", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("list handoffs", e))?;
        rows.into_iter()
            .map(|(version, data)| {
                let mut r: HandoffRecord =
                    serde_json::from_str(&data).map_err(|e| BackendError::permanent("list handoffs", e))?;
                r.version = version as u64;
                Ok(r)
            })
            .collect()
    }
}

#[async_trait]
impl CrmSettingsStore for EmbeddedCrmState {
    async fn load(&self) -> BackendResult<Option<CrmSettings>> {
        let conn = self.db.lock();
        let data: Option<String> = conn
            .query_row("SELECT data FROM crm_settings WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read CRM settings", e))?;
        data.map(|d| serde_json::from_str(&d).map_err(|e| BackendError::permanent("read CRM settings", e))).transpose()
    }

    async fn save(&self, settings: &CrmSettings) -> BackendResult<()> {
        let data = serde_json::to_string(settings).map_err(|e| BackendError::permanent("write CRM settings", e))?;
        let conn = self.db.lock();
        conn.execute(
            "INSERT INTO crm_settings (id, data) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            [data],
        )
        .map_err(|e| sql_error("write CRM settings", e))?;
        Ok(())
    }
}

/// Handoff records in memory (tests, Lambda handler fixtures).
#[derive(Default)]
pub struct MemoryHandoffStore {
    records: Mutex<HashMap<HandoffKey, HandoffRecord>>,
}

#[async_trait]
impl HandoffStore for MemoryHandoffStore {
    async fn get(&self, key: &HandoffKey) -> BackendResult<Option<HandoffRecord>> {
        Ok(self.records.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned())
    }

    async fn put(&self, record: &HandoffRecord) -> BackendResult<HandoffRecord> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let current = records.get(&record.key).map(|r| r.version).unwrap_or(0);
        if current != record.version {
            return Err(conflict(record));
        }
        let mut stored = record.clone();
        stored.version = record.version + 1;
        records.insert(record.key.clone(), stored.clone());
        Ok(stored)
    }

    async fn recent(&self, limit: usize) -> BackendResult<Vec<HandoffRecord>> {
        let mut all: Vec<HandoffRecord> =
            self.records.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
        all.truncate(limit);
        Ok(all)
    }
}

/// CRM settings in memory.
#[derive(Default)]
pub struct MemoryCrmSettingsStore {
    settings: Mutex<Option<CrmSettings>>,
}

#[async_trait]
impl CrmSettingsStore for MemoryCrmSettingsStore {
    async fn load(&self) -> BackendResult<Option<CrmSettings>> {
        Ok(self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    async fn save(&self, settings: &CrmSettings) -> BackendResult<()> {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = Some(settings.clone());
        Ok(())
    }
}
