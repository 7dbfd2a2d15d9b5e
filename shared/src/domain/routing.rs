//! Messages on the routing queue: what the offer worker is asked to do.

use serde::{Deserialize, Serialize};

use super::ids::{InteractionId, QueueName};
use super::interaction::Priority;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoutingRequest {
    /// An interaction waits in a queue for an agent (new, threaded into an ended one, transferred).
    InteractionQueued { interaction_id: InteractionId, queue: QueueName, priority: Priority },
}

impl RoutingRequest {
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("routing requests serialize")
    }

    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}
