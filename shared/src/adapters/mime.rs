//! The MIME adapter: mail-parser turns raw bytes into the domain's `ParsedEmail`.
//!
//! mail-parser never rejects input; this adapter adds what a helpdesk needs on top: a
//! `degraded` note wherever text may not be faithful, and a second chance for parts whose charset
//! label is missing or bogus (valid UTF-8 first, then windows-1252, which is what such mail
//! almost always is), instead of the mojibake other helpdesks store (field lessons 41-44).

use std::borrow::Cow;

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Address, Encoding, HeaderValue, Message, MessagePart, MimeHeaders, PartType};

use crate::domain::email::{AttachmentInfo, Mailbox, ParsedEmail, ReturnPath, SCREENING_HEADERS};
use crate::domain::ids::{EmailAddress, MessageId};
use crate::ports::MessageParser;

/// Header fields whose presence shows the bytes are an email at all.
const EMAIL_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "received",
    "return-path",
    "mime-version",
    "content-type",
    "sender",
    "reply-to",
    "delivered-to",
];

/// The mail-parser adapter. Holds one `mail_parser::MessageParser`, built once.
pub struct MailParserAdapter {
    parser: mail_parser::MessageParser,
}

impl Default for MailParserAdapter {
    fn default() -> Self {
        // Only the headers ingest reads are parsed into structures; the rest (`Received` above
        // all, several per message, whose tokenizing was over half the parse time on real mail)
        // stay raw. Screening reads header values from the raw bytes anyway.
        let parser = mail_parser::MessageParser::new()
            .with_mime_headers()
            .with_date_headers()
            .with_address_headers()
            .with_message_ids()
            .header_text(mail_parser::HeaderName::Subject)
            .default_header_raw();
        Self { parser }
    }
}

impl MessageParser for MailParserAdapter {
    fn parse(&self, raw: &[u8]) -> ParsedEmail {
        let raw = strip_mbox_separator(raw);
        match self.parser.parse(raw) {
            Some(message) => convert(&message, raw),
            None => ParsedEmail { has_headers: false, ..Default::default() },
        }
    }
}

/// Drops a leading mbox `From ` separator line, as found in mail exported from mbox files.
pub fn strip_mbox_separator(raw: &[u8]) -> &[u8] {
    if raw.starts_with(b"From ")
        && let Some(end) = raw.iter().position(|&b| b == b'\n')
    {
        return &raw[end + 1..];
    }
    raw
}

fn convert(message: &Message<'_>, raw: &[u8]) -> ParsedEmail {
    let mut email = ParsedEmail::default();
    let root = message.root_part();

    for header in &root.headers {
        let name = header.name();
        let is = |list: &[&str]| list.iter().any(|h| name.eq_ignore_ascii_case(h));
        if !email.has_headers && is(EMAIL_HEADERS) {
            email.has_headers = true;
        }
        if !is(SCREENING_HEADERS) && !is(&["return-path", "delivered-to", "x-original-to", "thread-index"]) {
            continue;
        }
        let name = name.to_ascii_lowercase();
        let value = raw_value(raw, header.offset_start() as usize, header.offset_end() as usize);
        match name.as_str() {
            "return-path" => {
                // The topmost Return-Path is the one the final MTA wrote.
                if email.return_path == ReturnPath::Absent {
                    let inner = value.trim().trim_start_matches('<').trim_end_matches('>').trim();
                    email.return_path =
                        if inner.is_empty() { ReturnPath::Null } else { ReturnPath::Address(inner.to_owned()) };
                }
            }
            "thread-index" => {
                // Base64 of a 22-byte root (FILETIME + GUID) plus 5 bytes per reply.
                if let Some(bytes) = base64_decode(value.trim().as_bytes())
                    && bytes.len() >= 22
                {
                    email.conversation_key = Some(MessageId::for_outlook_conversation(&bytes[..22]));
                }
            }
            "delivered-to" | "x-original-to" => {
                if let Ok(a) = EmailAddress::parse(&value) {
                    email.delivered_to.push(a);
                }
            }
            _ => email.screening_headers.push((name, value)),
        }
    }

    email.message_id = message.message_id().and_then(|id| MessageId::parse(id).ok());
    email.in_reply_to = ids(message.in_reply_to());
    email.references = ids(message.references());
    let (from, from_raw) = first_mailbox(message.from());
    email.from = from;
    email.from_raw = from_raw.or_else(|| message.header_raw("From").map(|s| s.trim().to_owned()));
    email.sender = first_mailbox(message.sender()).0;
    email.reply_to = first_mailbox(message.reply_to()).0;
    email.to = mailboxes(message.to());
    email.cc = mailboxes(message.cc());
    email.subject = message.subject().map(|s| nfc(unfold(s))).unwrap_or_default();
    if email.subject.contains('\u{FFFD}') {
        email.degraded.push("the subject has bytes that could not be decoded".into());
    }
    email.date = message.date().and_then(|d| chrono::DateTime::from_timestamp(d.to_timestamp(), 0));

    if let Some(ct) = root.content_type() {
        email.content_type = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase();
        email.report_type = ct.attribute("report-type").map(|s| s.to_ascii_lowercase());
    } else {
        email.content_type = "text/plain".into();
    }

    email.has_delivery_status_part = message.parts.iter().any(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("delivery-status") || s.eq_ignore_ascii_case("global-delivery-status")
                })
        })
    });

    let mut text = String::new();
    for (i, part_id) in message.text_body.iter().enumerate() {
        let Some(part) = message.parts.get(*part_id as usize) else { continue };
        let body = match &part.body {
            PartType::Text(t) => repair_text(part, t, raw, i, &mut email.degraded),
            PartType::Html(_) => message.body_text(i).map(Cow::into_owned).unwrap_or_default(),
            _ => continue,
        };
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&body);
    }
    email.text_body = nfc(text);
    if let Some(html_id) = message.html_body.first()
        && let Some(part) = message.parts.get(*html_id as usize)
        && let PartType::Html(h) = &part.body
    {
        email.has_html = true;
        check_charset(part, h, 0, &mut email.degraded);
    }
    for part in message.attachments() {
        email.attachments.push(AttachmentInfo {
            file_name: part.attachment_name().map(str::to_owned),
            content_type: part
                .content_type()
                .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase())
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: part.contents().len(),
        });
    }
    if message.parts.iter().any(|p| p.is_encoding_problem) {
        email.degraded.push(
            "the MIME structure is broken (e.g. a missing boundary); text was recovered as well as possible".into(),
        );
    }
    email
}

fn raw_value(raw: &[u8], start: usize, end: usize) -> String {
    let bytes = raw.get(start..end.min(raw.len())).unwrap_or_default();
    unfold(&String::from_utf8_lossy(bytes))
}

/// Joins folded header lines and trims, so values compare and display as one line.
fn unfold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_space = false;
    for c in s.trim().chars() {
        if c == '\r' || c == '\n' || c == '\t' || c == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out
}

fn ids(value: &HeaderValue<'_>) -> Vec<MessageId> {
    match value {
        HeaderValue::Text(t) => MessageId::parse(t).into_iter().collect(),
        HeaderValue::TextList(list) => list.iter().filter_map(|t| MessageId::parse(t).ok()).collect(),
        _ => Vec::new(),
    }
}

fn mailbox(name: Option<&str>, address: Option<&str>) -> Option<Mailbox> {
    let address = EmailAddress::parse(address?).ok()?;
    let name = name
        .map(|n| unfold(n).trim_matches(|c| c == '"' || c == '\'').trim().to_owned())
        .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case(address.as_str()));
    Some(Mailbox { address, name })
}

fn first_mailbox(addr: Option<&Address<'_>>) -> (Option<Mailbox>, Option<String>) {
    let Some(addr) = addr else { return (None, None) };
    let first = addr.iter().find_map(|a| mailbox(a.name(), a.address()));
    let raw =
        if first.is_none() { addr.first().and_then(|a| a.name().or(a.address())).map(str::to_owned) } else { None };
    (first, raw)
}

fn mailboxes(addr: Option<&Address<'_>>) -> Vec<Mailbox> {
    addr.map(|a| a.iter().filter_map(|a| mailbox(a.name(), a.address())).collect()).unwrap_or_default()
}

/// Composes text to NFC: windows-1258 (Vietnamese) and some Mac mail decode to combining
/// sequences that agents' screens and searches expect composed.
fn nfc(text: String) -> String {
    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
    // Combining diacritics (U+0300-U+036F, lead bytes 0xCC/0xCD) are what mail decodes to in
    // practice; text without them is left alone without scanning every character.
    if memchr::memchr2(0xCC, 0xCD, text.as_bytes()).is_none() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        text
    } else {
        text.nfc().collect()
    }
}

fn is_utf8_label(label: &str) -> bool {
    let l = label.trim().to_ascii_lowercase();
    matches!(l.as_str(), "utf-8" | "utf8" | "unicode-1-1-utf-8")
}

/// Labels that promise 7-bit text. mail-parser maps them to windows-1252, but 8-bit bytes under
/// such a label are far more often UTF-8 from a client that mislabelled it.
fn is_ascii_label(label: &str) -> bool {
    let l = label.trim().to_ascii_lowercase();
    matches!(l.as_str(), "us-ascii" | "ascii" | "ansi_x3.4-1968" | "iso646-us")
}

fn check_charset(part: &MessagePart<'_>, text: &str, index: usize, degraded: &mut Vec<String>) {
    let label = part.content_type().and_then(|ct| ct.attribute("charset"));
    if let Some(label) = label
        && !is_utf8_label(label)
        && !is_ascii_label(label)
        && charset_decoder(label.as_bytes()).is_none()
    {
        degraded.push(format!(
            "text part {index} declares an unknown charset {:?}",
            label.chars().take(40).collect::<String>()
        ));
    }
    if text.contains('\u{FFFD}') {
        degraded.push(format!("text part {index} has bytes that are not valid in its charset"));
    }
}

/// Returns the text of a plain-text part, re-decoding it when its charset label is missing,
/// wrong or unknown: valid UTF-8 first, then windows-1252, and says so in `degraded`.
fn repair_text(part: &MessagePart<'_>, text: &str, raw: &[u8], index: usize, degraded: &mut Vec<String>) -> String {
    let label = part.content_type().and_then(|ct| ct.attribute("charset"));
    let trusted = match label {
        Some(l) if is_ascii_label(l) => false,
        Some(l) if is_utf8_label(l) => !text.contains('\u{FFFD}'),
        Some(l) => charset_decoder(l.as_bytes()).is_some(),
        None => !text.contains('\u{FFFD}'),
    };
    if trusted {
        check_charset(part, text, index, degraded);
        return text.to_owned();
    }
    let Some(bytes) = transfer_decoded(part, raw) else {
        check_charset(part, text, index, degraded);
        return text.to_owned();
    };
    if bytes.is_ascii() {
        return String::from_utf8(bytes).unwrap_or_default();
    }
    let shown = label.map(|l| l.chars().take(40).collect::<String>()).unwrap_or_else(|| "none".into());
    match String::from_utf8(bytes) {
        Ok(s) => {
            degraded.push(format!(
                "text part {index}: declared charset {shown:?} does not fit its bytes; decoded as UTF-8"
            ));
            s
        }
        Err(e) => {
            let (s, _, _) = encoding_rs::WINDOWS_1252.decode(e.as_bytes());
            degraded.push(format!(
                "text part {index}: declared charset {shown:?} does not fit its bytes; decoded as windows-1252"
            ));
            s.into_owned()
        }
    }
}

fn transfer_decoded(part: &MessagePart<'_>, raw: &[u8]) -> Option<Vec<u8>> {
    let body = raw.get(part.offset_body as usize..part.offset_end as usize)?;
    match part.encoding {
        Encoding::None => Some(body.to_vec()),
        Encoding::QuotedPrintable => quoted_printable_decode(body),
        Encoding::Base64 => base64_decode(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> ParsedEmail {
        MailParserAdapter::default().parse(raw)
    }

    #[test]
    fn basic_fields() {
        let e = parse(
            b"From: =?iso-8859-1?q?Ren=E9e?= <Renee@Example.org>\r\nTo: support@example.com\r\nSubject: Hello\r\n there\r\nMessage-ID: <a@b>\r\nIn-Reply-To: <x@y>\r\nReferences: <r1@y> <x@y>\r\nReturn-Path: <>\r\nAuto-Submitted: auto-replied\r\n\r\nBody\r\n",
        );
        assert!(e.has_headers);
        let from = e.from.clone().unwrap();
        assert_eq!(from.address.as_str(), "renee@example.org");
        assert_eq!(from.name.as_deref(), Some("Renée"));
        assert_eq!(e.subject, "Hello there");
        assert_eq!(e.message_id.as_ref().unwrap().as_str(), "a@b");
        assert_eq!(e.return_path, ReturnPath::Null);
        assert_eq!(e.header("auto-submitted"), Some("auto-replied"));
        assert_eq!(e.text_body.trim(), "Body");
        assert!(e.degraded.is_empty(), "{:?}", e.degraded);
    }

    #[test]
    fn not_an_email() {
        assert!(!parse(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").has_headers);
        assert!(!parse(b"").has_headers);
        assert!(!parse(b"{\"json\": true}").has_headers);
    }

    #[test]
    fn bogus_charset_is_recovered_and_flagged() {
        let e = parse(b"From: a@example.org\r\nContent-Type: text/plain; charset=x-bogus\r\n\r\ncaf\xe9\r\n");
        assert_eq!(e.text_body.trim(), "café");
        assert!(e.is_degraded());
        let e = parse(b"From: a@example.org\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\ncaf\xc3\xa9\r\n");
        assert_eq!(e.text_body.trim(), "café");
        assert!(e.is_degraded());
        let e = parse(b"From: a@example.org\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain\r\n");
        assert!(!e.is_degraded());
    }

    #[test]
    fn legacy_charsets_decode() {
        let e = parse(b"From: a@example.org\r\nContent-Type: text/plain; charset=windows-1258\r\n\r\nIt\x92s\r\n");
        assert_eq!(e.text_body.trim(), "It\u{2019}s");
        assert!(e.degraded.is_empty(), "{:?}", e.degraded);
    }

    #[test]
    fn mbox_separator_is_dropped() {
        let e = parse(b"From alice@example.org Mon Jan  1 00:00:00 2002\nFrom: alice@example.org\nSubject: x\n\nhi\n");
        assert_eq!(e.from.unwrap().address.as_str(), "alice@example.org");
    }
}
