use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::mailbox::SecretName;
use crate::ports::BackendResult;
use crate::ports::secrets::SecretStore;

/// Secrets in memory, for tests.
#[derive(Default)]
pub struct MemorySecretStore {
    values: Mutex<HashMap<SecretName, String>>,
}

#[async_trait]
impl SecretStore for MemorySecretStore {
    async fn put(&self, name: &SecretName, value: &SecretString) -> BackendResult<()> {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), value.expose_secret().to_owned());
        Ok(())
    }

    async fn get(&self, name: &SecretName) -> BackendResult<Option<SecretString>> {
        Ok(self.values.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|v| SecretString::from(v.clone())))
    }

    async fn delete(&self, name: &SecretName) -> BackendResult<()> {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(())
    }
}
