//! Sending through Amazon SES (SESv2 `SendEmail` with raw content), the "internal server".
//!
//! The raw bytes go as they are, so our Message-ID, threading headers and `X-Mailroom-Origin`
//! reach the customer (SES keeps a Message-ID it is given). The destination list is the envelope,
//! which is how Bcc recipients get their copy.

use async_trait::async_trait;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, RawMessage};

use crate::adapters::aws::is_transient;
use crate::domain::outbound::ServerReply;
use crate::ports::outbound::{Accepted, MailEnvelope, MailSender, Route, SendError};

#[derive(Clone, Debug)]
pub struct SesSender {
    client: aws_sdk_sesv2::Client,
}

impl SesSender {
    pub fn new(client: aws_sdk_sesv2::Client) -> Self {
        Self { client }
    }
}

fn words<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, aws_sdk_sesv2::config::http::HttpResponse>,
) -> ServerReply {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let text = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        (None, Some(message)) => message.to_owned(),
        (None, None) => aws_sdk_sesv2::error::DisplayErrorContext(err).to_string(),
    };
    ServerReply { code: status, text }
}

#[async_trait]
impl MailSender for SesSender {
    async fn send(&self, route: &Route, envelope: &MailEnvelope, raw: &[u8]) -> Result<Accepted, SendError> {
        if !matches!(route, Route::Ses) {
            return Err(SendError::configuration("the SES sender was given a route that is not SES"));
        }
        let raw = RawMessage::builder().data(Blob::new(raw)).build().map_err(|e| SendError::Rejected {
            reply: ServerReply { code: None, text: "the message cannot be handed to SES".into() },
            source: Some(e.into()),
        })?;
        let result = self
            .client
            .send_email()
            .from_email_address(envelope.from.as_str())
            .destination(
                Destination::builder()
                    .set_to_addresses(Some(envelope.recipients.iter().map(|a| a.as_str().to_owned()).collect()))
                    .build(),
            )
            .content(EmailContent::builder().raw(raw).build())
            .send()
            .await;
        match result {
            Ok(out) => Ok(Accepted { response: format!("SES message id {}", out.message_id().unwrap_or("?")) }),
            Err(err) => {
                let reply = words(&err);
                let configuration = match err.as_service_error() {
                    Some(SendEmailError::MessageRejected(_)) => reply.text.contains("not verified"),
                    Some(
                        SendEmailError::MailFromDomainNotVerifiedException(_)
                        | SendEmailError::AccountSuspendedException(_)
                        | SendEmailError::SendingPausedException(_)
                        | SendEmailError::NotFoundException(_),
                    ) => true,
                    _ => false,
                };
                let transient = is_transient(&err)
                    || matches!(
                        err.as_service_error(),
                        Some(SendEmailError::TooManyRequestsException(_) | SendEmailError::LimitExceededException(_))
                    );
                let source = Some(Box::new(err) as Box<dyn std::error::Error + Send + Sync>);
                Err(if transient {
                    SendError::Transient { reply, source }
                } else if configuration {
                    SendError::Configuration { reply, source }
                } else {
                    SendError::Rejected { reply, source }
                })
            }
        }
    }

    async fn check(&self, route: &Route) -> Result<String, SendError> {
        if !matches!(route, Route::Ses) {
            return Err(SendError::configuration("the SES sender was given a route that is not SES"));
        }
        match self.client.get_account().send().await {
            Ok(out) if out.sending_enabled() => Ok("Amazon SES answered: sending is enabled".into()),
            Ok(_) => Err(SendError::configuration("Amazon SES answered: sending is paused for this account")),
            Err(err) => {
                let reply = words(&err);
                let transient = is_transient(&err);
                let source = Some(Box::new(err) as Box<dyn std::error::Error + Send + Sync>);
                Err(if transient {
                    SendError::Transient { reply, source }
                } else {
                    SendError::Configuration { reply, source }
                })
            }
        }
    }
}
