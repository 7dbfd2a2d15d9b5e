//! Renders an [`OutboundEmail`] to RFC 5322 bytes with lettre's message builder.
//!
//! lettre encodes non-ASCII header text (RFC 2047), folds long headers and picks each body part's
//! transfer encoding. Header values reach it only as validated domain values (no line breaks), so
//! nothing a user typed can add a header.

use std::time::SystemTime;

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};

use crate::domain::ids::EmailAddress;
use crate::domain::outbound::{ORIGIN_HEADER, OutboundEmail, OutboundMailbox};
use crate::ports::outbound::{MessageRenderer, RenderError};

#[derive(Debug, Default, Clone)]
pub struct LettreRenderer;

fn error(reason: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RenderError {
    RenderError { reason: reason.into(), source: Some(source.into()) }
}

fn address(a: &EmailAddress) -> Result<Address, RenderError> {
    a.as_str().parse::<Address>().map_err(|e| error("an address cannot be written into a header", e))
}

fn mailbox(m: &OutboundMailbox) -> Result<Mailbox, RenderError> {
    Ok(Mailbox::new(m.name.as_ref().map(|n| n.as_str().to_owned()), address(&m.address)?))
}

fn header(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}

/// The bytes with every bare LF made CRLF (RFC 5322 line ends), e.g. an original stored from a
/// file with Unix line endings.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut previous = 0u8;
    for &b in raw {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    out
}

impl MessageRenderer for LettreRenderer {
    fn render(&self, email: &OutboundEmail) -> Result<Vec<u8>, RenderError> {
        let mut b = Message::builder()
            .from(mailbox(&email.from)?)
            .subject(email.subject.as_str())
            .date(SystemTime::from(email.date))
            .message_id(Some(email.message_id.bracketed()));
        for m in &email.to {
            b = b.to(mailbox(m)?);
        }
        for m in &email.cc {
            b = b.cc(mailbox(m)?);
        }
        if let Some(parent) = &email.in_reply_to {
            b = b.in_reply_to(parent.bracketed());
        }
        if !email.references.is_empty() {
            b = b.references(email.references.iter().map(|r| r.bracketed()).collect::<Vec<_>>().join(" "));
        }
        b = b
            .raw_header(header("Thread-Index", email.thread_index.to_header()))
            .raw_header(header("Thread-Topic", email.thread_topic.as_str().to_owned()))
            .raw_header(header(ORIGIN_HEADER, email.origin_header()));
        if email.kind.is_automatic() {
            // RFC 3834: auto-responders must not answer; Exchange honours the second header.
            b = b
                .raw_header(header("Auto-Submitted", "auto-generated".into()))
                .raw_header(header("X-Auto-Response-Suppress", "All".into()));
        }
        let recipients = email.envelope_recipients().iter().map(address).collect::<Result<Vec<_>, _>>()?;
        let envelope = lettre::address::Envelope::new(Some(address(&email.from.address)?), recipients)
            .map_err(|e| error("the message has no recipient", e))?;
        b = b.envelope(envelope);

        let text = SinglePart::plain(email.text_body.clone());
        let alternative = email
            .html_body
            .as_ref()
            .map(|html| MultiPart::alternative().singlepart(text.clone()).singlepart(SinglePart::html(html.clone())));
        let message = if email.attachments.is_empty() && email.forwarded.is_none() {
            match alternative {
                Some(alternative) => b.multipart(alternative),
                None => b.singlepart(text),
            }
        } else {
            let mut mixed = match alternative {
                Some(alternative) => MultiPart::mixed().multipart(alternative),
                None => MultiPart::mixed().singlepart(text),
            };
            if let Some(original) = &email.forwarded {
                // RFC 2046 5.2.1: message/rfc822 may only be 7bit or 8bit; base64 only when the
                // original cannot be carried as it is (lines over 998 bytes, NULs).
                let content = Body::new_with_encoding(crlf(&original.raw), ContentTransferEncoding::EightBit)
                    .unwrap_or_else(|raw| {
                        Body::new_with_encoding(raw, ContentTransferEncoding::Base64).expect("base64 carries anything")
                    });
                let content_type = ContentType::parse("message/rfc822").expect("static content type");
                mixed = mixed
                    .singlepart(Attachment::new(original.file_name.as_str().to_owned()).body(content, content_type));
            }
            for a in &email.attachments {
                let content_type = ContentType::parse(a.content_type.as_str())
                    .map_err(|e| error("an attachment's content type cannot be written", e))?;
                // Always base64: lettre would send ASCII-looking bytes as 7bit, bare LFs and all,
                // and a server then sees one overlong line (aiosmtpd: "500 Line too long").
                let content = Body::new_with_encoding(a.data.clone(), ContentTransferEncoding::Base64)
                    .expect("base64 carries anything");
                mixed = mixed.singlepart(Attachment::new(a.file_name.as_str().to_owned()).body(content, content_type));
            }
            b.multipart(mixed)
        }
        .map_err(|e| error("the message is incomplete", e))?;
        Ok(message.formatted())
    }
}
