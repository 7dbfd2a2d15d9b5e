//! What routing needs from storage: the agent directory with each agent's state, the queues,
//! the waiting interactions in offer order, and one atomic primitive.
//!
//! Every routing change (offer, accept, reject, time-out, end, transfer, presence) is a pure
//! function in `domain::presence`, applied by `transition`: read the interaction and/or the
//! agent, apply the function, write both back only if neither changed meanwhile (a DynamoDB
//! transaction with version conditions; a SQLite write transaction). A conflict re-reads and
//! re-applies. So no interaction is ever offered to two agents and no agent exceeds capacity,
//! whatever the concurrency and however often a message is redelivered.

use async_trait::async_trait;

use super::BackendResult;
use crate::domain::agent::Agent;
use crate::domain::ids::{AgentId, InteractionId, QueueName};
use crate::domain::interaction::Interaction;
use crate::domain::presence::{AgentState, Refusal};
use crate::domain::queue::EmailQueue;

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub agent: Agent,
    pub state: AgentState,
}

/// The change `transition` applies. It must be a pure function of its inputs: on a conflict it
/// runs again on fresh copies.
pub type TransitionFn<'a> =
    dyn Fn(Option<&mut Interaction>, Option<&mut AgentRecord>) -> Result<(), Refusal> + Send + Sync + 'a;

/// The records as written by a successful transition.
#[derive(Debug, Clone)]
pub struct Transitioned {
    pub interaction: Option<Interaction>,
    pub agent: Option<AgentRecord>,
}

#[async_trait]
pub trait RoutingStore: Send + Sync {
    /// Adds or updates an agent's directory entry; a new agent starts `working_offline`.
    async fn put_agent(&self, agent: &Agent) -> BackendResult<()>;
    async fn agent(&self, id: &AgentId) -> BackendResult<Option<AgentRecord>>;
    async fn agents(&self) -> BackendResult<Vec<AgentRecord>>;
    /// The agents who can take an offer now, in any queue. Read by every offer, so a backend that
    /// can answer without reading the whole directory should (DynamoDB keeps a sparse index of
    /// them). It may lag a moment behind a transition: `transition` decides, this only proposes.
    async fn available_agents(&self) -> BackendResult<Vec<AgentRecord>> {
        Ok(self.agents().await?.into_iter().filter(|r| r.state.can_take_offer(r.agent.capacity)).collect())
    }

    async fn put_queue(&self, queue: &EmailQueue) -> BackendResult<()>;
    async fn queues(&self) -> BackendResult<Vec<EmailQueue>>;

    /// Interactions waiting in `queue`, highest priority then longest waiting first.
    async fn waiting(&self, queue: &QueueName, limit: usize) -> BackendResult<Vec<Interaction>>;
    /// Interactions offered to or assigned to `agent`.
    async fn held_by(&self, agent: &AgentId) -> BackendResult<Vec<Interaction>>;

    /// Atomically applies `change` to the interaction and/or the agent (see the module docs).
    /// A missing record is passed as `None`; the function decides whether that is a refusal.
    async fn transition(
        &self,
        interaction: Option<&InteractionId>,
        agent: Option<&AgentId>,
        change: &TransitionFn<'_>,
    ) -> BackendResult<Result<Transitioned, Refusal>>;
}
