//! Newtypes for the identifiers and addresses that cross layer boundaries.
//!
//! Each is parsed once at the edge (`parse`/`TryFrom`) and carried as a value that is valid by
//! construction, so use cases never re-check a bare `String`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a value could not become one of our newtypes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} is invalid: {reason}")]
pub struct InvalidValue {
    pub kind: &'static str,
    pub reason: &'static str,
}

fn invalid(kind: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { kind, reason }
}

/// An email address (`local@domain`), stored lower-cased so comparisons are exact.
///
/// Local parts are case-sensitive in theory (RFC 5321) and case-insensitive in every mail system a
/// contact centre meets, so we fold them: threading and loop checks must not miss `Alice@` vs `alice@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "email address";
        let trimmed = raw.trim().trim_start_matches('<').trim_end_matches('>').trim();
        if trimmed.is_empty() {
            return Err(invalid(KIND, "it is empty"));
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(invalid(KIND, "it is longer than 254 characters"));
        }
        if trimmed.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(KIND, "it contains spaces or control characters"));
        }
        let Some((local, domain)) = trimmed.rsplit_once('@') else {
            return Err(invalid(KIND, "it has no @"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(invalid(KIND, "the part before @ is empty or too long"));
        }
        if domain.is_empty()
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || domain.contains(['<', '>', '(', ')', ',', ';', ':', '\\', '"', '[', ']'])
                && !(domain.starts_with('[') && domain.ends_with(']'))
        {
            return Err(invalid(KIND, "the domain is not valid"));
        }
        if local.contains(['<', '>', '(', ')', ',', ';', ':', '\\', '[', ']']) && !local.starts_with('"') {
            return Err(invalid(KIND, "the part before @ has characters that need quoting"));
        }
        Ok(Self(trimmed.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }

    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map(|(l, _)| l).unwrap_or_default()
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> Self {
        value.0
    }
}

/// An RFC 5322 Message-ID without its angle brackets (`local@host`).
///
/// Kept as written apart from the brackets and surrounding space: ids are compared exactly, as
/// every MUA does when it builds `References`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    pub const MAX_LEN: usize = 998;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let id = raw.trim().trim_start_matches('<').trim_end_matches('>').trim();
        if id.is_empty() {
            return Err(invalid("Message-ID", "it is empty"));
        }
        if id.len() > Self::MAX_LEN {
            return Err(invalid("Message-ID", "it is longer than a header line may be"));
        }
        if id.chars().any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>') {
            return Err(invalid("Message-ID", "it contains spaces, brackets or control characters"));
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The synthetic id under which messages of one Outlook conversation are indexed: the hex of
    /// the 22-byte root (timestamp and GUID) of their `Thread-Index`.
    pub fn for_outlook_conversation(root: &[u8]) -> Self {
        Self(format!("thread-index.{}@conversation.invalid", hex::encode(root)))
    }

    /// The form used in headers: `<id>`.
    pub fn bracketed(&self) -> String {
        format!("<{}>", self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MessageId {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MessageId> for String {
    fn from(value: MessageId) -> Self {
        value.0
    }
}

macro_rules! hex_digest_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(invalid($kind, "it is not 64 lower-case hex digits"))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

hex_digest_id!(
    /// The content address of a raw message: the SHA-256 of its exact bytes. Every journal entry
    /// is keyed by one, so every stored raw message has exactly one recorded disposition.
    RawMailKey,
    "raw mail key"
);

hex_digest_id!(
    /// The identity of a logical message, independent of the trace headers each delivery adds:
    /// the same email arriving through SES and again through IMAP has one fingerprint, while a
    /// different email that reuses a Message-ID has another.
    Fingerprint,
    "fingerprint"
);

impl RawMailKey {
    pub fn of(raw: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(raw)))
    }
}

impl Fingerprint {
    pub fn from_digest(digest: impl AsRef<[u8]>) -> Self {
        Self(hex::encode(digest))
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// An interaction (one customer conversation). Twelve Crockford base-32 characters (60 bits),
/// short enough for the reference token customers see in subjects: `[MR-7K3QX9M2ABCD]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InteractionId(String);

impl InteractionId {
    pub const LEN: usize = 12;

    /// Derives the id from the first message's fingerprint, so a retried ingest of the same
    /// message creates the same interaction instead of a second one.
    pub fn for_first_message(fingerprint: &Fingerprint) -> Self {
        let digest = Sha256::digest(format!("interaction:{}", fingerprint.as_str()));
        Self::from_bits(u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")))
    }

    /// A fresh id for interactions that do not start from an inbound message (e.g. a new outbound
    /// email), derived from a caller-supplied unique seed such as an idempotency key.
    pub fn from_seed(seed: &str) -> Self {
        let digest = Sha256::digest(format!("interaction-seed:{seed}"));
        Self::from_bits(u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")))
    }

    fn from_bits(bits: u64) -> Self {
        let mut out = String::with_capacity(Self::LEN);
        for i in (0..Self::LEN).rev() {
            out.push(CROCKFORD[((bits >> (i * 5)) & 31) as usize] as char);
        }
        Self(out)
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let upper = raw.trim().to_ascii_uppercase();
        if upper.len() != Self::LEN {
            return Err(invalid("interaction id", "it is not 12 characters long"));
        }
        // Crockford decoding forgives the letters people confuse with digits.
        let normalized: String = upper
            .chars()
            .map(|c| match c {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            })
            .collect();
        if !normalized.bytes().all(|b| CROCKFORD.contains(&b)) {
            return Err(invalid("interaction id", "it has characters outside Crockford base 32"));
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token placed in outbound subjects so a reply threads back even when a mail system
    /// strips `In-Reply-To` and `References` (field lessons: ServiceNow, Jira, some gateways).
    pub fn reference_token(&self) -> String {
        format!("[MR-{}]", self.0)
    }
}

impl fmt::Display for InteractionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for InteractionId {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<InteractionId> for String {
    fn from(value: InteractionId) -> Self {
        value.0
    }
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = 64;

            /// Letters, digits, `-`, `_` and `.`; 1 to 64 characters. Safe in keys, URLs and logs.
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                let raw = raw.trim();
                if raw.is_empty() {
                    return Err(invalid($kind, "it is empty"));
                }
                if raw.len() > Self::MAX_LEN {
                    return Err(invalid($kind, "it is longer than 64 characters"));
                }
                if !raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                    return Err(invalid($kind, "only letters, digits, '-', '_' and '.' are allowed"));
                }
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }
    };
}

name_id!(
    /// A channel's name, e.g. `support`.
    ChannelName,
    "channel name"
);
name_id!(
    /// An email queue's name, e.g. `support` or `billing`.
    QueueName,
    "queue name"
);
name_id!(
    /// A message category from the classifier, e.g. `billing`.
    Category,
    "category"
);
name_id!(
    /// An agent (or supervisor, admin, AI assistant) as the identity provider names them, e.g. `ana`.
    AgentId,
    "agent id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses_are_folded_and_validated() {
        let a = EmailAddress::parse(" <Alice@Example.ORG> ").unwrap();
        assert_eq!(a.as_str(), "alice@example.org");
        assert_eq!(a.domain(), "example.org");
        for bad in ["", "alice", "@example.org", "alice@", "a b@example.org", "alice@exa..mple", "x@y\r\nBcc: z@w"] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("{}@example.org", "a".repeat(250));
        assert!(EmailAddress::parse(&long).is_err());
    }

    #[test]
    fn message_ids_drop_brackets_only() {
        assert_eq!(MessageId::parse(" <abc.DEF@host> ").unwrap().as_str(), "abc.DEF@host");
        assert!(MessageId::parse("<>").is_err());
        assert!(MessageId::parse("a b@c").is_err());
    }

    #[test]
    fn interaction_ids_are_deterministic_and_round_trip() {
        let fp = Fingerprint::from_digest([7u8; 32]);
        let a = InteractionId::for_first_message(&fp);
        assert_eq!(a, InteractionId::for_first_message(&fp));
        assert_eq!(a.as_str().len(), 12);
        assert_eq!(InteractionId::parse(&a.as_str().to_lowercase()).unwrap(), a);
        assert!(a.reference_token().starts_with("[MR-"));
        assert!(InteractionId::parse("short").is_err());
    }

    #[test]
    fn names_are_restricted_to_safe_characters() {
        assert!(QueueName::parse("support-2").is_ok());
        assert!(QueueName::parse("sup port").is_err());
        assert!(ChannelName::parse("").is_err());
    }
}
