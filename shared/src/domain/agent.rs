//! Agents: the people (and AI assistants) who work interactions, and what they may do.

use serde::{Deserialize, Serialize};

use super::ids::{AgentId, EmailAddress, QueueName};

/// What a caller of the agent API may do. Carried in the JWT's `role` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Works their own offers and interactions.
    #[default]
    Agent,
    /// Also sees every queue and agent.
    Supervisor,
    /// Also configures channels, queues and integrations.
    Admin,
    /// An AI assistant: hands its conversations off to the CRM, nothing else.
    AiAssistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Supervisor => "supervisor",
            Self::Admin => "admin",
            Self::AiAssistant => "ai_assistant",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Agent, Self::Supervisor, Self::Admin, Self::AiAssistant].into_iter().find(|r| r.as_str() == s)
    }

    /// Supervisors and admins see the whole contact centre.
    pub fn supervises(self) -> bool {
        matches!(self, Self::Supervisor | Self::Admin)
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    /// Their workplace email address.
    pub email: EmailAddress,
    /// The email queues they take offers from.
    #[serde(default)]
    pub queues: Vec<QueueName>,
    /// How many emails they work at once.
    #[serde(default = "one")]
    pub capacity: u32,
    #[serde(default)]
    pub role: Role,
}
