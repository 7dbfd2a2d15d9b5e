//! Channels (where email arrives) and email queues (where it waits for an agent).

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

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailQueue {
    pub name: QueueName,
    /// Whether agents may reject an offer from this queue.
    #[serde(default = "yes")]
    pub allow_reject: bool,
    /// Seconds an offer waits for accept before it goes to the next agent.
    #[serde(default = "default_offer_timeout")]
    pub offer_timeout_secs: u32,
    /// Added to the interaction priority when queues compete for the same agent.
    #[serde(default)]
    pub priority: u8,
}

fn default_offer_timeout() -> u32 {
    60
}

impl EmailQueue {
    pub fn named(name: QueueName) -> Self {
        Self { name, allow_reject: true, offer_timeout_secs: default_offer_timeout(), priority: 0 }
    }
}
