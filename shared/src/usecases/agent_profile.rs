//! An agent's profile: reading and changing it, the write-only SMTP password, and "send me a
//! test email" through the path the agent's mail takes.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{info, instrument, warn};

use super::outbound::{RouteProblem, ensure_profile, identity, route_for};
use crate::domain::agent::Agent;
use crate::domain::ids::{AgentId, ChannelName, EmailAddress, InvalidValue, MessageId};
use crate::domain::outbound::{
    self, HeaderText, OutboundEmail, OutboundKind, OutboundMailbox, SecretKey, SendAs, SmtpLogin, ThreadIndex,
};
use crate::domain::profile::{AgentProfile, DateFormat, InteractionSound, SanitizedHtml, Signature, SignatureName};
use crate::ports::outbound::{ChannelDirectory, MailEnvelope, MailSender, MessageRenderer, ProfileStore, SendError};
use crate::ports::secrets::SecretStore;
use crate::ports::{BackendError, Clock};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// 422, with the field named.
    #[error("{field}: {problem}")]
    Invalid { field: &'static str, problem: String },
    /// 503 when transient, else 500.
    #[error("the profile could not be read or saved")]
    Backend(#[from] BackendError),
}

impl ProfileError {
    fn value(field: &'static str, e: InvalidValue) -> Self {
        Self::Invalid { field, problem: e.to_string() }
    }

    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::Backend(_) => None,
        }
    }
}

/// A profile as the API shows it: the password never, only whether one is set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileView {
    pub agent_id: AgentId,
    pub workplace_email: Option<EmailAddress>,
    pub display_name: Option<String>,
    pub smtp_user_id: Option<String>,
    pub smtp_password_set: bool,
    pub date_format: String,
    pub signatures: Vec<SignatureView>,
    pub default_signature: Option<String>,
    pub default_from: SendAs,
    pub interaction_sound: InteractionSound,
    pub interaction_sounds: Vec<InteractionSound>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignatureView {
    pub name: String,
    /// As sanitized: what will be sent.
    pub html: String,
}

/// Changes to a profile (JSON `PATCH`): absent fields stay; an empty string clears an optional one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileChanges {
    pub workplace_email: Option<String>,
    pub display_name: Option<String>,
    pub smtp_user_id: Option<String>,
    /// `iso`, `european`, `us`, `long` or a strftime pattern.
    pub date_format: Option<String>,
    /// Replaces all signatures.
    pub signatures: Option<Vec<SignatureInput>>,
    pub default_signature: Option<String>,
    pub default_from: Option<SendAs>,
    pub interaction_sound: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureInput {
    pub name: String,
    pub html: String,
}

/// The answer to "send me a test email": sent or not, by which path, and the server's exact words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestEmailReport {
    pub sent: bool,
    /// `Amazon SES` or `host:port (STARTTLS)`, and whose account.
    pub path: String,
    pub from: Option<EmailAddress>,
    pub to: Option<EmailAddress>,
    pub message_id: Option<MessageId>,
    /// The server's acceptance, or the exact failure.
    pub detail: String,
    /// Why it was not sent: `no_password`, `not_configured`, `rejected`, `account`, `temporary`.
    pub failure: Option<&'static str>,
}

#[derive(Clone)]
pub struct ProfileService {
    pub profiles: Arc<dyn ProfileStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub channels: Arc<dyn ChannelDirectory>,
    pub renderer: Arc<dyn MessageRenderer>,
    pub sender: Arc<dyn MailSender>,
    pub clock: Arc<dyn Clock>,
}

fn optional<T>(
    field: &'static str,
    raw: &str,
    parse: impl Fn(&str) -> Result<T, InvalidValue>,
) -> Result<Option<T>, ProfileError> {
    if raw.trim().is_empty() { Ok(None) } else { parse(raw).map(Some).map_err(|e| ProfileError::value(field, e)) }
}

impl ProfileService {
    pub async fn profile(&self, agent: &Agent) -> Result<ProfileView, ProfileError> {
        let profile = ensure_profile(self.profiles.as_ref(), agent, self.clock.now()).await?;
        self.view(profile).await
    }

    #[instrument(skip_all, fields(agent_id = %agent.id))]
    pub async fn update(&self, agent: &Agent, changes: ProfileChanges) -> Result<ProfileView, ProfileError> {
        let mut p = ensure_profile(self.profiles.as_ref(), agent, self.clock.now()).await?;
        if let Some(raw) = &changes.workplace_email {
            // EmailAddress enforces the 254-character limit.
            p.workplace_email = optional("workplace_email", raw, EmailAddress::parse)?;
        }
        if let Some(raw) = &changes.display_name {
            p.display_name = optional("display_name", raw, |s| HeaderText::parse_as("display name", s))?;
        }
        if let Some(raw) = &changes.smtp_user_id {
            p.smtp_login = optional("smtp_user_id", raw, SmtpLogin::parse)?;
        }
        if let Some(raw) = &changes.date_format {
            p.date_format = DateFormat::parse(raw).map_err(|e| ProfileError::value("date_format", e))?;
        }
        if let Some(list) = &changes.signatures {
            if list.len() > AgentProfile::MAX_SIGNATURES {
                return Err(ProfileError::Invalid {
                    field: "signatures",
                    problem: format!("at most {} signatures", AgentProfile::MAX_SIGNATURES),
                });
            }
            let mut signatures: Vec<Signature> = Vec::new();
            for s in list {
                let name = SignatureName::parse(&s.name).map_err(|e| ProfileError::value("signatures", e))?;
                if signatures.iter().any(|x| x.name == name) {
                    return Err(ProfileError::Invalid {
                        field: "signatures",
                        problem: format!("two signatures are named {:?}", s.name),
                    });
                }
                let html = SanitizedHtml::sanitize(&s.html).map_err(|e| ProfileError::value("signatures", e))?;
                signatures.push(Signature { name, html });
            }
            p.signatures = signatures;
        }
        if let Some(raw) = &changes.default_signature {
            p.default_signature = optional("default_signature", raw, SignatureName::parse)?;
        }
        if let Some(name) = &p.default_signature
            && p.signature(name).is_none()
        {
            return Err(ProfileError::Invalid {
                field: "default_signature",
                problem: format!("there is no signature {:?}", name.as_str()),
            });
        }
        if let Some(send_as) = changes.default_from {
            p.default_send_as = send_as;
        }
        if let Some(raw) = &changes.interaction_sound {
            p.interaction_sound =
                InteractionSound::parse(raw).map_err(|e| ProfileError::value("interaction_sound", e))?;
        }
        p.updated_at = self.clock.now();
        self.profiles.put_profile(&p).await?;
        info!("profile updated");
        self.view(p).await
    }

    /// Sets the password of the agent's own account on the custom SMTP server. Write-only: no
    /// call returns it.
    #[instrument(skip_all, fields(agent_id = %agent.id))]
    pub async fn set_smtp_password(&self, agent: &Agent, password: SecretString) -> Result<(), ProfileError> {
        let v = password.expose_secret();
        if v.is_empty() || v.len() > 1024 || v.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return Err(ProfileError::Invalid {
                field: "password",
                problem: "it must be 1 to 1024 characters without line breaks".into(),
            });
        }
        self.secrets.put(&SecretKey::AgentSmtpPassword(agent.id.clone()).secret_name(), &password).await?;
        info!("SMTP password set");
        Ok(())
    }

    pub async fn clear_smtp_password(&self, agent: &Agent) -> Result<(), ProfileError> {
        self.secrets.delete(&SecretKey::AgentSmtpPassword(agent.id.clone()).secret_name()).await?;
        Ok(())
    }

    /// Sends a test email to the agent's workplace address through the path their mail takes on
    /// `channel` (their default From), and reports what happened. Failures are reported, not
    /// errors: the answer always says why.
    #[instrument(skip_all, fields(agent_id = %agent.id, channel_id = %channel))]
    pub async fn send_test_email(&self, agent: &Agent, channel: &ChannelName) -> Result<TestEmailReport, ProfileError> {
        let profile = ensure_profile(self.profiles.as_ref(), agent, self.clock.now()).await?;
        let not_sent = |path: String, detail: String, failure: &'static str| TestEmailReport {
            sent: false,
            path,
            from: None,
            to: profile.workplace_email.clone(),
            message_id: None,
            detail,
            failure: Some(failure),
        };
        let Some(channel) = self.channels.sending_channel(channel).await? else {
            return Err(ProfileError::Invalid {
                field: "channel",
                problem: format!("no channel {channel} is configured"),
            });
        };
        let Some(to) = profile.workplace_email.clone() else {
            return Ok(not_sent(
                String::new(),
                "no workplace email address is set in your profile".into(),
                "not_configured",
            ));
        };
        let account = match outbound::resolve_account(&channel, profile.default_send_as, &identity(&profile)) {
            Ok(a) => a,
            Err(e) => return Ok(not_sent(String::new(), e.to_string(), "not_configured")),
        };
        let whose = match account.send_as {
            SendAs::Channel => format!("channel {}'s account", channel.name),
            SendAs::Agent => "your own account".to_string(),
        };
        let path = format!("{} with {whose}", account.describe_server());
        let route = match route_for(self.secrets.as_ref(), &account).await {
            Ok(r) => r,
            Err(RouteProblem::Backend(e)) => return Err(e.into()),
            Err(RouteProblem::NoPassword(words)) => return Ok(not_sent(path, words, "no_password")),
            Err(other) => return Ok(not_sent(path, other.to_string(), "not_configured")),
        };

        let now = self.clock.now();
        let seed = uuid::Uuid::new_v4().simple().to_string();
        let message_id = MessageId::parse(&format!("mr.test.{seed}@{}", account.address.domain())).expect("safe parts");
        let date = profile.date_format.format(now);
        let text = format!(
            "This is a test email from Mailroom.\n\nIt was sent {date} through {path}, from {}.\nIf you can read it, your outgoing mail works.\n",
            account.address
        );
        let email = OutboundEmail {
            kind: OutboundKind::TestEmail,
            interaction_id: None,
            message_id: message_id.clone(),
            date: now,
            from: OutboundMailbox::bare(account.address.clone()),
            to: vec![OutboundMailbox::new(to.clone(), profile.display_name.clone())],
            cc: Vec::new(),
            bcc: Vec::new(),
            subject: HeaderText::lossy("Mailroom test email"),
            in_reply_to: None,
            references: Vec::new(),
            thread_index: ThreadIndex::new_conversation(now, message_id.as_str()),
            thread_topic: HeaderText::lossy("Mailroom test email"),
            html_body: Some(
                outbound::compose_bodies(&text, None, profile.default_signature().map(|s| &s.html), None).1,
            ),
            text_body: text,
            attachments: Vec::new(),
            forwarded: None,
        };
        let raw = match self.renderer.render(&email) {
            Ok(raw) => raw,
            Err(e) => return Ok(not_sent(path, e.to_string(), "not_configured")),
        };
        let envelope = MailEnvelope { from: account.address.clone(), recipients: vec![to.clone()] };
        let report = match self.sender.send(&route, &envelope, &raw).await {
            Ok(accepted) => TestEmailReport {
                sent: true,
                path,
                from: Some(account.address),
                to: Some(to),
                message_id: Some(message_id),
                detail: accepted.response,
                failure: None,
            },
            Err(e) => {
                let failure = match &e {
                    SendError::Transient { .. } => "temporary",
                    SendError::Rejected { .. } => "rejected",
                    SendError::Configuration { .. } => "account",
                };
                warn!(failure, "test email not sent");
                TestEmailReport {
                    sent: false,
                    path,
                    from: Some(account.address),
                    to: Some(to),
                    message_id: None,
                    detail: e.reply().to_string(),
                    failure: Some(failure),
                }
            }
        };
        Ok(report)
    }

    async fn view(&self, p: AgentProfile) -> Result<ProfileView, ProfileError> {
        let password_set =
            self.secrets.get(&SecretKey::AgentSmtpPassword(p.agent_id.clone()).secret_name()).await?.is_some();
        Ok(ProfileView {
            agent_id: p.agent_id,
            workplace_email: p.workplace_email,
            display_name: p.display_name.map(String::from),
            smtp_user_id: p.smtp_login.map(String::from),
            smtp_password_set: password_set,
            date_format: p.date_format.as_str().to_owned(),
            signatures: p
                .signatures
                .into_iter()
                .map(|s| SignatureView { name: s.name.as_str().to_owned(), html: s.html.as_str().to_owned() })
                .collect(),
            default_signature: p.default_signature.map(String::from),
            default_from: p.default_send_as,
            interaction_sound: p.interaction_sound,
            interaction_sounds: InteractionSound::ALL.to_vec(),
        })
    }
}
