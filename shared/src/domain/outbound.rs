//! Outbound mail: what an agent sends, how it threads, which account sends it, and where each
//! message stands on its way out.
//!
//! Everything here is a value or a pure rule. The MIME adapter turns an [`OutboundEmail`] into
//! bytes; the senders (SES, SMTP) move the bytes; the use cases tie them together.
//!
//! Mail hygiene lives in the types: header text ([`HeaderText`]) cannot hold a line break, so no
//! subject, name or file name can smuggle a header; addresses are [`EmailAddress`]es, validated
//! once; every message carries `X-Mailroom-Origin`, and automatic ones also `Auto-Submitted` and
//! `X-Auto-Response-Suppress` (field lessons: FreeScout #3670, #4143).

use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids::{AgentId, ChannelName, EmailAddress, InteractionId, InvalidValue, MessageId, QueueName, RawMailKey};
use super::mailbox::SecretName;

fn invalid(kind: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { kind, reason }
}

// ------------------------------------------------------------------ header-safe text

/// One line of header text (a subject, a display name, a file name): no line breaks and no
/// control characters, so it cannot end its header and start another. Non-ASCII is fine: the
/// MIME adapter encodes it (RFC 2047).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderText(String);

impl HeaderText {
    /// Header lines may be 998 bytes; leave room for the name and the reference token.
    pub const MAX_LEN: usize = 900;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Self::parse_as("header text", raw)
    }

    /// As [`HeaderText::parse`], naming what the text is in the error.
    pub fn parse_as(kind: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        if raw.chars().any(|c| c.is_control()) {
            return Err(invalid(kind, "it contains a line break or another control character"));
        }
        let text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.len() > Self::MAX_LEN {
            return Err(invalid(kind, "it is longer than 900 bytes"));
        }
        Ok(Self(text))
    }

    /// Builds header text from text we hold (a stored subject): line breaks and control
    /// characters become spaces and overlong text is cut, so this never fails.
    pub fn lossy(raw: &str) -> Self {
        let cleaned: String = raw.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let mut text = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.len() > Self::MAX_LEN {
            let mut end = Self::MAX_LEN;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for HeaderText {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<HeaderText> for String {
    fn from(value: HeaderText) -> Self {
        value.0
    }
}

/// An address with an optional display name, as in `"Ana Lima" <ana@example.com>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMailbox {
    pub address: EmailAddress,
    pub name: Option<HeaderText>,
}

impl OutboundMailbox {
    pub fn new(address: EmailAddress, name: Option<HeaderText>) -> Self {
        Self { address, name: name.filter(|n| !n.is_empty()) }
    }

    pub fn bare(address: EmailAddress) -> Self {
        Self { address, name: None }
    }
}

// ------------------------------------------------------------------ attachments

/// A MIME media type such as `application/pdf`: two RFC 2045 tokens, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MediaType(String);

impl MediaType {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "content type";
        let value = raw.trim().to_ascii_lowercase();
        let token = |s: &str| {
            !s.is_empty() && s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        match value.split_once('/') {
            Some((t, s)) if token(t) && token(s) => Ok(Self(value)),
            _ => Err(invalid(KIND, "it is not of the form type/subtype")),
        }
    }

    pub fn octet_stream() -> Self {
        Self("application/octet-stream".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MediaType {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MediaType> for String {
    fn from(value: MediaType) -> Self {
        value.0
    }
}

/// An attachment's file name: header-safe, no path, at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileName(String);

impl FileName {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "file name";
        let text = HeaderText::parse_as(KIND, raw)?;
        let name = text.as_str();
        if name.is_empty() || name == "." || name == ".." {
            return Err(invalid(KIND, "it is empty"));
        }
        if name.len() > 255 {
            return Err(invalid(KIND, "it is longer than 255 bytes"));
        }
        if name.contains(['/', '\\', '"']) {
            return Err(invalid(KIND, "it contains a path separator or a quote"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for FileName {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<FileName> for String {
    fn from(value: FileName) -> Self {
        value.0
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct OutboundAttachment {
    pub file_name: FileName,
    pub content_type: MediaType,
    pub data: Vec<u8>,
}

impl fmt::Debug for OutboundAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundAttachment")
            .field("content_type", &self.content_type)
            .field("size", &self.data.len())
            .finish_non_exhaustive()
    }
}

/// What an outbound message may carry. The defaults keep a message, once base64 has grown it by a
/// third, under the 40 MB Amazon SES accepts and the 25-35 MB common mail servers accept, and
/// follow Amazon Connect's 10 files (field lessons, item 49).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentLimits {
    pub max_count: usize,
    pub max_file_bytes: usize,
    /// All attachments together, a forwarded original included.
    pub max_total_bytes: usize,
}

impl Default for AttachmentLimits {
    fn default() -> Self {
        Self { max_count: 10, max_file_bytes: 10 * 1024 * 1024, max_total_bytes: 20 * 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachmentError {
    #[error("too many attachments: {count}, the limit is {limit}")]
    TooMany { count: usize, limit: usize },
    #[error("attachment {file_name} is {size} bytes, the limit per file is {limit} bytes")]
    FileTooLarge { file_name: String, size: usize, limit: usize },
    #[error("attachments total {total} bytes, the limit is {limit} bytes")]
    TotalTooLarge { total: usize, limit: usize },
}

impl AttachmentLimits {
    /// The largest attachment bytes that fit in one request through API Gateway, which refuses a
    /// request over 10 MB before the function runs (and without naming a field): attachments
    /// travel base64 in JSON, a third larger, so 7 MiB of them is the most that arrives.
    pub const GATEWAY_BYTES: usize = 7 * 1024 * 1024;

    /// These limits, lowered where needed to [`Self::GATEWAY_BYTES`], so that Mailroom's own
    /// error (naming the limit) answers before API Gateway's. A forwarded original counts in the
    /// total too, so in AWS an original over that size cannot be forwarded with the API.
    pub fn behind_gateway(self) -> Self {
        Self {
            max_count: self.max_count,
            max_file_bytes: self.max_file_bytes.min(Self::GATEWAY_BYTES),
            max_total_bytes: self.max_total_bytes.min(Self::GATEWAY_BYTES),
        }
    }

    /// Checks the attachments (and `extra_bytes`, a forwarded original) against the limits.
    pub fn check(&self, attachments: &[OutboundAttachment], extra_bytes: usize) -> Result<(), AttachmentError> {
        if attachments.len() > self.max_count {
            return Err(AttachmentError::TooMany { count: attachments.len(), limit: self.max_count });
        }
        for a in attachments {
            if a.data.len() > self.max_file_bytes {
                return Err(AttachmentError::FileTooLarge {
                    file_name: a.file_name.as_str().to_owned(),
                    size: a.data.len(),
                    limit: self.max_file_bytes,
                });
            }
        }
        let total = attachments.iter().map(|a| a.data.len()).sum::<usize>() + extra_bytes;
        if total > self.max_total_bytes {
            return Err(AttachmentError::TotalTooLarge { total, limit: self.max_total_bytes });
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ subjects and threading

/// Reply and forward prefixes of the mail clients customers use, compared case-insensitively.
const SUBJECT_PREFIXES: &[&str] =
    &["re", "fw", "fwd", "aw", "wg", "sv", "vs", "antw", "tr", "rif", "ref", "réf", "r", "odp", "res", "enc"];

/// The subject without leading `Re:`/`Fwd:`/`AW:`... prefixes (repeated or numbered, `Re[2]:`).
pub fn strip_prefixes(subject: &str) -> &str {
    let mut rest = subject.trim_start();
    loop {
        let Some((head, tail)) = rest.split_once(':') else { return rest };
        let word = head.trim();
        let word = word.split_once('[').map(|(w, _)| w).unwrap_or(word);
        if word.chars().count() <= 4
            && SUBJECT_PREFIXES.iter().any(|p| word.eq_ignore_ascii_case(p) || word.to_lowercase() == *p)
        {
            rest = tail.trim_start();
        } else {
            return rest;
        }
    }
}

/// The subject without any `[MR-…]` reference token, spaces collapsed.
pub fn strip_tokens(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    let mut rest = subject;
    while let Some(start) = find_token(rest) {
        out.push_str(&rest[..start]);
        rest = &rest[start + TOKEN_LEN..];
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `[MR-` + 12 + `]`.
const TOKEN_LEN: usize = 4 + InteractionId::LEN + 1;

fn find_token(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i + TOKEN_LEN <= bytes.len() {
        if bytes[i] == b'['
            && bytes[i + 1..i + 4].eq_ignore_ascii_case(b"MR-")
            && bytes[i + TOKEN_LEN - 1] == b']'
            && bytes[i + 4..i + TOKEN_LEN - 1].iter().all(|b| b.is_ascii_alphanumeric())
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// `subject [MR-XXXXXXXXXXXX]`: every earlier token removed, this interaction's exactly once, so a
/// reply still threads when a gateway strips `In-Reply-To` and `References` (field lessons 6).
pub fn tagged_subject(subject: &str, interaction: &InteractionId) -> HeaderText {
    let base = strip_tokens(subject);
    let token = interaction.reference_token();
    let text = if base.is_empty() { token } else { format!("{base} {token}") };
    HeaderText::lossy(&text)
}

/// `Re: <original without prefixes> [MR-…]`.
pub fn reply_subject(original: &str, interaction: &InteractionId) -> HeaderText {
    let base = strip_tokens(strip_prefixes(original));
    tagged_subject(&format!("Re: {base}"), interaction)
}

/// `Fwd: <original without prefixes> [MR-…]`.
pub fn forward_subject(original: &str, interaction: &InteractionId) -> HeaderText {
    let base = strip_tokens(strip_prefixes(original));
    tagged_subject(&format!("Fwd: {base}"), interaction)
}

/// Our own Message-ID: `mr.<interaction>.<16 hex of the seed's hash>@<domain>`, on a domain of
/// ours so the customer's answer finds its way back through the Message-ID index. Derived from a
/// seed (the request's idempotency key) so a retried request composes the same message.
pub fn outbound_message_id(interaction: &InteractionId, seed: &str, domain: &str) -> MessageId {
    let digest = Sha256::digest(format!("outbound:{interaction}:{seed}"));
    let id = format!("mr.{}.{}@{}", interaction.as_str().to_ascii_lowercase(), hex::encode(&digest[..8]), domain);
    MessageId::parse(&id).expect("built from safe parts")
}

/// The `References` of a reply: the thread's ids oldest first, at most `MAX_REFERENCES` (the
/// first kept, as RFC 5322 suggests, then the newest).
pub fn references(thread: &[MessageId]) -> Vec<MessageId> {
    const MAX_REFERENCES: usize = 20;
    let mut ids: Vec<MessageId> = Vec::new();
    for id in thread {
        if !ids.contains(id) && !id.as_str().ends_with("@conversation.invalid") {
            ids.push(id.clone());
        }
    }
    if ids.len() > MAX_REFERENCES {
        let mut kept = vec![ids[0].clone()];
        kept.extend(ids[ids.len() - (MAX_REFERENCES - 1)..].iter().cloned());
        ids = kept;
    }
    ids
}

/// Outlook's `Thread-Index`: a 22-byte header (reserved byte, 5 bytes of FILETIME, a 16-byte
/// GUID) naming the conversation, then 5 bytes per reply. Outlook and OWA group by it when
/// `References` is missing (field lessons 15, FreeScout #4922); ingest indexes the 22-byte root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadIndex(Vec<u8>);

/// 100 ns intervals between 1601-01-01 (FILETIME's epoch) and 1970-01-01.
const FILETIME_UNIX_OFFSET: u64 = 116_444_736_000_000_000;

fn filetime(t: DateTime<Utc>) -> u64 {
    let nanos = t.timestamp_nanos_opt().unwrap_or_default().max(0) as u64;
    nanos / 100 + FILETIME_UNIX_OFFSET
}

impl ThreadIndex {
    pub const ROOT_LEN: usize = 22;

    /// A new conversation started now; the GUID part is derived from `seed` (our Message-ID).
    pub fn new_conversation(now: DateTime<Utc>, seed: &str) -> Self {
        let mut out = Vec::with_capacity(Self::ROOT_LEN);
        out.extend_from_slice(&filetime(now).to_be_bytes()[..6]);
        out.extend_from_slice(&Sha256::digest(format!("thread-index:{seed}"))[..16]);
        Self(out)
    }

    /// A reply in the conversation with this root: the root plus one child block holding the time
    /// since the conversation started (MS-OXOMSG 2.2.1.3).
    pub fn reply(root: &[u8; Self::ROOT_LEN], now: DateTime<Utc>, seed: &str) -> Self {
        let mut start = [0u8; 8];
        start[..6].copy_from_slice(&root[..6]);
        let delta = filetime(now).saturating_sub(u64::from_be_bytes(start));
        // Code bit 0: bits 18..48 of the difference; 1: bits 23..53 (for gaps over ~1.7 years).
        let block: u64 =
            if delta < (1 << 49) { (delta >> 18) & 0x7fff_ffff } else { (1 << 31) | ((delta >> 23) & 0x7fff_ffff) };
        let random = Sha256::digest(format!("thread-index-child:{seed}"))[0];
        let mut out = root.to_vec();
        out.extend_from_slice(&(block as u32).to_be_bytes());
        out.push(random);
        Self(out)
    }

    pub fn root(&self) -> [u8; Self::ROOT_LEN] {
        self.0[..Self::ROOT_LEN].try_into().expect("a thread index is at least 22 bytes")
    }

    /// The header value: base64.
    pub fn to_header(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// The synthetic id ingest indexes this conversation under.
    pub fn conversation_key(&self) -> MessageId {
        MessageId::for_outlook_conversation(&self.root())
    }

    /// The root of a conversation from the key ingest stored for it.
    pub fn root_of_key(key: &MessageId) -> Option<[u8; Self::ROOT_LEN]> {
        let hex_root = key.as_str().strip_prefix("thread-index.")?.strip_suffix("@conversation.invalid")?;
        hex::decode(hex_root).ok()?.try_into().ok()
    }
}

// ------------------------------------------------------------------ composed messages

/// Why a message is sent; recorded with it and named in `X-Mailroom-Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundKind {
    Reply,
    ReplyAll,
    Forward,
    NewEmail,
    FollowUp,
    /// "Send me a test email": automatic, never part of an interaction.
    TestEmail,
}

impl OutboundKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reply => "reply",
            Self::ReplyAll => "reply_all",
            Self::Forward => "forward",
            Self::NewEmail => "new_email",
            Self::FollowUp => "follow_up",
            Self::TestEmail => "test_email",
        }
    }

    /// Whether no person wrote it: such mail carries `Auto-Submitted: auto-generated` and
    /// `X-Auto-Response-Suppress: All`, so auto-responders stay silent (RFC 3834).
    pub fn is_automatic(self) -> bool {
        matches!(self, Self::TestEmail)
    }
}

impl fmt::Display for OutboundKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The original message carried inside a forward, as `message/rfc822`.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardedOriginal {
    pub file_name: FileName,
    pub raw: Vec<u8>,
}

impl fmt::Debug for ForwardedOriginal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardedOriginal").field("size", &self.raw.len()).finish_non_exhaustive()
    }
}

/// An email ready to be rendered to bytes. Built only by the compose functions of the use case,
/// from validated parts.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundEmail {
    pub kind: OutboundKind,
    pub interaction_id: Option<InteractionId>,
    pub message_id: MessageId,
    pub date: DateTime<Utc>,
    pub from: OutboundMailbox,
    pub to: Vec<OutboundMailbox>,
    pub cc: Vec<OutboundMailbox>,
    /// Envelope only: never written into the headers.
    pub bcc: Vec<EmailAddress>,
    pub subject: HeaderText,
    pub in_reply_to: Option<MessageId>,
    pub references: Vec<MessageId>,
    pub thread_index: ThreadIndex,
    /// Outlook's `Thread-Topic`: the subject without prefixes and token.
    pub thread_topic: HeaderText,
    pub text_body: String,
    /// Sanitized HTML, or `None` for text only.
    pub html_body: Option<String>,
    pub attachments: Vec<OutboundAttachment>,
    pub forwarded: Option<ForwardedOriginal>,
}

/// `X-Mailroom-Origin`: marks mail we sent, so that if it ever comes back in (a loop, a Bcc to a
/// channel) screening recognises it. Holds no address and no subject.
pub const ORIGIN_HEADER: &str = "X-Mailroom-Origin";

impl OutboundEmail {
    pub fn origin_header(&self) -> String {
        match &self.interaction_id {
            Some(id) => format!("interaction={id}; kind={}", self.kind),
            None => format!("kind={}", self.kind),
        }
    }

    /// Everyone the message is delivered to: To, Cc and Bcc, without repeats.
    pub fn envelope_recipients(&self) -> Vec<EmailAddress> {
        let mut out: Vec<EmailAddress> = Vec::new();
        for a in self.to.iter().chain(self.cc.iter()).map(|m| &m.address).chain(self.bcc.iter()) {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

// ------------------------------------------------------------------ bodies

/// Escapes text for HTML element content and attributes.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Plain text as HTML paragraphs: escaped, line breaks kept.
pub fn text_to_html(text: &str) -> String {
    escape_html(text).replace("\r\n", "\n").replace('\n', "<br>\n")
}

/// What is quoted below an answer or included in a forward.
#[derive(Debug, Clone, PartialEq)]
pub enum Quoted {
    /// `On <date>, <author> wrote:` and the text, each line prefixed with `> `.
    Reply { author: String, date: String, text: String },
    /// The `Forwarded message` block: header lines, then the text.
    Forward { headers: Vec<(&'static str, String)>, text: String },
}

/// The text and HTML bodies of an outbound email: the agent's words, the signature, the quote.
pub fn compose_bodies(
    text: &str,
    html: Option<&str>,
    signature: Option<&super::profile::SanitizedHtml>,
    quoted: Option<&Quoted>,
) -> (String, String) {
    let mut plain = text.trim_end().replace("\r\n", "\n");
    let mut rich = match html {
        Some(h) => h.to_owned(),
        None => format!("<div>{}</div>", text_to_html(text.trim_end())),
    };
    if let Some(sig) = signature {
        plain.push_str("\n\n-- \n");
        plain.push_str(&sig.to_text());
        rich.push_str("\n<div class=\"mailroom-signature\">");
        rich.push_str(sig.as_str());
        rich.push_str("</div>");
    }
    match quoted {
        Some(Quoted::Reply { author, date, text }) => {
            plain.push_str(&format!("\n\nOn {date}, {author} wrote:\n"));
            for line in text.trim_end().lines() {
                plain.push_str(if line.is_empty() { ">" } else { "> " });
                plain.push_str(line);
                plain.push('\n');
            }
            rich.push_str(&format!(
                "\n<div>On {}, {} wrote:</div>\n<blockquote style=\"margin:0 0 0 .8ex;border-left:1px solid #ccc;padding-left:1ex\">{}</blockquote>",
                escape_html(date),
                escape_html(author),
                text_to_html(text.trim_end())
            ));
        }
        Some(Quoted::Forward { headers, text }) => {
            plain.push_str("\n\n---------- Forwarded message ----------\n");
            let mut block = String::from("\n<div>---------- Forwarded message ----------<br>\n");
            for (name, value) in headers {
                plain.push_str(&format!("{name}: {value}\n"));
                block.push_str(&format!("{}: {}<br>\n", escape_html(name), escape_html(value)));
            }
            plain.push('\n');
            plain.push_str(text.trim_end());
            plain.push('\n');
            block.push_str("<br>\n");
            block.push_str(&text_to_html(text.trim_end()));
            block.push_str("</div>");
            rich.push_str(&block);
        }
        None => plain.push('\n'),
    }
    (plain, rich)
}

// ------------------------------------------------------------------ outgoing servers and accounts

/// How a custom SMTP server is secured. There is no plaintext mode: credentials never cross the
/// network in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587); refused if the server does not offer it.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// A host name or IP literal for an SMTP server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl HostName {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let host = raw.trim().to_ascii_lowercase();
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
            && !host.starts_with(['-', '.']);
        if ok {
            Ok(Self(host))
        } else {
            Err(invalid("host name", "only letters, digits, '-', '.' and ':' are allowed"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostName {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<HostName> for String {
    fn from(value: HostName) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpServer {
    pub host: HostName,
    pub port: u16,
    pub security: SmtpSecurity,
}

impl fmt::Display for SmtpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let security = match self.security {
            SmtpSecurity::Starttls => "STARTTLS",
            SmtpSecurity::Tls => "TLS",
        };
        write!(f, "{}:{} ({security})", self.host.as_str(), self.port)
    }
}

/// An SMTP login name (often the address, sometimes a user id such as `DOMAIN\ana`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SmtpLogin(String);

impl SmtpLogin {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let login = raw.trim();
        if login.is_empty() || login.len() > 254 {
            return Err(invalid("SMTP user id", "it must be 1 to 254 characters"));
        }
        if login.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("SMTP user id", "it contains spaces or control characters"));
        }
        Ok(Self(login.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SmtpLogin {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SmtpLogin> for String {
    fn from(value: SmtpLogin) -> Self {
        value.0
    }
}

/// Where a channel's mail leaves from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutgoingServer {
    /// Amazon SES (moto's server in tests). The sending identity is the channel address's
    /// domain, verified in SES.
    Internal,
    /// A custom SMTP server. `login` is the channel's own account (default: the channel address);
    /// its password is a write-only secret.
    Smtp {
        #[serde(flatten)]
        server: SmtpServer,
        #[serde(default)]
        login: Option<SmtpLogin>,
    },
}

/// The outgoing side of a channel, as an admin configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelOutbound {
    #[serde(default = "internal")]
    pub server: OutgoingServer,
    /// "Override server configuration": agents may send as their own workplace address, signing
    /// in with their own account (user id and password from their profile) on this server.
    #[serde(default)]
    pub agent_accounts: bool,
}

fn internal() -> OutgoingServer {
    OutgoingServer::Internal
}

impl Default for ChannelOutbound {
    fn default() -> Self {
        Self { server: OutgoingServer::Internal, agent_accounts: false }
    }
}

impl ChannelOutbound {
    /// The internal server, agents sending as the channel only.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// What the types cannot say: a port of 0.
    pub fn validate(&self) -> Result<(), super::mailbox::FieldError> {
        match &self.server {
            OutgoingServer::Smtp { server, .. } if server.port == 0 => {
                Err(super::mailbox::FieldError::new("server.port", "must be between 1 and 65535"))
            }
            _ => Ok(()),
        }
    }
}

/// What outbound mail needs to know of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendingChannel {
    pub name: ChannelName,
    pub address: EmailAddress,
    /// The name shown with the channel address, e.g. `Example Support`.
    pub display_name: Option<HeaderText>,
    pub default_queue: QueueName,
    /// A disabled channel still answers: replies, forwards and follow-ups on its interactions
    /// go out, and so does mail already queued. Only new emails are refused (the customer's
    /// answer to one would be quarantined).
    pub enabled: bool,
    pub outbound: ChannelOutbound,
}

/// Whose address a message is sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SendAs {
    /// The channel address, with the channel's account.
    #[default]
    Channel,
    /// The agent's workplace address, with the agent's own account.
    Agent,
}

impl SendAs {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Channel => "channel",
            Self::Agent => "agent",
        }
    }
}

/// Whose password signs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "owner", content = "name", rename_all = "snake_case")]
pub enum SecretKey {
    ChannelSmtpPassword(ChannelName),
    AgentSmtpPassword(AgentId),
}

impl SecretKey {
    /// Its name in the secret store: `channel/<name>/smtp-password` or `agent/<id>/smtp-password`.
    pub fn secret_name(&self) -> SecretName {
        let name = match self {
            Self::ChannelSmtpPassword(c) => format!("channel/{c}/smtp-password"),
            Self::AgentSmtpPassword(a) => format!("agent/{a}/smtp-password"),
        };
        SecretName::parse(&name).expect("channel names and agent ids are valid in secret names")
    }
}

/// The account a message is sent with: which server, which login, and the one address that
/// account may put in `From`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAccount {
    pub send_as: SendAs,
    pub address: EmailAddress,
    pub server: AccountServer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountServer {
    Ses,
    Smtp { server: SmtpServer, login: SmtpLogin, password: SecretKey },
}

impl SendAccount {
    /// How the path is described to people (no password, no address): `Amazon SES` or
    /// `smtp.example.com:587 (STARTTLS)`.
    pub fn describe_server(&self) -> String {
        match &self.server {
            AccountServer::Ses => "Amazon SES".into(),
            AccountServer::Smtp { server, .. } => server.to_string(),
        }
    }
}

/// Why no account can send a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("channel {0} does not let agents send from their own address")]
    AgentAccountsNotAllowed(ChannelName),
    #[error("no workplace email address is set in your profile")]
    NoWorkplaceEmail,
    #[error("no SMTP user id is set in your profile")]
    NoSmtpLogin,
    #[error("From {from} does not match the sending account {account}: the message was not sent")]
    FromMismatch { from: EmailAddress, account: EmailAddress },
}

/// What the agent's profile contributes to choosing an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub id: AgentId,
    pub workplace_email: Option<EmailAddress>,
    pub smtp_login: Option<SmtpLogin>,
}

/// Picks the account for `send_as` on `channel`: the channel's own account, or (when the channel
/// allows it) the agent's. The account's address is then the only From it may send.
pub fn resolve_account(
    channel: &SendingChannel,
    send_as: SendAs,
    agent: &AgentIdentity,
) -> Result<SendAccount, RouteError> {
    match send_as {
        SendAs::Channel => {
            let server = match &channel.outbound.server {
                OutgoingServer::Internal => AccountServer::Ses,
                OutgoingServer::Smtp { server, login } => AccountServer::Smtp {
                    server: server.clone(),
                    login: login.clone().unwrap_or_else(|| {
                        SmtpLogin::parse(channel.address.as_str()).expect("an email address is a valid login")
                    }),
                    password: SecretKey::ChannelSmtpPassword(channel.name.clone()),
                },
            };
            Ok(SendAccount { send_as, address: channel.address.clone(), server })
        }
        SendAs::Agent => {
            if !channel.outbound.agent_accounts {
                return Err(RouteError::AgentAccountsNotAllowed(channel.name.clone()));
            }
            let address = agent.workplace_email.clone().ok_or(RouteError::NoWorkplaceEmail)?;
            let server = match &channel.outbound.server {
                // SES signs for verified domains only: the agent's address must be on the channel's.
                OutgoingServer::Internal if address.domain() == channel.address.domain() => AccountServer::Ses,
                OutgoingServer::Internal => {
                    return Err(RouteError::FromMismatch { from: address, account: channel.address.clone() });
                }
                OutgoingServer::Smtp { server, .. } => AccountServer::Smtp {
                    server: server.clone(),
                    login: agent.smtp_login.clone().ok_or(RouteError::NoSmtpLogin)?,
                    password: SecretKey::AgentSmtpPassword(agent.id.clone()),
                },
            };
            Ok(SendAccount { send_as, address, server })
        }
    }
}

/// The From alignment rule: a message goes out only from the address of the account that sends
/// it, so receivers' SPF/DKIM/DMARC checks and Send-As rules hold (field lessons (c) 10).
pub fn check_from(from: &EmailAddress, account: &SendAccount) -> Result<(), RouteError> {
    if from == &account.address {
        Ok(())
    } else {
        Err(RouteError::FromMismatch { from: from.clone(), account: account.address.clone() })
    }
}

// ------------------------------------------------------------------ delivery records

/// Where an outbound message stands. The send worker moves it with conditional writes keyed by
/// our Message-ID, so a redelivered send job never sends twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Recorded and waiting for the send worker.
    Queued,
    /// A worker is sending it (until `lease_until`).
    Sending,
    /// A transient failure; another attempt follows.
    Retrying,
    /// Accepted by the server.
    Sent,
    /// Refused for good (5xx to the message or its recipients). Final.
    Failed,
    /// Could not be sent (retries exhausted, or a configuration problem such as a wrong password);
    /// its job waits in the dead-letter queue for a replay once the cause is fixed.
    Parked,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Retrying => "retrying",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Parked => "parked",
        }
    }
}

/// A server's answer to a failed send, in its own words (`550 5.1.1 <…>: Recipient address
/// rejected`), kept so an agent and an operator can read what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReply {
    pub code: Option<u16>,
    pub text: String,
}

impl fmt::Display for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) if !self.text.starts_with(&code.to_string()) => write!(f, "{code} {}", self.text),
            _ => f.write_str(&self.text),
        }
    }
}

/// One outbound message and its delivery, keyed by our Message-ID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundRecord {
    pub message_id: MessageId,
    pub interaction_id: InteractionId,
    pub channel: ChannelName,
    pub agent: AgentId,
    pub kind: OutboundKind,
    pub send_as: SendAs,
    pub from: EmailAddress,
    /// Envelope recipients (To, Cc, Bcc).
    pub recipients: Vec<EmailAddress>,
    /// The rendered message, in the raw mail store.
    pub raw_key: RawMailKey,
    pub size: usize,
    pub state: DeliveryState,
    pub attempts: u32,
    /// Bumped by every change; writes are conditional on it.
    pub version: u64,
    pub lease_until: Option<DateTime<Utc>>,
    pub last_error: Option<ServerReply>,
    /// The server's acceptance: SMTP `250 …` text or the SES message id.
    pub accepted: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// What the worker may do with a record it picked up.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Send it now (the record, already moved to `Sending`, is to be written conditionally).
    Send(Box<OutboundRecord>),
    /// Another worker holds it until then.
    Busy { until: DateTime<Utc> },
    /// Nothing to do: it is sent or failed for good.
    Finished(DeliveryState),
}

impl OutboundRecord {
    /// Takes the record for one send attempt. `Sending` with an expired lease means an earlier
    /// attempt stopped mid-send: it is tried again, with the same bytes and Message-ID.
    pub fn claim(&self, now: DateTime<Utc>, lease: chrono::Duration) -> Claim {
        match self.state {
            DeliveryState::Sent | DeliveryState::Failed => Claim::Finished(self.state),
            DeliveryState::Sending if self.lease_until.is_some_and(|t| t > now) => {
                Claim::Busy { until: self.lease_until.unwrap_or(now) }
            }
            DeliveryState::Queued | DeliveryState::Retrying | DeliveryState::Parked | DeliveryState::Sending => {
                let mut next = self.clone();
                next.state = DeliveryState::Sending;
                next.attempts += 1;
                next.lease_until = Some(now + lease);
                next.updated_at = now;
                next.version += 1;
                Claim::Send(Box::new(next))
            }
        }
    }

    fn settle(&self, state: DeliveryState, now: DateTime<Utc>) -> Self {
        let mut next = self.clone();
        next.state = state;
        next.lease_until = None;
        next.updated_at = now;
        next.version += 1;
        next
    }

    pub fn sent(&self, accepted: String, now: DateTime<Utc>) -> Self {
        let mut next = self.settle(DeliveryState::Sent, now);
        next.accepted = Some(accepted);
        next.sent_at = Some(now);
        next
    }

    pub fn failed(&self, state: DeliveryState, reply: ServerReply, now: DateTime<Utc>) -> Self {
        let mut next = self.settle(state, now);
        next.last_error = Some(reply);
        next
    }
}

/// The body of a job on the send queue: which message to send. Nothing else travels through
/// the queue (no addresses, no content), so an SQS message stays small and holds no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendJob {
    pub interaction_id: InteractionId,
    pub message_id: MessageId,
}

impl SendJob {
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("send jobs serialize")
    }

    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_behind_api_gateway_fit_its_request_size() {
        let behind = AttachmentLimits::default().behind_gateway();
        assert_eq!((behind.max_count, behind.max_file_bytes, behind.max_total_bytes), (10, 7 << 20, 7 << 20));
        // base64 of the largest total, with room for the JSON around it, stays under 10 MB.
        assert!(behind.max_total_bytes.div_ceil(3) * 4 < 10_000_000 - 100_000);
        let small = AttachmentLimits { max_count: 3, max_file_bytes: 1 << 20, max_total_bytes: 2 << 20 };
        assert_eq!(small.behind_gateway(), small, "lower limits stay as set");
    }

    fn id() -> InteractionId {
        InteractionId::parse("3FMPSZ5629DM").unwrap()
    }

    #[test]
    fn header_text_refuses_line_breaks() {
        for bad in ["Hello\r\nBcc: evil@example.net", "a\nb", "a\rb", "nul\0", "tab\there"] {
            assert!(HeaderText::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(HeaderText::parse("  Order   48213 ").unwrap().as_str(), "Order 48213");
        assert_eq!(HeaderText::lossy("a\r\nBcc: x").as_str(), "a Bcc: x");
        assert!(FileName::parse("../etc/passwd").is_err());
        assert!(FileName::parse("invoice\r\n.pdf").is_err());
        assert!(FileName::parse("facture été.pdf").is_ok());
        assert!(MediaType::parse("application/pdf").is_ok());
        assert!(MediaType::parse("text/html\r\nX: y").is_err());
    }

    #[test]
    fn subjects_carry_the_token_exactly_once() {
        let i = id();
        let s = reply_subject("RE: AW: Order 48213 arrived damaged [MR-3FMPSZ5629DM]", &i);
        assert_eq!(s.as_str(), "Re: Order 48213 arrived damaged [MR-3FMPSZ5629DM]");
        let again = reply_subject(s.as_str(), &i);
        assert_eq!(again, s);
        assert_eq!(forward_subject("Re: Help", &i).as_str(), "Fwd: Help [MR-3FMPSZ5629DM]");
        assert_eq!(
            tagged_subject("Reminder [mr-0000000000AB] [MR-3FMPSZ5629DM]", &i).as_str(),
            "Reminder [MR-3FMPSZ5629DM]"
        );
        assert_eq!(super::super::threading::reference_tokens(s.as_str()), vec![i]);
        assert_eq!(strip_prefixes("Re[2]: Fwd: x"), "x");
        assert_eq!(strip_prefixes("Review: x"), "Review: x");
    }

    #[test]
    fn message_ids_are_ours_and_stable() {
        let a = outbound_message_id(&id(), "seed", "example.com");
        assert_eq!(a, outbound_message_id(&id(), "seed", "example.com"));
        assert_ne!(a, outbound_message_id(&id(), "other", "example.com"));
        assert!(a.as_str().ends_with("@example.com") && a.as_str().starts_with("mr.3fmpsz5629dm."));
    }

    #[test]
    fn thread_index_round_trips_through_the_conversation_key() {
        let now = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().with_timezone(&Utc);
        let root = ThreadIndex::new_conversation(now, "a@b");
        assert_eq!(root.0.len(), 22);
        assert_eq!(root.0[0], 0x01, "FILETIME's top byte in this century");
        let key = root.conversation_key();
        assert_eq!(ThreadIndex::root_of_key(&key), Some(root.root()));
        let reply = ThreadIndex::reply(&root.root(), now + chrono::Duration::hours(2), "c@d");
        assert_eq!(reply.0.len(), 27);
        assert_eq!(reply.root(), root.root());
        let decoded = base64::engine::general_purpose::STANDARD.decode(reply.to_header()).unwrap();
        assert_eq!(decoded, reply.0);
    }

    #[test]
    fn references_keep_the_root_and_the_newest() {
        let ids: Vec<MessageId> = (0..30).map(|n| MessageId::parse(&format!("m{n}@x")).unwrap()).collect();
        let refs = references(&ids);
        assert_eq!(refs.len(), 20);
        assert_eq!(refs[0].as_str(), "m0@x");
        assert_eq!(refs[19].as_str(), "m29@x");
    }

    #[test]
    fn attachments_are_limited() {
        let limits = AttachmentLimits { max_count: 2, max_file_bytes: 10, max_total_bytes: 15 };
        let a = |n: usize| OutboundAttachment {
            file_name: FileName::parse("a.bin").unwrap(),
            content_type: MediaType::octet_stream(),
            data: vec![0; n],
        };
        assert!(limits.check(&[a(10)], 0).is_ok());
        assert!(matches!(limits.check(&[a(11)], 0), Err(AttachmentError::FileTooLarge { .. })));
        assert!(matches!(limits.check(&[a(8), a(8)], 0), Err(AttachmentError::TotalTooLarge { .. })));
        assert!(matches!(limits.check(&[a(1), a(1), a(1)], 0), Err(AttachmentError::TooMany { .. })));
        assert!(matches!(limits.check(&[a(1)], 15), Err(AttachmentError::TotalTooLarge { .. })));
    }

    fn channel(outbound: ChannelOutbound) -> SendingChannel {
        SendingChannel {
            name: ChannelName::parse("support").unwrap(),
            address: EmailAddress::parse("support@example.com").unwrap(),
            display_name: None,
            default_queue: QueueName::parse("support").unwrap(),
            enabled: true,
            outbound,
        }
    }

    #[test]
    fn accounts_and_from_alignment() {
        let smtp = OutgoingServer::Smtp {
            server: SmtpServer {
                host: HostName::parse("smtp.example.com").unwrap(),
                port: 587,
                security: SmtpSecurity::Starttls,
            },
            login: None,
        };
        let agent = AgentIdentity {
            id: AgentId::parse("ana").unwrap(),
            workplace_email: Some(EmailAddress::parse("ana@example.com").unwrap()),
            smtp_login: Some(SmtpLogin::parse("ana").unwrap()),
        };
        let c = channel(ChannelOutbound { server: smtp.clone(), agent_accounts: false });
        let account = resolve_account(&c, SendAs::Channel, &agent).unwrap();
        assert_eq!(account.address.as_str(), "support@example.com");
        assert!(
            matches!(&account.server, AccountServer::Smtp { login, .. } if login.as_str() == "support@example.com")
        );
        assert_eq!(
            resolve_account(&c, SendAs::Agent, &agent),
            Err(RouteError::AgentAccountsNotAllowed(c.name.clone()))
        );
        let c = channel(ChannelOutbound { server: smtp, agent_accounts: true });
        let account = resolve_account(&c, SendAs::Agent, &agent).unwrap();
        assert!(check_from(&EmailAddress::parse("ana@example.com").unwrap(), &account).is_ok());
        assert!(matches!(
            check_from(&EmailAddress::parse("support@example.com").unwrap(), &account),
            Err(RouteError::FromMismatch { .. })
        ));
        let ses = channel(ChannelOutbound { server: OutgoingServer::Internal, agent_accounts: true });
        let other = AgentIdentity { workplace_email: Some(EmailAddress::parse("ana@gmail.com").unwrap()), ..agent };
        assert!(matches!(resolve_account(&ses, SendAs::Agent, &other), Err(RouteError::FromMismatch { .. })));
    }

    #[test]
    fn a_redelivered_job_finds_the_message_sent() {
        let now = Utc::now();
        let record = OutboundRecord {
            message_id: MessageId::parse("m@example.com").unwrap(),
            interaction_id: id(),
            channel: ChannelName::parse("support").unwrap(),
            agent: AgentId::parse("ana").unwrap(),
            kind: OutboundKind::Reply,
            send_as: SendAs::Channel,
            from: EmailAddress::parse("support@example.com").unwrap(),
            recipients: vec![],
            raw_key: RawMailKey::of(b"x"),
            size: 1,
            state: DeliveryState::Queued,
            attempts: 0,
            version: 1,
            lease_until: None,
            last_error: None,
            accepted: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
        };
        let Claim::Send(sending) = record.claim(now, chrono::Duration::minutes(2)) else { panic!() };
        assert_eq!((sending.state, sending.attempts, sending.version), (DeliveryState::Sending, 1, 2));
        assert!(matches!(sending.claim(now, chrono::Duration::minutes(2)), Claim::Busy { .. }));
        let Claim::Send(again) = sending.claim(now + chrono::Duration::minutes(3), chrono::Duration::minutes(2)) else {
            panic!("an expired lease is taken over")
        };
        assert_eq!(again.attempts, 2);
        let sent = sending.sent("250 ok".into(), now);
        assert_eq!(sent.claim(now, chrono::Duration::minutes(2)), Claim::Finished(DeliveryState::Sent));
    }
}
