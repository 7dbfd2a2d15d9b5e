//! Outbound mail through a real SMTP server (the aiosmtpd sink of `infra/smtp_sink.sh`): what
//! arrives is parsed and checked (headers, threading, From alignment, signature, attachment);
//! the customer's answer threads back; 550 is recorded for good, 451 is retried, a redelivered
//! job sends once, header injection is refused, test emails report exactly what happened.

use mail_parser::{MessageParser, MimeHeaders};
use mailroom::domain::ids::{ChannelName, EmailAddress, InteractionId};
use mailroom::domain::journal::Disposition;
use mailroom::domain::outbound::{
    DeliveryState, FileName, HeaderText, MediaType, OutboundAttachment, OutboundMailbox, OutgoingServer, SecretKey,
    SendAs, SendJob, SmtpSecurity,
};
use mailroom::domain::profile::DateFormat;
use mailroom::ports::WorkQueue;
use mailroom::ports::outbound::OutboundStore;
use mailroom::usecases::agent_profile::{ProfileChanges, SignatureInput};
use mailroom::usecases::dead_letters;
use mailroom::usecases::outbound::{
    Draft, ErrorKind, FollowUpRequest, ForwardRequest, NewEmailInput, NewEmailRequest, OutboundError, ReplyInput,
    ReplyRequest, check_channel_connection,
};
use mailroom_tests::smtp_sink::{OutboundWorld, Sink, answer, sink, support_channel};

fn support() -> ChannelName {
    ChannelName::parse("support").unwrap()
}

fn smtp(sink: &Sink, security: SmtpSecurity) -> OutgoingServer {
    OutgoingServer::Smtp { server: sink.server(security), login: None }
}

/// A world sending for channel `support` through the sink's STARTTLS port with the channel's
/// account (`support@example.com`).
async fn world(sink: &Sink, security: SmtpSecurity) -> OutboundWorld {
    let w = OutboundWorld::with_sink(sink, support_channel(smtp(sink, security))).await;
    w.set_secret(SecretKey::ChannelSmtpPassword(support()), "support-secret").await;
    w
}

fn parse(raw: &[u8]) -> mail_parser::Message<'_> {
    MessageParser::default().parse(raw).expect("the delivered bytes are an email")
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    a.map(|a| a.iter().filter_map(|m| m.address().map(|s| s.to_lowercase())).collect()).unwrap_or_default()
}

fn draft(text: &str) -> Draft {
    Draft { text: text.into(), ..Draft::default() }
}

const SIGNATURE: &str = r#"<p onclick="x()">Ana Lima<br><b>Customer care</b></p><script>alert(1)</script>
<img src="https://tracker.example.net/open.gif?u=ana"><a href="https://example.com/help?utm_source=sig">Help centre</a>"#;

#[tokio::test]
async fn reply_all_arrives_threaded_aligned_signed_and_the_answer_threads_back() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Starttls).await;
    let ana = w.agent("ana");
    let id = w.customer_writes("customer-question.eml", "ana").await;
    w.profiles
        .update(
            &ana,
            ProfileChanges {
                signatures: Some(vec![SignatureInput { name: "default".into(), html: SIGNATURE.into() }]),
                default_signature: Some("default".into()),
                date_format: Some("european".into()),
                ..ProfileChanges::default()
            },
        )
        .await
        .expect("profile");

    let pdf = b"%PDF-1.4\n% a return label\n".repeat(50);
    let mut request =
        ReplyRequest { all: true, draft: draft("Dear Alice,\n\nA new vase is on its way."), in_reply_to: None };
    request.draft.attachments.push(OutboundAttachment {
        file_name: FileName::parse("return-label.pdf").unwrap(),
        content_type: MediaType::parse("application/pdf").unwrap(),
        data: pdf.clone(),
    });
    let queued = w.outbound.reply(&ana, &id, request).await.expect("reply queued");
    assert_eq!(queued.state, DeliveryState::Queued);

    let report = w.worker.drain().await.expect("drain");
    let record = w.records.record(&id, &queued.message_id).await.unwrap();
    assert_eq!(report.sent, 1, "{report:?} {record:?}");

    let delivered = sink.the_message(queued.message_id.as_str());
    // From alignment: the account that signed in is the address in From, over TLS.
    assert_eq!(delivered.envelope.auth_login.as_deref(), Some("support@example.com"));
    assert_eq!(delivered.envelope.mail_from, "support@example.com");
    assert_eq!(delivered.envelope.listener, "starttls");
    let mut rcpt = delivered.envelope.rcpt_tos.clone();
    rcpt.sort();
    assert_eq!(rcpt, vec!["alice.moreau@example.org", "bob.moreau@example.org"]);

    let m = parse(&delivered.raw);
    assert_eq!(addresses(m.from()), vec!["support@example.com"]);
    assert_eq!(addresses(m.to()), vec!["alice.moreau@example.org"]);
    assert_eq!(addresses(m.cc()), vec!["bob.moreau@example.org"]);
    let subject = m.subject().expect("subject");
    assert_eq!(subject, format!("Re: Order 48213 arrived damaged {}", id.reference_token()));
    assert_eq!(subject.matches("[MR-").count(), 1, "the token appears exactly once");
    assert_eq!(m.message_id(), Some(queued.message_id.as_str()));
    assert!(queued.message_id.as_str().ends_with("@example.com"), "a Message-ID on our domain");
    assert_eq!(m.in_reply_to().as_text(), Some("q1.order-48213@example.org"));
    assert!(m.references().as_text_list().is_some_and(|r| r.iter().any(|x| x == "q1.order-48213@example.org")));
    // Outlook threading: the customer's conversation root continues, with one child block.
    let thread_index = m.header("Thread-Index").and_then(|h| h.as_text()).expect("Thread-Index");
    use base64::Engine as _;
    let ours = base64::engine::general_purpose::STANDARD.decode(thread_index).unwrap();
    let theirs = base64::engine::general_purpose::STANDARD.decode("AdyqEgHXq1Pd1bFLQ2yN3qZx7A3k5w==").unwrap();
    assert_eq!(&ours[..22], &theirs[..22]);
    assert_eq!(ours.len(), 27);
    assert!(m.header("X-Mailroom-Origin").and_then(|h| h.as_text()).is_some_and(|v| v.contains(id.as_str())));
    assert!(m.header("Auto-Submitted").is_none(), "a person's reply is not automatic");

    let text = m.body_text(0).expect("text part").replace("\r\n", "\n");
    assert!(text.contains("A new vase is on its way."));
    assert!(text.contains("Ana Lima\nCustomer care"), "signature in the text part: {text}");
    assert!(text.contains("> The vase from order 48213 arrived in pieces."), "quoted original: {text}");
    assert!(text.contains("On 02/03/2026 08:12, Alice Moreau wrote:"), "date in the agent's format: {text}");
    let html = m.body_html(0).expect("html part");
    assert!(html.contains("Ana Lima") && html.contains("https://example.com/help"), "{html}");
    for banned in ["<script", "onclick", "tracker.example.net", "utm_source"] {
        assert!(!html.contains(banned), "{banned} must not be sent: {html}");
    }
    let attachment = m.attachments().find(|a| a.attachment_name() == Some("return-label.pdf")).expect("attachment");
    assert_eq!(attachment.contents(), pdf.as_slice());
    assert_eq!(attachment.content_type().map(|c| c.ctype()), Some("application"));

    // The transcript records it, sent, with the server's acceptance.
    let transcript = w.outbound.transcript(&id, &DateFormat::default()).await.unwrap();
    let sent = transcript.iter().find(|e| e.message_id.as_ref() == Some(&queued.message_id)).expect("in transcript");
    let delivery = sent.delivery.as_ref().expect("delivery");
    assert_eq!(delivery.state, DeliveryState::Sent);
    assert!(delivery.accepted.as_deref().is_some_and(|a| a.starts_with("250")), "{delivery:?}");

    // The customer answers our reply: it threads back into the same interaction...
    let subject = format!("Re: {subject}");
    let outcome = w
        .receive(answer(
            "Alice Moreau <alice.moreau@example.org>",
            &subject,
            queued.message_id.as_str(),
            "a1@example.org",
        ))
        .await;
    assert_eq!(outcome.disposition(), Disposition::Threaded, "{}", outcome.reason());
    assert_eq!(outcome.entry.interaction_id.as_ref(), Some(&id));
    // ...and so does Bob, who was copied by reply-all.
    let outcome =
        w.receive(answer("bob.moreau@example.org", &subject, queued.message_id.as_str(), "b1@example.org")).await;
    assert_eq!(outcome.entry.interaction_id.as_ref(), Some(&id), "{}", outcome.reason());
}

#[tokio::test]
async fn implicit_tls_with_the_agents_own_account_and_a_mismatched_from_is_refused() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Tls).await;
    let ana = w.agent("ana");
    let id = w.customer_writes("customer-question.eml", "ana").await;
    w.profiles
        .update(
            &ana,
            ProfileChanges {
                smtp_user_id: Some("ana".into()),
                default_from: Some(SendAs::Agent),
                display_name: Some("Ana Lima".into()),
                ..ProfileChanges::default()
            },
        )
        .await
        .unwrap();
    w.profiles.set_smtp_password(&ana, "ana-secret".to_string().into()).await.unwrap();
    let view = w.profiles.profile(&ana).await.unwrap();
    assert!(view.smtp_password_set);
    assert!(!format!("{view:?}").contains("ana-secret"), "the password is write-only");

    // A From that is not the sending account's address is refused before anything is queued.
    let mut bad = draft("hello");
    bad.from = Some(EmailAddress::parse("support@example.com").unwrap());
    let err = w.outbound.reply(&ana, &id, ReplyRequest { draft: bad, ..ReplyRequest::default() }).await.unwrap_err();
    assert_eq!((err.kind(), err.field()), (ErrorKind::Invalid, Some("from")), "{err}");
    assert_eq!(w.send_queue.depth().await.unwrap(), 0);

    let queued = w
        .outbound
        .reply(&ana, &id, ReplyRequest { draft: draft("I'll look into it."), ..Default::default() })
        .await
        .unwrap();
    let report = w.worker.drain().await.unwrap();
    let record = w.records.record(&id, &queued.message_id).await.unwrap();
    assert_eq!(report.sent, 1, "{report:?} {record:?}");
    let delivered = sink.the_message(queued.message_id.as_str());
    assert_eq!(delivered.envelope.listener, "tls");
    assert_eq!(delivered.envelope.auth_login.as_deref(), Some("ana"));
    let m = parse(&delivered.raw);
    assert_eq!(addresses(m.from()), vec!["ana@example.com"]);
    assert_eq!(m.from().and_then(|f| f.first()).and_then(|f| f.name()), Some("Ana Lima"));
    assert_eq!(addresses(m.to()), vec!["alice.moreau@example.org"]);
    assert!(m.cc().is_none(), "a plain reply copies nobody");

    // If the agent's address changes after composing, the worker refuses before sending.
    let queued =
        w.outbound.reply(&ana, &id, ReplyRequest { draft: draft("again"), ..Default::default() }).await.unwrap();
    w.profiles
        .update(&ana, ProfileChanges { workplace_email: Some("ana.lima@example.com".into()), ..Default::default() })
        .await
        .unwrap();
    let report = w.worker.drain().await.unwrap();
    assert_eq!(report.parked, 1, "{report:?}");
    let record = w.records.record(&id, &queued.message_id).await.unwrap().unwrap();
    assert_eq!(record.state, DeliveryState::Parked);
    assert!(record.last_error.unwrap().text.contains("does not match the sending account"));
    assert!(sink.delivered(queued.message_id.as_str()).is_empty());
}

#[tokio::test]
async fn a_550_recipient_is_a_permanent_failure_recorded_with_the_servers_words() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Starttls).await;
    let ana = w.agent("ana");
    let queued = w
        .outbound
        .new_email(
            &ana,
            NewEmailRequest {
                draft: draft("Your parcel is ready."),
                channel: support(),
                to: vec![OutboundMailbox::bare(EmailAddress::parse("reject.me@example.net").unwrap())],
                subject: HeaderText::parse("Your parcel").unwrap(),
            },
        )
        .await
        .unwrap();
    let report = w.worker.drain().await.unwrap();
    assert_eq!((report.failed, report.sent), (1, 0), "{report:?}");
    let record = w.records.record(&queued.interaction_id, &queued.message_id).await.unwrap().unwrap();
    assert_eq!(record.state, DeliveryState::Failed);
    assert_eq!(record.attempts, 1, "a 5xx is not retried");
    let error = record.last_error.unwrap();
    assert_eq!(error.code, Some(550));
    assert!(error.text.contains("Recipient address rejected"), "the server's words: {error:?}");
    let transcript = w.outbound.transcript(&queued.interaction_id, &DateFormat::default()).await.unwrap();
    let shown = transcript[0].delivery.as_ref().unwrap();
    assert_eq!(shown.state, DeliveryState::Failed);
    assert!(shown.error.as_deref().unwrap().starts_with("550"), "{shown:?}");
    assert!(sink.delivered(queued.message_id.as_str()).is_empty());
    assert_eq!(w.dead_letters.depth().await.unwrap(), 0, "nothing to replay: the address is wrong");
}

#[tokio::test]
async fn a_451_recipient_is_retried_then_parked_for_replay() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Starttls).await;
    let ana = w.agent("ana");
    let queued = w
        .outbound
        .new_email(
            &ana,
            NewEmailRequest {
                draft: draft("Following up."),
                channel: support(),
                to: vec![OutboundMailbox::bare(EmailAddress::parse("defer.me@example.net").unwrap())],
                subject: HeaderText::parse("Following up").unwrap(),
            },
        )
        .await
        .unwrap();
    // One step: a transient failure, the job goes back for another attempt.
    let first = w.worker.step(10, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(first.retried, 1, "{first:?}");
    let record = w.records.record(&queued.interaction_id, &queued.message_id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempts), (DeliveryState::Retrying, 1));
    assert_eq!(record.last_error.as_ref().unwrap().code, Some(451));

    let rest = w.worker.drain().await.unwrap();
    assert_eq!(rest.parked, 1, "{rest:?}");
    let record = w.records.record(&queued.interaction_id, &queued.message_id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempts), (DeliveryState::Parked, w.worker.policy.max_attempts));
    assert_eq!(w.dead_letters.depth().await.unwrap(), 1, "parked in the dead-letter queue");

    // Replay after the cause is fixed: the job is tried again (here the sink still defers).
    let moved = dead_letters::replay(w.dead_letters.as_ref(), w.send_queue.as_ref(), 10).await.unwrap();
    assert_eq!(moved, 1);
    let again = w.worker.step(10, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(again.received, 1);
    let record = w.records.record(&queued.interaction_id, &queued.message_id).await.unwrap().unwrap();
    assert_eq!(record.attempts, w.worker.policy.max_attempts + 1);
}

#[tokio::test]
async fn a_redelivered_send_job_or_a_repeated_request_sends_once() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Starttls).await;
    let ana = w.agent("ana");
    let id = w.customer_writes("customer-question.eml", "ana").await;
    let mut d = draft("Only once, please.");
    // Unique per run: the sink's mail directory outlives test runs.
    d.idempotency_key = Some(format!("req-{}", std::process::id()));
    let queued = w.outbound.reply(&ana, &id, ReplyRequest { draft: d.clone(), ..Default::default() }).await.unwrap();
    // The client retries the same request (same idempotency key): nothing new is recorded.
    let again = w.outbound.reply(&ana, &id, ReplyRequest { draft: d, ..Default::default() }).await.unwrap();
    assert!(again.repeated);
    assert_eq!(again.message_id, queued.message_id);
    // And SQS delivers the job twice more.
    let job = SendJob { interaction_id: id.clone(), message_id: queued.message_id.clone() }.to_body();
    w.send_queue.send(&job, std::time::Duration::ZERO).await.unwrap();
    w.send_queue.send(&job, std::time::Duration::ZERO).await.unwrap();

    let report = w.worker.drain().await.unwrap();
    assert_eq!(report.sent, 1, "{report:?}");
    assert_eq!(report.finished_before, report.received - 1, "{report:?}");
    assert_eq!(sink.delivered(queued.message_id.as_str()).len(), 1, "sent exactly once");
    let transcript = w.outbound.transcript(&id, &DateFormat::default()).await.unwrap();
    assert_eq!(transcript.iter().filter(|e| e.message_id.as_ref() == Some(&queued.message_id)).count(), 1);
}

#[tokio::test]
async fn header_injection_is_refused_or_neutralised() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Starttls).await;
    let ana = w.agent("ana");

    // Through the API input: every field that becomes a header refuses line breaks.
    let cases = [
        (
            serde_json::json!({"channel": "support", "to": ["x@example.org"], "subject": "Hi\r\nBcc: victim@example.net"}),
            "subject",
        ),
        (
            serde_json::json!({"channel": "support", "to": [{"address": "x@example.org", "name": "X\nBcc: v@example.net"}], "subject": "Hi"}),
            "to",
        ),
        (
            serde_json::json!({"channel": "support", "to": ["x@example.org\r\nBcc: v@example.net"], "subject": "Hi"}),
            "to",
        ),
        (
            serde_json::json!({"channel": "support", "to": ["x@example.org"], "subject": "Hi", "cc": ["a@b.c>\r\nX: y"]}),
            "cc",
        ),
        (
            serde_json::json!({"channel": "support", "to": ["x@example.org"], "subject": "Hi",
            "attachments": [{"file_name": "a.pdf\r\nContent-Type: text/html", "content_base64": "AA=="}]}),
            "attachments",
        ),
        (
            serde_json::json!({"channel": "support", "to": ["x@example.org"], "subject": "Hi",
            "attachments": [{"file_name": "a.pdf", "content_type": "text/html\r\nX: y", "content_base64": "AA=="}]}),
            "attachments",
        ),
    ];
    for (json, field) in cases {
        let input: NewEmailInput = serde_json::from_value(json.clone()).unwrap();
        let err = input.into_request(None).unwrap_err();
        assert_eq!(err.field(), Some(field), "{json}: {err}");
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }
    let input: ReplyInput =
        serde_json::from_value(serde_json::json!({"text": "x", "bcc": ["v@example.net\nSubject: x"]})).unwrap();
    assert_eq!(input.into_request(None).unwrap_err().field(), Some("bcc"));

    // A customer's subject carrying encoded line breaks cannot add headers to our reply.
    let id = w.customer_writes("customer-question-crlf-subject.eml", "ana").await;
    let queued = w
        .outbound
        .reply(&ana, &id, ReplyRequest { draft: draft("Refund on its way."), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(w.worker.drain().await.unwrap().sent, 1);
    let delivered = sink.the_message(queued.message_id.as_str());
    assert_eq!(delivered.envelope.rcpt_tos, vec!["carol@example.org"], "no smuggled recipient");
    let m = parse(&delivered.raw);
    assert!(m.header("Bcc").is_none() && m.header("X-Evil").is_none());
    let subject = m.subject().unwrap();
    assert!(!subject.contains('\r') && !subject.contains('\n'), "{subject:?}");
    assert!(subject.starts_with("Re: Refund Bcc: victim@example.net X-Evil: 1 [MR-"), "{subject:?}");

    // Mail to our own channel address is refused: it would loop.
    let err = w
        .outbound
        .new_email(
            &ana,
            NewEmailRequest {
                draft: draft("x"),
                channel: support(),
                to: vec![OutboundMailbox::bare(EmailAddress::parse("support@example.com").unwrap())],
                subject: HeaderText::parse("x").unwrap(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Invalid { field: "to", .. }), "{err}");
}

#[tokio::test]
async fn attachments_over_the_limit_are_refused_with_the_limit_stated() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Starttls).await;
    let ana = w.agent("ana");
    let id = w.customer_writes("customer-question.eml", "ana").await;
    let mut d = draft("Here are the photos.");
    for n in 0..3 {
        d.attachments.push(OutboundAttachment {
            file_name: FileName::parse(&format!("photo-{n}.jpg")).unwrap(),
            content_type: MediaType::parse("image/jpeg").unwrap(),
            data: vec![0xff; 8 * 1024 * 1024],
        });
    }
    let err = w.outbound.reply(&ana, &id, ReplyRequest { draft: d, ..Default::default() }).await.unwrap_err();
    assert_eq!((err.kind(), err.field()), (ErrorKind::TooLarge, Some("attachments")));
    assert!(err.to_string().contains("the limit is 20971520 bytes"), "{err}");
    assert_eq!(w.send_queue.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn forward_includes_the_original_and_the_recipient_does_not_join() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Starttls).await;
    let ana = w.agent("ana");
    let id = w.customer_writes("customer-question.eml", "ana").await;
    let claims = EmailAddress::parse("claims@insurer.example").unwrap();
    let queued = w
        .outbound
        .forward(
            &ana,
            &id,
            ForwardRequest {
                draft: draft("Please handle the damage claim below."),
                to: vec![OutboundMailbox::new(claims.clone(), Some(HeaderText::parse("Claims").unwrap()))],
                message: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(w.worker.drain().await.unwrap().sent, 1);
    let delivered = sink.the_message(queued.message_id.as_str());
    assert_eq!(delivered.envelope.rcpt_tos, vec!["claims@insurer.example"]);
    let m = parse(&delivered.raw);
    assert!(m.subject().unwrap().starts_with("Fwd: Order 48213 arrived damaged [MR-"));
    assert!(m.in_reply_to().as_text().is_none(), "a forward starts a new thread for its recipient");
    let text = m.body_text(0).unwrap().replace("\r\n", "\n");
    assert!(
        text.contains("---------- Forwarded message ----------")
            && text.contains("From: Alice Moreau <alice.moreau@example.org>")
    );
    let original = m
        .attachments()
        .find(|a| a.content_type().is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("rfc822")))
        .expect("the original as message/rfc822");
    let inner = original.message().expect("an embedded message");
    assert_eq!(inner.message_id(), Some("q1.order-48213@example.org"));

    // The interaction stays with the customer: the forward's recipient is no participant.
    let interaction = w.ingest.store.interaction(&id).await.unwrap().unwrap();
    assert!(!interaction.is_participant(&claims));
    // The claims department answers the forward: a new interaction, not the customer's.
    let outcome = w
        .receive(answer(
            "claims@insurer.example",
            &format!("Re: {}", m.subject().unwrap()),
            queued.message_id.as_str(),
            "c1@insurer.example",
        ))
        .await;
    assert_ne!(outcome.entry.interaction_id.as_ref(), Some(&id));
    assert!(outcome.reason().contains("does not take part"), "{}", outcome.reason());
}

#[tokio::test]
async fn new_email_opens_an_interaction_and_follow_ups_join_it() {
    let Some(sink) = sink() else { return };
    let w = world(&sink, SmtpSecurity::Starttls).await;
    let ana = w.agent("ana");
    let queued = w
        .outbound
        .new_email(
            &ana,
            NewEmailRequest {
                draft: draft("Your invoice 1234 is attached."),
                channel: support(),
                to: vec![OutboundMailbox::bare(EmailAddress::parse("dan@example.org").unwrap())],
                subject: HeaderText::parse("Invoice 1234").unwrap(),
            },
        )
        .await
        .unwrap();
    let id: InteractionId = queued.interaction_id.clone();
    let interaction = w.ingest.store.interaction(&id).await.unwrap().unwrap();
    assert_eq!(interaction.routing.agent.as_ref(), Some(&ana.id), "owned by the agent who wrote it");
    assert_eq!(interaction.customer.as_str(), "dan@example.org");

    let follow = w
        .outbound
        .follow_up(
            &ana,
            &id,
            FollowUpRequest {
                draft: draft("A friendly reminder: invoice 1234 is due."),
                subject: Some(HeaderText::parse("Reminder: invoice 1234 is overdue").unwrap()),
            },
        )
        .await
        .unwrap();
    assert_eq!(w.worker.drain().await.unwrap().sent, 2);
    let m = parse(&sink.the_message(follow.message_id.as_str()).raw).into_owned();
    assert_eq!(m.subject(), Some(format!("Reminder: invoice 1234 is overdue {}", id.reference_token()).as_str()));
    assert!(m.references().as_text_list().is_some_and(|r| r.iter().any(|x| x == queued.message_id.as_str())));
    let transcript = w.outbound.transcript(&id, &DateFormat::default()).await.unwrap();
    assert_eq!(transcript.len(), 2, "the follow-up is recorded with the original");

    // Dan answers the first email: it threads into the new interaction.
    let outcome =
        w.receive(answer("dan@example.org", "Re: Invoice 1234", queued.message_id.as_str(), "d1@example.org")).await;
    assert_eq!(outcome.entry.interaction_id.as_ref(), Some(&id), "{}", outcome.reason());
}

#[tokio::test]
async fn test_email_reports_no_password_wrong_password_and_success() {
    let Some(sink) = sink() else { return };
    let w = OutboundWorld::with_sink(&sink, support_channel(smtp(&sink, SmtpSecurity::Starttls))).await;
    let ana = w.agent("ana");
    let support = support();
    w.profiles
        .update(
            &ana,
            ProfileChanges {
                smtp_user_id: Some("ana".into()),
                default_from: Some(SendAs::Agent),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let report = w.profiles.send_test_email(&ana, &support).await.unwrap();
    assert!(!report.sent);
    assert_eq!(report.failure, Some("no_password"));
    assert!(report.detail.contains("no email password is set"), "{report:?}");

    w.profiles.set_smtp_password(&ana, "wrong".to_string().into()).await.unwrap();
    let report = w.profiles.send_test_email(&ana, &support).await.unwrap();
    assert!(!report.sent);
    assert_eq!(report.failure, Some("account"));
    assert!(report.detail.starts_with("535"), "the server's exact words: {report:?}");

    w.profiles.set_smtp_password(&ana, "ana-secret".to_string().into()).await.unwrap();
    let report = w.profiles.send_test_email(&ana, &support).await.unwrap();
    assert!(report.sent, "{report:?}");
    assert!(report.detail.starts_with("250"), "{report:?}");
    let delivered = sink.the_message(report.message_id.as_ref().unwrap().as_str());
    assert_eq!(delivered.envelope.rcpt_tos, vec!["ana@example.com"]);
    let m = parse(&delivered.raw);
    assert_eq!(m.header("Auto-Submitted").and_then(|h| h.as_text()), Some("auto-generated"));
    assert_eq!(m.header("X-Auto-Response-Suppress").and_then(|h| h.as_text()), Some("All"));
    assert!(m.header("X-Mailroom-Origin").is_some());

    // The channel's path needs the channel's password; without one the report says so.
    w.profiles
        .update(&ana, ProfileChanges { default_from: Some(SendAs::Channel), ..Default::default() })
        .await
        .unwrap();
    let report = w.profiles.send_test_email(&ana, &support).await.unwrap();
    assert_eq!(report.failure, Some("no_password"));
    assert!(report.detail.contains("channel support"), "{report:?}");
}

#[tokio::test]
async fn a_wrong_channel_password_parks_the_message_until_it_is_fixed() {
    let Some(sink) = sink() else { return };
    let w = OutboundWorld::with_sink(&sink, support_channel(smtp(&sink, SmtpSecurity::Starttls))).await;
    w.set_secret(SecretKey::ChannelSmtpPassword(support()), "not-the-password").await;
    let ana = w.agent("ana");
    let id = w.customer_writes("customer-question.eml", "ana").await;
    let queued = w.outbound.reply(&ana, &id, ReplyRequest { draft: draft("Hi"), ..Default::default() }).await.unwrap();
    assert_eq!(w.worker.drain().await.unwrap().parked, 1);
    let record = w.records.record(&id, &queued.message_id).await.unwrap().unwrap();
    assert_eq!(record.state, DeliveryState::Parked);
    assert_eq!(record.last_error.as_ref().unwrap().code, Some(535), "{record:?}");

    // The admin fixes the password; the operator replays the dead letters; it is sent once.
    w.set_secret(SecretKey::ChannelSmtpPassword(support()), "support-secret").await;
    dead_letters::replay(w.dead_letters.as_ref(), w.send_queue.as_ref(), 10).await.unwrap();
    assert_eq!(w.worker.drain().await.unwrap().sent, 1);
    assert_eq!(sink.delivered(queued.message_id.as_str()).len(), 1);
}

#[tokio::test]
async fn channel_test_connection_reports_success_or_the_exact_failure() {
    let Some(sink) = sink() else { return };
    let w = OutboundWorld::with_sink(&sink, support_channel(smtp(&sink, SmtpSecurity::Tls))).await;
    let sender = mailroom::adapters::outbound::RouteSender { ses: None, smtp: std::sync::Arc::new(sink.sender()) };
    let check = || async {
        check_channel_connection(w.outbound.channels.as_ref(), w.secrets.as_ref(), &sender, &support()).await.unwrap()
    };
    let report = check().await;
    assert!(!report.ok && report.detail.contains("no SMTP password is set for channel support"), "{report:?}");
    w.set_secret(SecretKey::ChannelSmtpPassword(support()), "wrong").await;
    let report = check().await;
    assert!(!report.ok && report.detail.starts_with("535"), "{report:?}");
    w.set_secret(SecretKey::ChannelSmtpPassword(support()), "support-secret").await;
    let report = check().await;
    assert!(report.ok, "{report:?}");
    assert!(report.server.ends_with("(TLS)"), "{report:?}");
}

/// Under the cloud's network policy a server that resolves to a loopback (or private, or
/// metadata) address is refused before any connection, for good and in words an admin can act on;
/// the one-machine policy connects.
#[tokio::test]
async fn the_cloud_policy_refuses_a_server_that_resolves_inside() {
    use mailroom::domain::mailbox::NetworkPolicy;
    use mailroom::ports::outbound::{MailSender, Route, SendError};
    let Some(sink) = sink() else { return };
    // By name, so the check is on what the name resolves to, not on the text an admin typed.
    let mut server = sink.server(SmtpSecurity::Tls);
    server.host = mailroom::domain::outbound::HostName::parse("localhost").unwrap();
    let route = Route::Smtp {
        server,
        login: mailroom::domain::outbound::SmtpLogin::parse("support@example.com").unwrap(),
        password: "support-secret".to_owned().into(),
    };
    let refused = sink.sender().with_policy(NetworkPolicy::CLOUD).check(&route).await.unwrap_err();
    assert!(matches!(refused, SendError::Configuration { .. }), "{refused:?}");
    let words = &refused.reply().text;
    assert!(words.contains("localhost is not allowed") && words.contains("loopback"), "{words}");
    assert!(sink.sender().with_policy(NetworkPolicy::LOCAL).check(&route).await.is_ok());
}

/// A channel created through the admin API (over HTTP, as `mailroom serve` serves it) sends
/// through its own SMTP server at once, without a restart; a change of server applies to the next
/// send, mail already queued included.
#[tokio::test]
async fn a_channel_created_through_the_admin_api_sends_through_its_smtp_server_at_once() {
    use std::sync::Arc;

    use mailroom::adapters::embedded::EmbeddedBackend;
    use mailroom::adapters::outbound::{EmbeddedOutbound, StoredChannels};
    use mailroom::api::auth::{Authenticator, mint_local_token};
    use mailroom::config::AppConfig;
    use mailroom::domain::agent::Role;
    use mailroom::domain::ids::AgentId;
    use serde_json::{Value, json};

    let Some(sink) = sink() else { return };
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(dir.path()).unwrap();
    let config = AppConfig::demo();
    let routing = mailroom::app::embedded_routing_service(&backend);
    routing.seed(&config.agents, &config.queues).await.unwrap();
    let mailboxes = mailroom::app::embedded_mailboxes(&config, &backend).await.unwrap();
    let mail = EmbeddedOutbound::build(
        &backend,
        StoredChannels::new(mailboxes.store.clone()),
        Default::default(),
        mailboxes.admin.secrets.clone(),
        sink.sender(),
        None,
    )
    .unwrap();
    const KEY: &[u8] = b"outbound admin test key, at least 32 bytes";
    let auth = Arc::new(Authenticator::local(KEY));
    let modules = vec![
        mailroom::api::channels::module(mailboxes.admin.clone(), auth.clone()),
        mailroom::api::mail::module(Arc::new(mail.outbound), Arc::new(mail.profiles), routing.clone(), auth.clone()),
    ];
    let app = mailroom::api::router(mailroom::api::AppState { routing, auth, handoff: None }, modules);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, who: (&str, Role), body: Option<Value>| {
        let token = mint_local_token(KEY, &AgentId::parse(who.0).unwrap(), who.1, chrono::Duration::minutes(5));
        let mut request = http.request(method, format!("{base}{path}")).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert!(!text.contains("sales-secret"), "a password came back: {text}");
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        }
    };
    let (ada, ana) = (("ada", Role::Admin), ("ana", Role::Agent));

    // The admin creates `sales` with the sink's STARTTLS port and sets its password.
    let create = json!({ "name": "sales", "address": "sales@example.com", "default_queue": "support",
        "outbound": { "server": { "kind": "smtp", "host": sink.host, "port": sink.starttls_port, "security": "starttls" } } });
    let (status, created) = call(reqwest::Method::POST, "/v1/admin/channels", ada, Some(create)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["outbound"]["password_set"], json!(false), "{created}");
    let (status, _) = call(
        reqwest::Method::PUT,
        "/v1/admin/channels/sales/outgoing/password",
        ada,
        Some(json!({ "password": "sales-secret" })),
    )
    .await;
    assert_eq!(status, 204);
    let (status, report) = call(reqwest::Method::POST, "/v1/admin/channels/sales/test-outgoing", ada, None).await;
    assert_eq!((status, &report["ok"]), (200, &json!(true)), "{report}");

    // Ana writes from it at once: the message leaves through the sink, signed in as the channel.
    let new =
        json!({ "channel": "sales", "to": ["bob@example.org"], "subject": "Your quote", "text": "Attached soon." });
    let (status, queued) = call(reqwest::Method::POST, "/v1/emails", ana, Some(new)).await;
    assert_eq!(status, 202, "{queued}");
    mail.worker.step(10, std::time::Duration::ZERO).await.unwrap();
    let first = sink.the_message(queued["message_id"].as_str().unwrap());
    assert_eq!(
        (first.envelope.listener.as_str(), first.envelope.auth_login.as_deref(), first.envelope.mail_from.as_str()),
        ("starttls", Some("sales@example.com"), "sales@example.com")
    );
    let message = parse(&first.raw);
    assert_eq!(addresses(message.from()), ["sales@example.com"]);

    // A follow-up is queued; then the admin moves the channel to implicit TLS. The queued message
    // goes out with the new settings.
    let id = queued["interaction_id"].as_str().unwrap();
    let (status, follow) = call(
        reqwest::Method::POST,
        &format!("/v1/interactions/{id}/follow-ups"),
        ana,
        Some(json!({ "text": "Did you get it?" })),
    )
    .await;
    assert_eq!(status, 202, "{follow}");
    let (_, outgoing) = call(reqwest::Method::GET, "/v1/admin/channels/sales/outgoing", ada, None).await;
    assert_eq!(outgoing["password_set"], json!(true), "{outgoing}");
    let version = outgoing["version"].as_u64().unwrap();
    let tls = json!({ "server": { "kind": "smtp", "host": sink.host, "port": sink.tls_port, "security": "tls" } });
    let path = format!("/v1/admin/channels/sales/outgoing?version={version}");
    let (status, changed) = call(reqwest::Method::PUT, &path, ada, Some(tls.clone())).await;
    assert_eq!(status, 200, "{changed}");
    let (status, _) = call(reqwest::Method::PUT, &path, ada, Some(tls)).await;
    assert_eq!(status, 409, "the version moved on");
    mail.worker.step(10, std::time::Duration::ZERO).await.unwrap();
    let second = sink.the_message(follow["message_id"].as_str().unwrap());
    assert_eq!(
        (second.envelope.listener.as_str(), second.envelope.auth_login.as_deref()),
        ("tls", Some("sales@example.com"))
    );
    server.abort();
}
