//! The parsed view of an inbound email that the use cases work with.
//!
//! It is built by the MIME adapter from the raw bytes and names no MIME-library type, so the
//! screening, threading and routing rules can be tested with plain values.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{EmailAddress, MessageId};

/// A display name with its address, as in `"Renée Dubois" <renee@example.org>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub address: EmailAddress,
    pub name: Option<String>,
}

/// The envelope sender the receiving MTA recorded in `Return-Path`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReturnPath {
    /// No `Return-Path` header (e.g. a file dropped into the CLI).
    #[default]
    Absent,
    /// `Return-Path: <>`: the null reverse-path that RFC 5321 reserves for bounces and other
    /// automatic notifications.
    Null,
    Address(String),
}

/// Metadata of an attachment; the bytes stay in the raw message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub file_name: Option<String>,
    pub content_type: String,
    pub size: usize,
}

#[derive(Debug, Clone, Default)]
pub struct ParsedEmail {
    /// False when the bytes have no header fields at all: not an email.
    pub has_headers: bool,
    pub message_id: Option<MessageId>,
    pub in_reply_to: Vec<MessageId>,
    pub references: Vec<MessageId>,
    /// Outlook's conversation (the 22-byte root of `Thread-Index`) as a synthetic id, so replies
    /// whose `In-Reply-To`/`References` a gateway stripped still find their conversation.
    pub conversation_key: Option<MessageId>,
    pub from: Option<Mailbox>,
    /// The `From` header as written, kept when it holds no usable address (for the quarantine reason).
    pub from_raw: Option<String>,
    pub sender: Option<Mailbox>,
    pub reply_to: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    /// Addresses from `Delivered-To`/`X-Original-To`, which name the mailbox that received it.
    pub delivered_to: Vec<EmailAddress>,
    pub subject: String,
    pub date: Option<DateTime<Utc>>,
    pub return_path: ReturnPath,
    /// `type/subtype` of the top-level part, lower-case.
    pub content_type: String,
    /// The `report-type` parameter of a `multipart/report`, lower-case.
    pub report_type: Option<String>,
    /// Whether any part is a `message/delivery-status` (or its SMTPUTF8 form), wherever it sits:
    /// some MTAs wrap their DSN in `multipart/mixed`.
    pub has_delivery_status_part: bool,
    /// Header fields the screening rules look at, name lower-case, value decoded and trimmed.
    pub screening_headers: Vec<(String, String)>,
    pub text_body: String,
    /// Whether an HTML body exists. The HTML itself stays in the raw message; it is read, and
    /// sanitized, only when someone displays it.
    pub has_html: bool,
    pub attachments: Vec<AttachmentInfo>,
    /// Why the decoded text may not be faithful (unknown charset, undecodable bytes, broken MIME).
    /// The raw message is always kept, so an agent can still open the original.
    pub degraded: Vec<String>,
}

impl ParsedEmail {
    /// Every value of a screening header, by lower-case name.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.screening_headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.screening_headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn is_degraded(&self) -> bool {
        !self.degraded.is_empty()
    }

    /// The ids this message answers, most specific first: `In-Reply-To`, then `References` from
    /// the newest (last) to the root.
    pub fn thread_parents(&self) -> Vec<MessageId> {
        let mut out: Vec<MessageId> = Vec::new();
        let all = self.in_reply_to.iter().chain(self.references.iter().rev()).chain(self.conversation_key.iter());
        for id in all {
            if !out.contains(id) {
                out.push(id.clone());
            }
        }
        out
    }
}

/// The names of the header fields the MIME adapter must copy into `screening_headers`.
pub const SCREENING_HEADERS: &[&str] = &[
    "auto-submitted",
    "x-auto-response-suppress",
    "x-autoreply",
    "x-autorespond",
    "x-autoresponder",
    "precedence",
    "list-id",
    "list-post",
    "x-spam-flag",
    "x-ses-spam-verdict",
    "x-ses-virus-verdict",
    "x-loop",
    "x-mailroom-origin",
    "x-ms-exchange-inbox-rules-loop",
    "x-ms-exchange-generated-message-source",
];
