//! Typed configuration, read once at start-up and validated with errors that name the setting.
//!
//! Locally it comes from a TOML file (`--config`), or the built-in demo; in Lambda from the
//! `MAILROOM_CONFIG` environment variable (JSON or TOML).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::agent::Agent;
use crate::domain::channel::Channel;
use crate::domain::classify::ClassifierConfig;
use crate::domain::ids::{ChannelName, EmailAddress, QueueName};
use crate::domain::mailbox::MailboxSettings;
use crate::domain::queue::EmailQueue;
use crate::domain::script::EmailScript;

/// The largest message accepted, as Amazon SES: 40 MB including headers.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 40 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestLimits {
    pub max_message_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self { max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    #[serde(default)]
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub queues: Vec<EmailQueue>,
    /// Agents, supervisors and admins known to the embedded backend (in AWS they come from the
    /// agent directory the admin API maintains).
    #[serde(default)]
    pub agents: Vec<Agent>,
    #[serde(default)]
    pub classifier: ClassifierConfig,
    #[serde(default)]
    pub ingest: IngestLimits,
    /// How channels' IMAP/POP3 mailboxes are polled.
    #[serde(default)]
    pub mailbox: MailboxSettings,
    /// Outgoing mail: the attachment limits (`[outbound.attachments]`) and, the older way, the
    /// outgoing server of channels that have no `outbound` table of their own
    /// (`[outbound.channels.<name>]`). When absent, the `MAILROOM_OUTBOUND` environment variable
    /// (same shape) is used. See [`AppConfig::channels_with_outbound`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<crate::adapters::outbound::OutboundConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration {origin} is not valid TOML/JSON")]
    Syntax {
        origin: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("configuration setting {setting}: {problem}")]
    Invalid { setting: String, problem: String },
    #[error("environment variable {name} is required")]
    MissingEnv { name: &'static str },
}

fn invalid(setting: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting: setting.into(), problem: problem.into() }
}

/// The built-in demo: one channel `support@example.com` routing to queue `support`, where agents
/// `ana` and `ben` take offers; `ben` also takes queue `billing` (for transfers); `sam`
/// supervises and `ada` administers.
pub const DEMO_CONFIG: &str = r#"
[[channels]]
name = "support"
address = "support@example.com"
default_queue = "support"

[[queues]]
name = "support"

[[queues]]
name = "billing"

[[agents]]
id = "ana"
name = "Ana Lima"
email = "ana@example.com"
queues = ["support"]

[[agents]]
id = "ben"
name = "Ben Okafor"
email = "ben@example.com"
queues = ["support", "billing"]

[[agents]]
id = "sam"
name = "Sam Reyes"
email = "sam@example.com"
role = "supervisor"

[[agents]]
id = "ada"
name = "Ada Park"
email = "ada@example.com"
role = "admin"
"#;

impl AppConfig {
    pub fn demo() -> Self {
        Self::parse(DEMO_CONFIG, "built-in demo").expect("the demo configuration is valid")
    }

    /// Parses TOML, or JSON when the text starts with `{`.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: AppConfig = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax { origin: origin.into(), source: e.into() })?
        } else {
            toml::from_str(text).map_err(|e| ConfigError::Syntax { origin: origin.into(), source: e.into() })?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.channels.is_empty() {
            return Err(invalid("channels", "at least one channel is required"));
        }
        if self.ingest.max_message_bytes == 0 {
            return Err(invalid("ingest.max_message_bytes", "must be greater than 0"));
        }
        self.mailbox.validate().map_err(|e| invalid(e.field, e.problem))?;
        if let Some(outbound) = &self.outbound {
            self.validate_outbound(outbound)?;
        }
        let queues: HashSet<&QueueName> = self.queues.iter().map(|q| &q.name).collect();
        if queues.len() != self.queues.len() {
            return Err(invalid("queues", "queue names must be unique"));
        }
        let mut agent_ids = HashSet::new();
        for a in &self.agents {
            if !agent_ids.insert(&a.id) {
                return Err(invalid(format!("agents.{}", a.id), "agent ids must be unique"));
            }
            if a.capacity == 0 {
                return Err(invalid(format!("agents.{}.capacity", a.id), "must be at least 1"));
            }
            for q in &a.queues {
                if !queues.contains(q) {
                    return Err(invalid(
                        format!("agents.{}.queues", a.id),
                        format!("queue {:?} is not defined under [[queues]]", q.as_str()),
                    ));
                }
            }
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for c in &self.channels {
            if !names.insert(&c.name) {
                return Err(invalid(format!("channels.{}", c.name), "channel names must be unique"));
            }
            if !addresses.insert(&c.address) {
                return Err(invalid(
                    format!("channels.{}.address", c.name),
                    "another channel already uses this address",
                ));
            }
            if crate::usecases::channel_admin::RESERVED_NAMES.contains(&c.name.as_str()) {
                return Err(invalid(format!("channels.{}.name", c.name), "this name is reserved by the admin API"));
            }
            if !queues.contains(&c.default_queue) {
                return Err(invalid(
                    format!("channels.{}.default_queue", c.name),
                    format!("queue {:?} is not defined under [[queues]]", c.default_queue.as_str()),
                ));
            }
            if let Some(m) = &c.mailbox {
                m.validate().map_err(|e| invalid(format!("channels.{}.{}", c.name, e.field), e.problem))?;
            }
            c.outbound
                .validate()
                .map_err(|e| invalid(format!("channels.{}.outbound.{}", c.name, e.field), e.problem))?;
            let script = EmailScript::compile(&c.script)
                .map_err(|e| invalid(format!("channels.{}.script", c.name), e.to_string()))?;
            for q in script.queues() {
                if !queues.contains(q) {
                    return Err(invalid(
                        format!("channels.{}.script", c.name),
                        format!("a rule routes to queue {:?}, which is not defined under [[queues]]", q.as_str()),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl AppConfig {
    fn validate_outbound(&self, outbound: &crate::adapters::outbound::OutboundConfig) -> Result<(), ConfigError> {
        for (name, settings) in &outbound.channels {
            if !self.channels.iter().any(|c| &c.name == name) {
                return Err(invalid(
                    format!("outbound.channels.{name}"),
                    "there is no channel with this name under [[channels]]",
                ));
            }
            settings.validate().map_err(|e| invalid(format!("outbound.channels.{name}.{}", e.field), e.problem))?;
        }
        let limits = outbound.attachments;
        if limits.max_count == 0 || limits.max_file_bytes == 0 || limits.max_total_bytes < limits.max_file_bytes {
            return Err(invalid(
                "outbound.attachments",
                "limits must be above 0, and max_total_bytes at least max_file_bytes",
            ));
        }
        Ok(())
    }
}

impl AppConfig {
    /// The outgoing settings: the `[outbound]` section, else the `MAILROOM_OUTBOUND` variable
    /// (read through `env`), else the defaults.
    pub fn outbound_settings(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::adapters::outbound::OutboundConfig, ConfigError> {
        use crate::adapters::outbound::OutboundConfig;
        if let Some(section) = &self.outbound {
            return Ok(section.clone());
        }
        match env(OutboundConfig::ENV_VAR) {
            Some(text) if !text.trim().is_empty() => {
                let settings = OutboundConfig::parse(&text, OutboundConfig::ENV_VAR)?;
                self.validate_outbound(&settings)?;
                Ok(settings)
            }
            _ => Ok(OutboundConfig::default()),
        }
    }

    /// The channels as seeding writes them into the channel store, each with its outgoing side.
    ///
    /// Precedence: a channel's own `outbound` table (`[channels.outbound]`, `"outbound": {...}`)
    /// is the way to set it. A channel without one takes its `[outbound.channels.<name>]` entry
    /// (or `MAILROOM_OUTBOUND`'s), the older way, which still works. Both set, differently, is an
    /// error naming the channel's setting; a channel with neither sends through the internal
    /// server.
    pub fn channels_with_outbound(
        &self,
        outbound: &crate::adapters::outbound::OutboundConfig,
    ) -> Result<Vec<Channel>, ConfigError> {
        self.channels
            .iter()
            .map(|c| {
                let mut channel = c.clone();
                match outbound.channels.get(&c.name) {
                    Some(older) if c.outbound.is_default() => channel.outbound = older.clone(),
                    Some(older) if *older != c.outbound => {
                        return Err(invalid(
                            format!("channels.{}.outbound", c.name),
                            format!(
                                "the outgoing server is also set, differently, under outbound.channels.{} (or {}); keep the channel's own outbound table only",
                                c.name,
                                crate::adapters::outbound::OutboundConfig::ENV_VAR
                            ),
                        ));
                    }
                    _ => {}
                }
                Ok(channel)
            })
            .collect()
    }
}

/// The channels as ingest uses them: compiled scripts and the set of our own addresses.
#[derive(Debug, Clone)]
pub struct ChannelSet {
    channels: Vec<(Channel, EmailScript)>,
    own_addresses: Vec<EmailAddress>,
}

impl ChannelSet {
    pub fn from_config(config: &AppConfig) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let channels = config
            .channels
            .iter()
            .map(|c| {
                let script = EmailScript::compile(&c.script)
                    .map_err(|e| invalid(format!("channels.{}.script", c.name), e.to_string()))?;
                Ok((c.clone(), script))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let own_addresses = config.channels.iter().map(|c| c.address.clone()).collect();
        Ok(Arc::new(Self { channels, own_addresses }))
    }

    /// The set of channels as a channel store holds them, in the order given (the first
    /// enabled one is the fallback). A channel whose script does not compile is an error naming
    /// it; the channel directory leaves such a channel out instead of failing everyone's mail.
    pub fn from_channels(channels: Vec<Channel>) -> Result<Arc<Self>, ConfigError> {
        let own_addresses = channels.iter().map(|c| c.address.clone()).collect();
        let channels = channels
            .into_iter()
            .map(|c| {
                let script = EmailScript::compile(&c.script)
                    .map_err(|e| invalid(format!("channels.{}.script", c.name), e.to_string()))?;
                Ok((c, script))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Arc::new(Self { channels, own_addresses }))
    }

    /// Every channel, in order.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.channels.iter().map(|(c, _)| c)
    }

    pub fn own_addresses(&self) -> &[EmailAddress] {
        &self.own_addresses
    }

    pub fn by_name(&self, name: &ChannelName) -> Option<(&Channel, &EmailScript)> {
        self.channels.iter().find(|(c, _)| &c.name == name).map(|(c, s)| (c, s))
    }

    pub fn by_address(&self, address: &EmailAddress) -> Option<(&Channel, &EmailScript)> {
        self.channels.iter().find(|(c, _)| &c.address == address).map(|(c, s)| (c, s))
    }

    /// The channel for mail that names none of our addresses (e.g. a file fed to the CLI):
    /// the first enabled channel.
    pub fn fallback(&self) -> Option<(&Channel, &EmailScript)> {
        self.channels.iter().find(|(c, _)| c.enabled).map(|(c, s)| (c, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_valid() {
        let c = AppConfig::demo();
        assert_eq!(c.channels[0].address.as_str(), "support@example.com");
        assert_eq!(c.ingest.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn errors_name_the_setting() {
        let err = AppConfig::parse(
            "[[channels]]\nname = \"s\"\naddress = \"s@example.com\"\ndefault_queue = \"nope\"\n",
            "test",
        )
        .unwrap_err();
        assert!(err.to_string().contains("channels.s.default_queue"), "{err}");
        let err = AppConfig::parse(
            "[[channels]]\nname = \"s\"\naddress = \"not an address\"\ndefault_queue = \"q\"\n",
            "test",
        )
        .unwrap_err();
        assert!(format!("{err:?}").contains("email address"), "{err:?}");
    }

    #[test]
    fn outbound_settings_are_read_and_checked() {
        let base = "[[channels]]\nname = \"support\"\naddress = \"support@example.com\"\ndefault_queue = \"support\"\n[[queues]]\nname = \"support\"\n";
        let c = AppConfig::parse(
            &format!(
                "{base}[outbound.channels.support]\nagent_accounts = true\nserver = {{ kind = \"smtp\", host = \"smtp.example.com\", port = 587, security = \"starttls\" }}\n"
            ),
            "test",
        )
        .unwrap();
        let outbound = c.outbound.expect("the outbound section");
        let support = &outbound.channels[&ChannelName::parse("support").unwrap()];
        assert!(support.agent_accounts);
        assert!(AppConfig::parse(base, "test").unwrap().outbound.is_none());
        let err =
            AppConfig::parse(&format!("{base}[outbound.channels.sales]\nagent_accounts = true\n"), "test").unwrap_err();
        assert!(err.to_string().contains("outbound.channels.sales"), "{err}");
    }

    #[test]
    fn a_channels_own_outbound_table_comes_first_and_the_older_section_still_seeds() {
        let base = "[[channels]]\nname = \"support\"\naddress = \"support@example.com\"\ndefault_queue = \"support\"\n[[channels]]\nname = \"sales\"\naddress = \"sales@example.com\"\ndefault_queue = \"support\"\n[channels.outbound]\nserver = { kind = \"smtp\", host = \"smtp.example.com\", port = 465, security = \"tls\" }\n[[queues]]\nname = \"support\"\n";
        let older = "[outbound.channels.support]\nagent_accounts = true\n";
        let no_env = |_: &str| None;
        let c = AppConfig::parse(&format!("{base}{older}"), "test").unwrap();
        let seeded = c.channels_with_outbound(&c.outbound_settings(&no_env).unwrap()).unwrap();
        assert!(seeded[0].outbound.agent_accounts, "support takes [outbound.channels.support]");
        assert!(matches!(seeded[1].outbound.server, crate::domain::outbound::OutgoingServer::Smtp { .. }));

        // Without an [outbound] section, MAILROOM_OUTBOUND is read (and checked) instead.
        let c = AppConfig::parse(base, "test").unwrap();
        let env = |name: &str| {
            (name == "MAILROOM_OUTBOUND").then(|| r#"{"channels":{"support":{"agent_accounts":true}}}"#.to_owned())
        };
        let seeded = c.channels_with_outbound(&c.outbound_settings(&env).unwrap()).unwrap();
        assert!(seeded[0].outbound.agent_accounts);
        let unknown = |_: &str| Some(r#"{"channels":{"nope":{}}}"#.to_owned());
        let err = c.outbound_settings(&unknown).unwrap_err();
        assert!(err.to_string().contains("outbound.channels.nope"), "{err}");

        // The same channel set both ways, differently: refused, naming the channel's own setting.
        let both = format!("{base}[outbound.channels.sales]\nagent_accounts = true\n");
        let c = AppConfig::parse(&both, "test").unwrap();
        let err = c.channels_with_outbound(&c.outbound_settings(&no_env).unwrap()).unwrap_err();
        assert!(err.to_string().contains("channels.sales.outbound"), "{err}");

        let zero = base.replace("port = 465", "port = 0");
        let err = AppConfig::parse(&zero, "test").unwrap_err();
        assert!(err.to_string().contains("channels.sales.outbound.server.port"), "{err}");
    }

    #[test]
    fn json_is_accepted() {
        let c = AppConfig::parse(
            r#"{"channels":[{"name":"support","address":"support@example.com","default_queue":"support"}],"queues":[{"name":"support"}]}"#,
            "env",
        )
        .unwrap();
        assert_eq!(c.channels.len(), 1);
    }
}
