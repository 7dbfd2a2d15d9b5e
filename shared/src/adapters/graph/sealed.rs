//! A `SecretStore` that encrypts values before another store keeps them: AES-256-GCM with a random
//! 96-bit nonce per write and the secret's name as associated data, so a value copied under
//! another name (another agent's tokens) does not decrypt.
//!
//! Locally, the embedded secret table sits in the same SQLite file as everything else; sealing
//! the agents' Microsoft tokens with a key kept in its own file (`teams-token-key`, owner-only)
//! means a copy of the database alone does not give them away. In AWS, Secrets Manager already
//! encrypts every secret with KMS, so the Lambda functions use it directly.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::mailbox::SecretName;
use crate::ports::secrets::SecretStore;
use crate::ports::{BackendError, BackendResult};

const PREFIX: &str = "sealed:v1:";
/// The key file, in the data directory.
pub const KEY_FILE: &str = "teams-token-key";

pub struct SealedSecretStore {
    inner: Arc<dyn SecretStore>,
    key: LessSafeKey,
    rng: SystemRandom,
}

#[derive(Debug, thiserror::Error)]
#[error("a sealed secret could not be opened (wrong key, or the value was altered)")]
struct Unsealable;

impl SealedSecretStore {
    pub fn new(inner: Arc<dyn SecretStore>, key: &[u8; 32]) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key fits AES-256-GCM"));
        Self { inner, key, rng: SystemRandom::new() }
    }

    /// With the key in `<data_dir>/teams-token-key`, created (32 random bytes, mode 0600) on first
    /// use.
    pub fn with_key_file(inner: Arc<dyn SecretStore>, data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new().fill(&mut key).map_err(|_| std::io::Error::other("no system randomness"))?;
                std::fs::create_dir_all(data_dir)?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(&path) {
                    Ok(mut file) => {
                        std::io::Write::write_all(&mut file, &key)?;
                        key.to_vec()
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path)?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| std::io::Error::other(format!("{} must hold exactly 32 bytes", path.display())))?;
        Ok(Self::new(inner, &key))
    }

    fn seal(&self, name: &SecretName, value: &SecretString) -> BackendResult<SecretString> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| BackendError::permanent("seal secret", "no system randomness"))?;
        let mut data = value.expose_secret().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_str().as_bytes()),
                &mut data,
            )
            .map_err(|_| BackendError::permanent("seal secret", "encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(SecretString::from(format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out))))
    }

    fn open(&self, name: &SecretName, sealed: &SecretString) -> BackendResult<SecretString> {
        let raw = sealed
            .expose_secret()
            .strip_prefix(PREFIX)
            .ok_or_else(|| BackendError::permanent("open secret", Unsealable))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| BackendError::permanent("open secret", Unsealable))?;
        if bytes.len() < NONCE_LEN {
            return Err(BackendError::permanent("open secret", Unsealable));
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| BackendError::permanent("open secret", Unsealable))?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_str().as_bytes()), &mut data)
            .map_err(|_| BackendError::permanent("open secret", Unsealable))?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| BackendError::permanent("open secret", Unsealable))?;
        Ok(SecretString::from(text))
    }
}

#[async_trait]
impl SecretStore for SealedSecretStore {
    async fn put(&self, name: &SecretName, value: &SecretString) -> BackendResult<()> {
        let sealed = self.seal(name, value)?;
        self.inner.put(name, &sealed).await
    }

    async fn get(&self, name: &SecretName) -> BackendResult<Option<SecretString>> {
        match self.inner.get(name).await? {
            Some(sealed) => self.open(name, &sealed).map(Some),
            None => Ok(None),
        }
    }

    async fn delete(&self, name: &SecretName) -> BackendResult<()> {
        self.inner.delete(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::secrets::MemorySecretStore;

    #[tokio::test]
    async fn values_are_sealed_bound_to_their_name_and_opened_again() {
        let inner = Arc::new(MemorySecretStore::default());
        let store = SealedSecretStore::new(inner.clone(), &[7u8; 32]);
        let a = SecretName::parse("teams/ana/tokens").unwrap();
        let b = SecretName::parse("teams/ben/tokens").unwrap();
        store.put(&a, &SecretString::from("refresh-me")).await.unwrap();
        let raw = inner.get(&a).await.unwrap().unwrap();
        assert!(raw.expose_secret().starts_with(PREFIX));
        assert!(!raw.expose_secret().contains("refresh-me"));
        assert_eq!(store.get(&a).await.unwrap().unwrap().expose_secret(), "refresh-me");
        // Copied under another name, it does not open.
        inner.put(&b, &raw).await.unwrap();
        assert!(store.get(&b).await.is_err());
        // Another key does not open it either.
        let other = SealedSecretStore::new(inner.clone(), &[8u8; 32]);
        assert!(other.get(&a).await.is_err());
        store.delete(&a).await.unwrap();
        assert!(store.get(&a).await.unwrap().is_none());
    }

    #[test]
    fn the_key_file_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn SecretStore> = Arc::new(MemorySecretStore::default());
        SealedSecretStore::with_key_file(inner.clone(), dir.path()).unwrap();
        let first = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        SealedSecretStore::with_key_file(inner, dir.path()).unwrap();
        assert_eq!(first, std::fs::read(dir.path().join(KEY_FILE)).unwrap());
        assert_eq!(first.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
