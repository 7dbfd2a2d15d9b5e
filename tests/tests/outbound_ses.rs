//! Outbound mail through Amazon SES (moto's server), and the DynamoDB outbound store.
//!
//! moto keeps what was "sent" and shows it at `GET /moto-api/data.json` (`ses` → raw messages
//! with their destinations), so the bytes SES received are parsed and checked like the sink's.

use std::sync::Arc;

use chrono::Utc;
use mail_parser::MessageParser;
use mailroom::adapters::outbound::{DynamoOutboundStore, RouteSender, SesSender, SmtpSender};
use mailroom::domain::ids::{AgentId, ChannelName, EmailAddress, InteractionId, MessageId, RawMailKey};
use mailroom::domain::journal::Disposition;
use mailroom::domain::outbound::{DeliveryState, OutboundKind, OutboundRecord, OutgoingServer, SendAs, ServerReply};
use mailroom::domain::profile::{AgentProfile, DateFormat};
use mailroom::ports::outbound::{OutboundStore, ProfileStore, Written};
use mailroom::usecases::agent_profile::ProfileChanges;
use mailroom::usecases::outbound::{Draft, ReplyRequest};
use mailroom_tests::aws::{moto, unique_name};
use mailroom_tests::smtp_sink::{OutboundWorld, answer, support_channel};

/// The raw messages moto's SES holds whose bytes contain `needle`.
async fn ses_messages(moto_url: &str, needle: &str) -> Vec<(Vec<String>, String)> {
    let data: serde_json::Value =
        reqwest::get(format!("{moto_url}/moto-api/data.json")).await.expect("moto data").json().await.expect("json");
    let mut found = Vec::new();
    let Some(ses) = data.get("ses") else { return found };
    // {"ses": {"<account>": {"<region>": {"sent_messages"/"RawMessage": [...]}}}} or flatter,
    // depending on the moto version: look for objects with raw data anywhere below `ses`.
    let mut stack = vec![ses];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                let raw = map.get("raw_data").or_else(|| map.get("RawData")).and_then(|r| r.as_str());
                if let Some(raw) = raw {
                    if raw.contains(needle) {
                        let destinations = map
                            .get("destinations")
                            .or_else(|| map.get("Destinations"))
                            .map(|d| {
                                let mut out = Vec::new();
                                collect_strings(d, &mut out);
                                out
                            })
                            .unwrap_or_default();
                        found.push((destinations, raw.to_owned()));
                    }
                } else {
                    stack.extend(map.values());
                }
            }
            serde_json::Value::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
    found
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.to_lowercase()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

#[tokio::test]
async fn reply_through_ses_arrives_as_sent_and_threads_back() {
    let Some(moto) = moto().await else { return };
    let ses = aws_sdk_sesv2::Client::new(&moto.config);
    ses.create_email_identity().email_identity("example.com").send().await.expect("verify the sending domain");
    let sender = RouteSender {
        ses: Some(Arc::new(SesSender::new(ses))),
        smtp: Arc::new(SmtpSender::new(None, std::time::Duration::from_secs(5)).unwrap()),
    };
    let w = OutboundWorld::new(support_channel(OutgoingServer::Internal), Arc::new(sender)).await;
    let ana = w.agent("ana");
    let id = w.customer_writes("customer-question.eml", "ana").await;
    let queued = w
        .outbound
        .reply(
            &ana,
            &id,
            ReplyRequest {
                all: true,
                draft: Draft { text: "Sent through SES.".into(), ..Draft::default() },
                in_reply_to: None,
            },
        )
        .await
        .unwrap();
    let report = w.worker.drain().await.unwrap();
    let record = w.records.record(&id, &queued.message_id).await.unwrap().unwrap();
    assert_eq!(report.sent, 1, "{report:?} {record:?}");
    assert!(record.accepted.as_deref().unwrap().starts_with("SES message id"), "{record:?}");

    let found = ses_messages(&moto.url, queued.message_id.as_str()).await;
    assert_eq!(found.len(), 1, "exactly one message in moto's SES");
    let (destinations, raw) = &found[0];
    assert!(destinations.contains(&"alice.moreau@example.org".to_string()), "{destinations:?}");
    assert!(destinations.contains(&"bob.moreau@example.org".to_string()), "{destinations:?}");
    let m = MessageParser::default().parse(raw.as_bytes()).expect("an email");
    assert_eq!(m.message_id(), Some(queued.message_id.as_str()), "SES keeps our Message-ID");
    assert_eq!(m.from().and_then(|f| f.first()).and_then(|f| f.address()), Some("support@example.com"));
    assert_eq!(m.in_reply_to().as_text(), Some("q1.order-48213@example.org"));
    assert!(m.subject().unwrap().ends_with(&id.reference_token()));
    assert!(m.header("X-Mailroom-Origin").is_some() && m.header("Thread-Index").is_some());

    let outcome = w
        .receive(answer(
            "alice.moreau@example.org",
            &format!("Re: {}", m.subject().unwrap()),
            queued.message_id.as_str(),
            &format!("ses-answer-{}@example.org", std::process::id()),
        ))
        .await;
    assert_eq!(outcome.disposition(), Disposition::Threaded, "{}", outcome.reason());
    assert_eq!(outcome.entry.interaction_id.as_ref(), Some(&id));
}

#[tokio::test]
async fn sending_as_an_agent_off_the_channel_domain_is_refused_for_ses() {
    let Some(moto) = moto().await else { return };
    let ses = aws_sdk_sesv2::Client::new(&moto.config);
    let sender = RouteSender {
        ses: Some(Arc::new(SesSender::new(ses))),
        smtp: Arc::new(SmtpSender::new(None, std::time::Duration::from_secs(5)).unwrap()),
    };
    let w = OutboundWorld::new(support_channel(OutgoingServer::Internal), Arc::new(sender)).await;
    let ana = w.agent("ana");
    // SES signs for the channel's verified domain only.
    let id = w.customer_writes("customer-question.eml", "ana").await;
    w.profiles
        .update(
            &ana,
            ProfileChanges {
                workplace_email: Some(format!("ana.{}@unverified.example", std::process::id())),
                ..ProfileChanges::default()
            },
        )
        .await
        .unwrap();
    let mut draft = Draft { text: "x".into(), ..Draft::default() };
    draft.send_as = Some(SendAs::Agent);
    // The agent's address is not on the channel's domain: refused before queueing.
    let err = w.outbound.reply(&ana, &id, ReplyRequest { draft, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.field(), Some("from"), "{err}");
}

fn record(interaction: &InteractionId, n: u32) -> OutboundRecord {
    let now = Utc::now();
    OutboundRecord {
        message_id: MessageId::parse(&format!("mr.test.{n}.{}@example.com", unique_name("m"))).unwrap(),
        interaction_id: interaction.clone(),
        channel: ChannelName::parse("support").unwrap(),
        agent: AgentId::parse("ana").unwrap(),
        kind: OutboundKind::Reply,
        send_as: SendAs::Channel,
        from: EmailAddress::parse("support@example.com").unwrap(),
        recipients: vec![EmailAddress::parse("alice@example.org").unwrap()],
        raw_key: RawMailKey::of(b"raw"),
        size: 3,
        state: DeliveryState::Queued,
        attempts: 0,
        version: 1,
        lease_until: None,
        last_error: None,
        accepted: None,
        created_at: now + chrono::Duration::milliseconds(n as i64),
        updated_at: now,
        sent_at: None,
    }
}

#[tokio::test]
async fn dynamodb_outbound_store_changes_state_conditionally() {
    let Some(moto) = moto().await else { return };
    let table = unique_name("mr-out");
    moto.create_table(&table).await;
    let store = DynamoOutboundStore::new(moto.dynamodb.clone(), &table);
    let interaction = InteractionId::from_seed(&unique_name("i"));

    let first = record(&interaction, 1);
    assert_eq!(store.create_record(&first).await.unwrap(), first);
    let mut other = first.clone();
    other.size = 99;
    assert_eq!(store.create_record(&other).await.unwrap(), first, "the first record stands");

    let mut sending = first.clone();
    sending.state = DeliveryState::Sending;
    sending.version = 2;
    assert_eq!(store.replace_record(&sending, 1).await.unwrap(), Written::Done);
    // A second worker holding the old version loses.
    match store.replace_record(&sending, 1).await.unwrap() {
        Written::Stale(Some(current)) => assert_eq!(current.version, 2),
        other => panic!("{other:?}"),
    }
    let failed = sending.failed(
        DeliveryState::Failed,
        ServerReply { code: Some(550), text: "550 5.1.1 user unknown".into() },
        Utc::now(),
    );
    assert_eq!(store.replace_record(&failed, 2).await.unwrap(), Written::Done);
    let second = record(&interaction, 2);
    store.create_record(&second).await.unwrap();
    let all = store.records_of(&interaction).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].state, DeliveryState::Failed);
    assert_eq!(all[0].last_error.as_ref().unwrap().code, Some(550));
    assert_eq!(store.record(&interaction, &second.message_id).await.unwrap(), Some(second));

    let agent = AgentId::parse("ana").unwrap();
    assert_eq!(store.profile(&agent).await.unwrap(), None);
    let mut profile =
        AgentProfile::new(agent.clone(), Some(EmailAddress::parse("ana@example.com").unwrap()), Utc::now());
    profile.date_format = DateFormat::parse("us").unwrap();
    store.put_profile(&profile).await.unwrap();
    assert_eq!(store.profile(&agent).await.unwrap(), Some(profile));
}
