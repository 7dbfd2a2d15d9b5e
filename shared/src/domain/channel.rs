//! Channels: where email arrives, and how it is routed.

use serde::{Deserialize, Serialize};

use super::ids::{ChannelName, EmailAddress, QueueName};
use super::interaction::Priority;
use super::mailbox::{IncomingMailbox, SecretRef};
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
    /// The mailbox Mailroom polls for this channel's mail (IMAP or POP3), when the channel's
    /// mail does not arrive through SES or the SMTP listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<IncomingMailbox>,
}

impl Channel {
    /// True when every secret the channel refers to is a name in the secret store (what stored
    /// channels must hold), not a value or an environment variable from a config file.
    pub fn secrets_are_stored(&self) -> bool {
        self.mailbox.as_ref().is_none_or(|m| matches!(m.auth.secret(), SecretRef::Stored(_)))
    }
}

pub(crate) fn yes() -> bool {
    true
}
