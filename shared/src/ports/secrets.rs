//! Write-only secrets (mailbox passwords, OAuth2 client secrets), kept apart from the channel
//! records that refer to them by name.

use async_trait::async_trait;
use secrecy::SecretString;

use super::BackendResult;
use crate::domain::mailbox::SecretName;

/// Secrets by name: a table in the embedded data directory, AWS Secrets Manager in the cloud.
/// Values are never logged and never returned through the admin API; only the poller and "test
/// connection" read them.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Creates or replaces the secret.
    async fn put(&self, name: &SecretName, value: &SecretString) -> BackendResult<()>;
    async fn get(&self, name: &SecretName) -> BackendResult<Option<SecretString>>;
    /// Removes the secret; removing a missing one is not an error.
    async fn delete(&self, name: &SecretName) -> BackendResult<()>;
}
