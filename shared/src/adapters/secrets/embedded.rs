use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use secrecy::{ExposeSecret, SecretString};

use crate::adapters::embedded::{EmbeddedBackend, sql_error};
use crate::domain::mailbox::SecretName;
use crate::ports::BackendResult;
use crate::ports::secrets::SecretStore;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;";

/// Secrets in the embedded database. The data directory is the local deployment's trust
/// boundary, as the config file that could hold the same values is.
#[derive(Clone)]
pub struct EmbeddedSecretStore {
    backend: EmbeddedBackend,
}

impl EmbeddedSecretStore {
    /// Opens the store, creating its table if needed.
    pub fn open(backend: &EmbeddedBackend) -> BackendResult<Self> {
        backend.db().lock().execute_batch(SCHEMA).map_err(|e| sql_error("create secrets table", e))?;
        Ok(Self { backend: backend.clone() })
    }
}

#[async_trait]
impl SecretStore for EmbeddedSecretStore {
    async fn put(&self, name: &SecretName, value: &SecretString) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute(
                "INSERT INTO secrets (name, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![name.as_str(), value.expose_secret(), chrono::Utc::now().to_rfc3339()],
            )
            .map_err(|e| sql_error("store secret", e))?;
        Ok(())
    }

    async fn get(&self, name: &SecretName) -> BackendResult<Option<SecretString>> {
        let value: Option<String> = self
            .backend
            .db()
            .lock()
            .query_row("SELECT value FROM secrets WHERE name = ?1", [name.as_str()], |r| r.get(0))
            .optional()
            .map_err(|e| sql_error("read secret", e))?;
        Ok(value.map(SecretString::from))
    }

    async fn delete(&self, name: &SecretName) -> BackendResult<()> {
        self.backend
            .db()
            .lock()
            .execute("DELETE FROM secrets WHERE name = ?1", [name.as_str()])
            .map_err(|e| sql_error("delete secret", e))?;
        Ok(())
    }
}
