//! Messages on the routing queue: what the offer worker is asked to do.

use serde::{Deserialize, Serialize};

use super::ids::{AgentId, InteractionId, QueueName};
use super::interaction::Priority;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoutingRequest {
    /// An interaction waits in a queue for an agent (new, threaded into an ended one, rejected,
    /// transferred).
    InteractionQueued { interaction_id: InteractionId, queue: QueueName, priority: Priority },
    /// An agent can take work: they came back, or finished something.
    AgentAvailable { agent_id: AgentId },
    /// An offer's time is up (sent with a delay when the offer is made). Only that offer expires.
    OfferExpired { interaction_id: InteractionId, agent_id: AgentId, offer_id: String },
    /// Look at every queue (sent every minute by a schedule in AWS): the safety net for a request
    /// that found nothing to match because an index had not caught up with a write yet.
    Sweep,
}

impl RoutingRequest {
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("routing requests serialize")
    }

    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduled_sweep_body_is_a_sweep_request() {
        // template.yaml's RoutingSweepRule sends exactly this body.
        assert_eq!(RoutingRequest::from_body(r#"{"type":"sweep"}"#).unwrap(), RoutingRequest::Sweep);
        assert_eq!(RoutingRequest::Sweep.to_body(), r#"{"type":"sweep"}"#);
    }
}
