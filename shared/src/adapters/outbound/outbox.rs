//! The "internal server" of `mailroom serve`: there is no Amazon SES locally, so mail for the
//! internal route is written to an outbox directory, one `.eml` file per message, for a person
//! (or a test) to open. Each file is written atomically (a temporary file, then a rename) and is
//! named from the message's Message-ID, so a redelivered send job overwrites its own file instead
//! of adding a second copy.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::domain::outbound::ServerReply;
use crate::ports::outbound::{Accepted, MailEnvelope, MailSender, Route, SendError};

/// Writes each message to `<dir>/<message-id>.eml`, with the SMTP envelope prepended as
/// `Return-Path` and `X-Mailroom-Envelope-To` headers (Bcc recipients appear only there).
#[derive(Debug, Clone)]
pub struct OutboxSender {
    dir: PathBuf,
}

impl OutboxSender {
    /// The outbox of a data directory: `<data_dir>/outbox`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self::new(data_dir.join("outbox"))
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a message is (or would be) written to.
    pub fn path_for(&self, raw: &[u8]) -> PathBuf {
        self.dir.join(file_name(raw))
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> SendError {
    SendError::Transient {
        reply: ServerReply { code: None, text: format!("cannot {what} {}: {e}", path.display()) },
        source: Some(Box::new(e)),
    }
}

/// The value of the first `Message-ID` header of the header section, unfolded.
fn message_id(raw: &[u8]) -> Option<String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| raw.windows(2).position(|w| w == b"\n\n"));
    let head = String::from_utf8_lossy(&raw[..end.unwrap_or(raw.len())]).into_owned();
    let mut lines = head.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else { continue };
        if !name.trim().eq_ignore_ascii_case("message-id") {
            continue;
        }
        let mut value = value.trim().to_owned();
        while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
            value.push_str(next.trim());
            lines.next();
        }
        let value = value.trim_start_matches('<').trim_end_matches('>').to_owned();
        return (!value.is_empty()).then_some(value);
    }
    None
}

/// A safe file name: the Message-ID with anything but letters, digits and `.@_+-` replaced, or
/// the message's SHA-256 when it has no Message-ID.
fn file_name(raw: &[u8]) -> String {
    let stem = match message_id(raw) {
        Some(id) => {
            let safe: String = id
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._@+-".contains(c) { c } else { '_' })
                .take(200)
                .collect();
            safe.trim_start_matches('.').to_owned()
        }
        None => String::new(),
    };
    if stem.is_empty() { format!("{}.eml", hex::encode(Sha256::digest(raw))) } else { format!("{stem}.eml") }
}

fn with_envelope(envelope: &MailEnvelope, raw: &[u8]) -> Vec<u8> {
    let recipients = envelope.recipients.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
    let mut out =
        format!("Return-Path: <{}>\r\nX-Mailroom-Envelope-To: {recipients}\r\n", envelope.from.as_str()).into_bytes();
    out.extend_from_slice(raw);
    out
}

#[async_trait]
impl MailSender for OutboxSender {
    async fn send(&self, _route: &Route, envelope: &MailEnvelope, raw: &[u8]) -> Result<Accepted, SendError> {
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| io_error("create", &self.dir, e))?;
        let path = self.path_for(raw);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("message.eml").to_owned();
        let temp = self.dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let bytes = with_envelope(envelope, raw);
        let written = async {
            tokio::fs::write(&temp, &bytes).await.map_err(|e| io_error("write", &temp, e))?;
            tokio::fs::rename(&temp, &path).await.map_err(|e| io_error("rename into", &path, e))
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        written?;
        tracing::info!(path = %path.display(), recipients = envelope.recipients.len(), "message written to the outbox");
        Ok(Accepted { response: format!("250 written to {}", path.display()) })
    }

    async fn check(&self, _route: &Route) -> Result<String, SendError> {
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| io_error("create", &self.dir, e))?;
        let probe = self.dir.join(format!(".probe.{}.tmp", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&probe, b"").await.map_err(|e| io_error("write to", &self.dir, e))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(format!("the outbox {} is writable (internal server)", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::EmailAddress;

    fn envelope() -> MailEnvelope {
        MailEnvelope {
            from: EmailAddress::parse("support@example.com").unwrap(),
            recipients: vec![EmailAddress::parse("alice@example.org").unwrap()],
        }
    }

    #[tokio::test]
    async fn writes_one_file_per_message_id_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = OutboxSender::in_data_dir(dir.path());
        let raw =
            b"From: support@example.com\r\nMessage-ID:\r\n <mr.abc/1@example.com>\r\nSubject: hi\r\n\r\nhello\r\n";
        let accepted = outbox.send(&Route::Ses, &envelope(), raw).await.unwrap();
        assert!(accepted.response.starts_with("250 "), "{}", accepted.response);
        // A redelivered send overwrites its own file.
        outbox.send(&Route::Ses, &envelope(), raw).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(outbox.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].to_str(), Some("mr.abc_1@example.com.eml"));
        let text = std::fs::read_to_string(outbox.dir().join("mr.abc_1@example.com.eml")).unwrap();
        assert!(
            text.starts_with("Return-Path: <support@example.com>\r\nX-Mailroom-Envelope-To: alice@example.org\r\n")
        );
        assert!(text.ends_with("hello\r\n"));
        assert!(outbox.check(&Route::Ses).await.unwrap().contains("writable"));
    }

    #[test]
    fn names_without_a_message_id_come_from_the_content() {
        assert_eq!(file_name(b"Subject: x\r\n\r\nMessage-ID: <not@header>\r\n").len(), 64 + 4);
        assert_eq!(file_name(b"message-id: <../../etc/passwd>\n\nx"), "_.._etc_passwd.eml");
    }
}
