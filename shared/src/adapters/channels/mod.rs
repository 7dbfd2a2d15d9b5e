//! `ChannelStore` and `MailboxStateStore` (cursors, POP3 UIDLs, health, polling lease) on the
//! embedded backend, the DynamoDB state table and in memory.

mod dynamodb;
mod embedded;
mod memory;

pub use self::dynamodb::DynamoChannelStore;
pub use self::embedded::EmbeddedChannelStore;
pub use self::memory::MemoryChannelStore;

use crate::ports::channels::StoredChannel;
use crate::ports::{BackendError, BackendResult};

/// Refuses a channel that still carries a secret value or environment variable: only names in
/// the secret store may be written next to channel data.
fn ensure_secrets_stored(record: &StoredChannel) -> BackendResult<()> {
    if record.channel.secrets_are_stored() {
        Ok(())
    } else {
        Err(BackendError::permanent(
            "store channel",
            format!("channel {} refers to a secret that is not in the secret store", record.channel.name),
        ))
    }
}

/// The conflict an optimistic write reports.
fn version_conflict(name: &str, expected: Option<u64>) -> BackendError {
    let detail = match expected {
        None => format!("channel {name} already exists"),
        Some(v) => format!("channel {name} was changed by someone else (expected version {v})"),
    };
    BackendError::Conflict { operation: "store channel", detail }
}
