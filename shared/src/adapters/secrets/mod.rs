//! `SecretStore` on the embedded backend (a table in the data directory), AWS Secrets Manager,
//! and in memory.

mod aws;
mod embedded;
mod memory;

pub use self::aws::SecretsManagerStore;
pub use self::embedded::EmbeddedSecretStore;
pub use self::memory::MemorySecretStore;
