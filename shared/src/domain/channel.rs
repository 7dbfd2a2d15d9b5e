//! Channels: where email arrives, and how it is routed.

use serde::{Deserialize, Serialize};

use super::ids::{ChannelName, EmailAddress, QueueName};
use super::interaction::Priority;
use super::script::RoutingRule;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: ChannelName,
    /// The inbound address customers write to; also the From of mail sent for this channel.
    pub address: EmailAddress,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub default_queue: QueueName,
    #[serde(default)]
    pub default_priority: Priority,
    /// The email script: ordered routing rules, first match wins.
    #[serde(default)]
    pub script: Vec<RoutingRule>,
}

pub(crate) fn yes() -> bool {
    true
}
