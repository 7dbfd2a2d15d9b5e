use async_trait::async_trait;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use secrecy::{ExposeSecret, SecretString};

use crate::adapters::aws::classify;
use crate::domain::mailbox::SecretName;
use crate::ports::BackendResult;
use crate::ports::secrets::SecretStore;

const NOT_FOUND: &str = "ResourceNotFoundException";
const EXISTS: &str = "ResourceExistsException";

/// Secrets in AWS Secrets Manager, named `<prefix><name>` (the prefix, e.g. `mailroom/prod/`,
/// keeps one deployment's secrets apart and lets IAM grant exactly them).
pub struct SecretsManagerStore {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
}

impl SecretsManagerStore {
    pub fn new(client: aws_sdk_secretsmanager::Client, prefix: &str) -> Self {
        Self { client, prefix: prefix.to_owned() }
    }

    pub fn from_sdk_config(config: &aws_config::SdkConfig, prefix: &str) -> Self {
        Self::new(aws_sdk_secretsmanager::Client::new(config), prefix)
    }

    fn id(&self, name: &SecretName) -> String {
        format!("{}{}", self.prefix, name.as_str())
    }
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn put(&self, name: &SecretName, value: &SecretString) -> BackendResult<()> {
        let id = self.id(name);
        // Most puts replace a secret that exists; create it when it does not. Two creators
        // racing end with one of them replacing the other's value, as two updates would.
        let update = self.client.put_secret_value().secret_id(&id).secret_string(value.expose_secret()).send().await;
        match update {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(NOT_FOUND) => {}
            Err(e) => return Err(classify("secretsmanager put secret", e)),
        }
        let created = self
            .client
            .create_secret()
            .name(&id)
            .description("Mailroom channel secret (write-only; set through the admin API)")
            .secret_string(value.expose_secret())
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(EXISTS) => self
                .client
                .put_secret_value()
                .secret_id(&id)
                .secret_string(value.expose_secret())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify("secretsmanager put secret", e)),
            Err(e) => Err(classify("secretsmanager create secret", e)),
        }
    }

    async fn get(&self, name: &SecretName) -> BackendResult<Option<SecretString>> {
        match self.client.get_secret_value().secret_id(self.id(name)).send().await {
            Ok(out) => Ok(out.secret_string().map(|s| SecretString::from(s.to_owned()))),
            Err(e) if e.code() == Some(NOT_FOUND) => Ok(None),
            Err(e) => Err(classify("secretsmanager get secret", e)),
        }
    }

    async fn delete(&self, name: &SecretName) -> BackendResult<()> {
        // Without a recovery window, so a channel re-created under the same name can store its
        // secret again at once.
        let deleted =
            self.client.delete_secret().secret_id(self.id(name)).force_delete_without_recovery(true).send().await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(NOT_FOUND) => Ok(()),
            Err(e) => Err(classify("secretsmanager delete secret", e)),
        }
    }
}
