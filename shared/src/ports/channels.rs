//! Channels as data: created and changed by admins at run time, seeded from the config file.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::BackendResult;
use crate::domain::channel::Channel;
use crate::domain::ids::ChannelName;

/// A channel as stored, with what optimistic concurrency and seeding need.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChannel {
    pub channel: Channel,
    /// Starts at 1 and grows with every change; an update names the version it read.
    pub version: u64,
    /// Where it sorts among channels (the config file's order; later ones after). The first
    /// enabled channel takes mail that names no channel address.
    pub position: u64,
    /// For a channel that came from the config file: a digest of that entry as last applied.
    /// Start-up applies the file's entry again only when it differs, so an admin's later
    /// changes survive restarts until the file itself changes.
    pub seed: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// The channels of the deployment: SQLite locally, the DynamoDB state table in AWS.
///
/// Stored channels refer to secrets by name only ([`Channel::secrets_are_stored`]); adapters
/// refuse anything else, so a password can never land in a channel record.
#[async_trait]
pub trait ChannelStore: Send + Sync {
    /// Every channel, ordered by position then name.
    async fn list(&self) -> BackendResult<Vec<StoredChannel>>;
    async fn get(&self, name: &ChannelName) -> BackendResult<Option<StoredChannel>>;
    /// Writes `record` if the stored version is `expected_version` (`None`: the channel must not
    /// exist yet). Returns the new version (`expected_version + 1`, or 1). Another version, or
    /// an existing channel when creating, is a `Conflict`.
    async fn put(&self, record: &StoredChannel, expected_version: Option<u64>) -> BackendResult<u64>;
}
