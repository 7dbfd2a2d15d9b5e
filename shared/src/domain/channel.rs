//! Channels: where email arrives, and how it is routed.

use serde::{Deserialize, Serialize};

use super::ids::{ChannelName, EmailAddress, QueueName};
use super::interaction::Priority;
use super::mailbox::{IncomingMailbox, SecretRef};
use super::outbound::{ChannelOutbound, SendingChannel};
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
    /// Where the channel's mail leaves from: the internal server (Amazon SES) unless set. Holds
    /// no secret: the password of a custom SMTP server is a write-only secret of its own
    /// ([`super::outbound::SecretKey::ChannelSmtpPassword`]). Left out when it is the default,
    /// so records and seed digests written before channels carried it stay as they were.
    #[serde(default, skip_serializing_if = "ChannelOutbound::is_default")]
    pub outbound: ChannelOutbound,
}

impl Channel {
    /// True when every secret the channel refers to is a name in the secret store (what stored
    /// channels must hold), not a value or an environment variable from a config file.
    pub fn secrets_are_stored(&self) -> bool {
        self.mailbox.as_ref().is_none_or(|m| matches!(m.auth.secret(), SecretRef::Stored(_)))
    }

    /// What outbound mail needs of the channel.
    pub fn sending(&self) -> SendingChannel {
        SendingChannel {
            name: self.name.clone(),
            address: self.address.clone(),
            display_name: None,
            default_queue: self.default_queue.clone(),
            enabled: self.enabled,
            outbound: self.outbound.clone(),
        }
    }
}

pub(crate) fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::outbound::{OutgoingServer, SmtpSecurity};

    const STORED_BEFORE_OUTBOUND: &str = r#"{"name":"support","address":"support@example.com","enabled":true,
        "default_queue":"support","default_priority":5,"script":[]}"#;

    #[test]
    fn a_record_without_an_outbound_side_sends_through_the_internal_server_and_is_written_back_unchanged() {
        let channel: Channel = serde_json::from_str(STORED_BEFORE_OUTBOUND).unwrap();
        assert_eq!(channel.outbound, ChannelOutbound::default());
        assert!(matches!(channel.sending().outbound.server, OutgoingServer::Internal));
        let written = serde_json::to_value(&channel).unwrap();
        assert!(written.get("outbound").is_none(), "the default is left out: {written}");
        let original: serde_json::Value = serde_json::from_str(STORED_BEFORE_OUTBOUND).unwrap();
        assert_eq!(written, original, "an old record round-trips byte for byte (seed digests stay valid)");
    }

    #[test]
    fn the_outbound_side_round_trips_in_json_and_toml() {
        let toml_text = r#"
name = "support"
address = "support@example.com"
default_queue = "support"
[outbound]
agent_accounts = true
server = { kind = "smtp", host = "smtp.example.com", port = 587, security = "starttls", login = "helpdesk" }
"#;
        let channel: Channel = toml::from_str(toml_text).unwrap();
        let OutgoingServer::Smtp { server, login } = &channel.outbound.server else { panic!("smtp") };
        assert_eq!(
            (server.host.as_str(), server.port, server.security),
            ("smtp.example.com", 587, SmtpSecurity::Starttls)
        );
        assert_eq!(login.as_ref().map(|l| l.as_str()), Some("helpdesk"));
        assert!(channel.outbound.agent_accounts && channel.sending().outbound.agent_accounts);
        let json = serde_json::to_string(&channel).unwrap();
        assert!(!json.contains("password"), "{json}");
        assert_eq!(serde_json::from_str::<Channel>(&json).unwrap(), channel);
        // Unknown fields are still refused, inside the outbound side too.
        let typo = toml_text.replace("agent_accounts", "agent_account");
        assert!(toml::from_str::<Channel>(&typo).is_err());
        let smuggled = json.replace(r#""login":"helpdesk""#, r#""login":"helpdesk","password":"x""#);
        assert!(serde_json::from_str::<Channel>(&smuggled).is_err(), "{smuggled}");
    }
}
