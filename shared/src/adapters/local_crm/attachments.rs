//! Reads a stored message's attachments back from its raw bytes (S3 or the embedded store), in
//! the order the MIME adapter listed them when the message was ingested.

use std::sync::Arc;

use async_trait::async_trait;
use mail_parser::MimeHeaders;

use crate::adapters::mime::strip_mbox_separator;
use crate::domain::interaction::StoredMessage;
use crate::ports::crm::{AttachmentContent, AttachmentSource};
use crate::ports::{BackendError, BackendResult, RawMailStore};

pub struct MimeAttachments {
    raw: Arc<dyn RawMailStore>,
}

impl MimeAttachments {
    pub fn new(raw: Arc<dyn RawMailStore>) -> Self {
        Self { raw }
    }
}

#[async_trait]
impl AttachmentSource for MimeAttachments {
    async fn attachments(&self, message: &StoredMessage) -> BackendResult<Vec<AttachmentContent>> {
        if message.attachments.is_empty() {
            return Ok(Vec::new());
        }
        let raw = self
            .raw
            .get(&message.raw_key)
            .await?
            .ok_or_else(|| BackendError::permanent("read attachments", "the raw message is missing"))?;
        let parsed = mail_parser::MessageParser::default()
            .parse(strip_mbox_separator(&raw))
            .ok_or_else(|| BackendError::permanent("read attachments", "the raw message no longer parses"))?;
        let contents = parsed
            .attachments()
            .enumerate()
            .map(|(i, part)| {
                let listed = message.attachments.get(i);
                AttachmentContent {
                    file_name: part
                        .attachment_name()
                        .map(str::to_owned)
                        .or_else(|| listed.and_then(|a| a.file_name.clone()))
                        .unwrap_or_else(|| format!("attachment-{}", i + 1)),
                    mime_type: listed.map(|a| a.content_type.clone()).unwrap_or_else(|| {
                        part.content_type()
                            .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_ascii_lowercase())
                            .unwrap_or_else(|| "application/octet-stream".into())
                    }),
                    bytes: part.contents().to_vec(),
                }
            })
            .collect();
        Ok(contents)
    }
}
