//! Email queues: where interactions wait for an agent.

use serde::{Deserialize, Serialize};

use super::channel::yes;
use super::ids::QueueName;

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
