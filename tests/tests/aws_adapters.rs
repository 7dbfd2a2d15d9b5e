//! The AWS adapters (S3, DynamoDB, SQS) against moto's server: idempotency, concurrency and queue
//! semantics. Skipped without `MAILROOM_TEST_MOTO_URL` (fails instead with `MAILROOM_REQUIRE_SERVERS=1`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use mailroom::adapters::aws::{DynamoIngestStore, S3RawStore};
use mailroom::domain::ids::{
    Category, ChannelName, EmailAddress, Fingerprint, InteractionId, MessageId, QueueName, RawMailKey,
};
use mailroom::domain::interaction::{Direction, Interaction, InteractionState, Priority, Sentiment, StoredMessage};
use mailroom::domain::journal::{Disposition, JournalEntry, JournalState, Source};
use mailroom::ports::{BackendError, FingerprintClaim, IngestStore, RawMailStore, WorkQueue};
use mailroom_tests::aws::{moto, unique_name};

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_714_550_400 + seconds, 0).single().expect("valid time")
}

fn fp(n: u8) -> Fingerprint {
    Fingerprint::from_digest([n; 32])
}

fn addr(s: &str) -> EmailAddress {
    EmailAddress::parse(s).expect("address")
}

fn interaction(origin: &Fingerprint, state: InteractionState) -> Interaction {
    Interaction {
        id: InteractionId::for_first_message(origin),
        channel: ChannelName::parse("support").unwrap(),
        customer: addr("alice@example.org"),
        customer_name: Some("Alice".into()),
        subject: "Where is my order?".into(),
        queue: QueueName::parse("support").unwrap(),
        priority: Priority::NORMAL,
        state,
        category: Category::parse("general").unwrap(),
        sentiment: Sentiment::Neutral,
        participants: Vec::new(),
        origin: origin.clone(),
        message_count: 1,
        created_at: at(0),
        updated_at: at(0),
        queued_at: (state == InteractionState::Queued).then(|| at(0)),
        routing: Default::default(),
    }
}

fn message(
    fingerprint: &Fingerprint,
    interaction: &InteractionId,
    message_id: &str,
    received_at: DateTime<Utc>,
) -> StoredMessage {
    StoredMessage {
        fingerprint: fingerprint.clone(),
        interaction_id: interaction.clone(),
        raw_key: RawMailKey::of(fingerprint.as_str().as_bytes()),
        direction: Direction::Inbound,
        message_id: Some(MessageId::parse(message_id).unwrap()),
        conversation_key: None,
        from: addr("alice@example.org"),
        from_name: Some("Alice".into()),
        to: vec![addr("support@example.com")],
        cc: Vec::new(),
        subject: "Where is my order?".into(),
        sent_at: Some(received_at),
        received_at,
        text_body: "Hello,\nmy order has not arrived.\n".into(),
        body_truncated: false,
        attachments: Vec::new(),
        degraded: Vec::new(),
        disposition: Disposition::New,
        reason: "no reference to a conversation we hold".into(),
        category: Category::parse("general").unwrap(),
        sentiment: Sentiment::Neutral,
    }
}

async fn store() -> Option<Arc<DynamoIngestStore>> {
    let moto = moto().await?;
    Some(moto.fresh_backend().await.backend.store)
}

#[tokio::test]
async fn raw_mail_is_stored_once_by_content() {
    let Some(moto) = moto().await else { return };
    let fresh = moto.fresh_backend().await;
    let raw = fresh.backend.raw.clone();
    let bytes = b"From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n".to_vec();

    let key = raw.put(&bytes).await.expect("put");
    assert_eq!(key, RawMailKey::of(&bytes));
    assert_eq!(raw.put(&bytes).await.expect("put again"), key, "the same bytes get the same key");
    assert_eq!(raw.get(&key).await.expect("get").as_deref(), Some(&bytes[..]));
    assert_eq!(raw.get(&RawMailKey::of(b"never stored")).await.expect("get missing"), None);

    let listed = moto.s3.list_objects_v2().bucket(raw.bucket()).prefix("raw/").send().await.expect("list");
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, vec![S3RawStore::object_key(&key).as_str()]);

    // What SES writes under inbound/ is read with get_object; a deleted object is None.
    moto.s3
        .put_object()
        .bucket(raw.bucket())
        .key("inbound/abc 1")
        .body(bytes.clone().into())
        .send()
        .await
        .expect("put inbound");
    assert_eq!(raw.get_object(raw.bucket(), "inbound/abc 1").await.expect("get inbound").as_deref(), Some(&bytes[..]));
    assert_eq!(raw.get_object(raw.bucket(), "inbound/gone").await.expect("get gone"), None);
}

#[tokio::test]
async fn journal_keeps_the_first_pending_entry_and_lists_newest_first() {
    let Some(store) = store().await else { return };
    let entries: Vec<JournalEntry> = (0..3)
        .map(|i| JournalEntry::pending(RawMailKey::of(&[i]), 100 + i as usize, Source::Replay, at(i as i64 * 60)))
        .collect();
    for e in &entries {
        store.journal_begin(e).await.expect("begin");
    }
    // A second begin (a redelivery) changes nothing.
    let mut again = entries[1].clone();
    again.size = 999;
    store.journal_begin(&again).await.expect("begin again");
    assert_eq!(store.journal_get(&entries[1].raw_key).await.unwrap(), Some(entries[1].clone()));
    assert_eq!(store.journal_get(&RawMailKey::of(b"unknown")).await.unwrap(), None);

    let mut done = entries[1].clone();
    done.state = JournalState::Final;
    done.disposition = Some(Disposition::New);
    done.reason = "no reference to a conversation we hold".into();
    done.decided_at = Some(at(61));
    store.journal_finalize(&done).await.expect("finalize");
    assert_eq!(store.journal_get(&done.raw_key).await.unwrap(), Some(done.clone()));

    let recent = store.journal_recent(2).await.expect("recent");
    assert_eq!(recent, vec![entries[2].clone(), done.clone()]);
    assert_eq!(store.journal_recent(10).await.unwrap().len(), 3);
    assert!(store.journal_recent(0).await.unwrap().is_empty());

    // Finalizing an entry that was never begun records it too.
    let late = JournalEntry::pending(RawMailKey::of(b"late"), 1, Source::Smtp, at(600));
    store.journal_finalize(&late).await.expect("finalize without begin");
    assert_eq!(store.journal_recent(1).await.unwrap(), vec![late]);
}

#[tokio::test]
async fn a_fingerprint_has_exactly_one_owner_under_concurrent_claims() {
    let Some(store) = store().await else { return };
    let fingerprint = fp(7);
    let claims = (0..10u8).map(|i| {
        let store = store.clone();
        let fingerprint = fingerprint.clone();
        tokio::spawn(async move {
            let raw = RawMailKey::of(&[i]);
            let claim = store.claim_fingerprint(&fingerprint, &raw).await.expect("claim");
            (raw, claim)
        })
    });
    let mut results = Vec::new();
    for c in claims.collect::<Vec<_>>() {
        results.push(c.await.expect("task"));
    }
    let owners: Vec<&RawMailKey> =
        results.iter().filter(|(_, c)| *c == FingerprintClaim::Ours).map(|(r, _)| r).collect();
    assert_eq!(owners.len(), 1, "exactly one claimer owns it: {results:?}");
    let owner = owners[0].clone();
    for (raw, claim) in &results {
        if *raw != owner {
            assert_eq!(*claim, FingerprintClaim::Theirs(owner.clone()));
        }
    }
    // The owner's retry is still ours.
    assert_eq!(store.claim_fingerprint(&fingerprint, &owner).await.unwrap(), FingerprintClaim::Ours);
}

#[tokio::test]
async fn creating_an_interaction_is_idempotent_and_refuses_another_origin() {
    let Some(store) = store().await else { return };
    let origin = fp(1);
    let i = interaction(&origin, InteractionState::Queued);
    let first = message(&origin, &i.id, "first@example.org", at(0));

    store.create_interaction(&i, &first).await.expect("create");
    store.create_interaction(&i, &first).await.expect("create again is a no-op");
    assert_eq!(store.interaction(&i.id).await.unwrap(), Some(i.clone()));
    assert_eq!(store.message(&origin).await.unwrap(), Some(first.clone()));
    assert_eq!(store.message(&fp(99)).await.unwrap(), None);
    assert_eq!(store.interaction_messages(&i.id).await.unwrap(), vec![first.clone()]);
    let found = store.messages_with_ids(&[MessageId::parse("first@example.org").unwrap()]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].interaction_id, i.id);

    // Same id, another first message: an id collision, never silently merged.
    let mut other = i.clone();
    other.origin = fp(2);
    let other_first = message(&fp(2), &i.id, "other@example.org", at(5));
    match store.create_interaction(&other, &other_first).await {
        Err(BackendError::Conflict { .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.interaction(&i.id).await.unwrap(), Some(i.clone()), "the original is unchanged");
    assert_eq!(store.message(&fp(2)).await.unwrap(), None, "the rejected message was not stored");
    assert_eq!(store.interaction(&InteractionId::for_first_message(&fp(50))).await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_appends_count_every_message_once() {
    let Some(store) = store().await else { return };
    let origin = fp(1);
    let i = interaction(&origin, InteractionState::Queued);
    store.create_interaction(&i, &message(&origin, &i.id, "m0@example.org", at(0))).await.expect("create");

    let tasks: Vec<_> = (1..=10u8)
        .map(|n| {
            let store = store.clone();
            let m = message(&fp(10 + n), &i.id, &format!("m{n}@example.org"), at(n as i64));
            tokio::spawn(async move {
                let cc = addr(&format!("cc{n}@example.org"));
                store.append_message(&m, &[cc], false).await.expect("append")
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let after = store.interaction(&i.id).await.unwrap().expect("interaction");
    assert_eq!(after.message_count, 11);
    assert_eq!(after.participants.len(), 10, "{:?}", after.participants);
    let transcript = store.interaction_messages(&i.id).await.unwrap();
    assert_eq!(transcript.len(), 11);
    let times: Vec<_> = transcript.iter().map(|m| m.received_at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in arrival order");

    // A redelivered append changes nothing and returns the interaction as stored.
    let again = message(&fp(13), &i.id, "m3@example.org", at(3));
    let returned = store.append_message(&again, &[addr("cc3@example.org")], false).await.expect("append again");
    assert_eq!(returned.message_count, 11);
    assert_eq!(store.interaction(&i.id).await.unwrap().unwrap().message_count, 11);

    // Appending to an interaction that does not exist is a conflict.
    let orphan = message(&fp(90), &InteractionId::for_first_message(&fp(91)), "orphan@example.org", at(9));
    assert!(matches!(store.append_message(&orphan, &[], false).await, Err(BackendError::Conflict { .. })));
}

#[tokio::test]
async fn appending_with_requeue_reopens_an_ended_interaction() {
    let Some(store) = store().await else { return };
    let origin = fp(3);
    let ended = interaction(&origin, InteractionState::Ended);
    store.create_interaction(&ended, &message(&origin, &ended.id, "e0@example.org", at(0))).await.expect("create");

    let quiet =
        store.append_message(&message(&fp(4), &ended.id, "e1@example.org", at(10)), &[], false).await.expect("append");
    assert_eq!(quiet.state, InteractionState::Ended, "without requeue it stays ended");
    assert_eq!(quiet.message_count, 2);

    let reopened =
        store.append_message(&message(&fp(5), &ended.id, "e2@example.org", at(20)), &[], true).await.expect("append");
    assert_eq!(reopened.state, InteractionState::Queued);
    assert_eq!(reopened.queued_at, Some(at(20)));
    assert_eq!(reopened.updated_at, at(20));
    assert_eq!(reopened.message_count, 3);
    assert_eq!(store.interaction(&ended.id).await.unwrap(), Some(reopened));
}

#[tokio::test]
async fn a_reused_message_id_finds_both_interactions() {
    let Some(store) = store().await else { return };
    let (a, b) = (fp(21), fp(22));
    let ia = interaction(&a, InteractionState::Queued);
    let ib = interaction(&b, InteractionState::Queued);
    store.create_interaction(&ia, &message(&a, &ia.id, "reused@example.org", at(0))).await.unwrap();
    store.create_interaction(&ib, &message(&b, &ib.id, "reused@example.org", at(1))).await.unwrap();

    let ids = [MessageId::parse("unknown@example.org").unwrap(), MessageId::parse("reused@example.org").unwrap()];
    let mut found: Vec<InteractionId> =
        store.messages_with_ids(&ids).await.unwrap().into_iter().map(|c| c.interaction_id).collect();
    found.sort();
    let mut expected = vec![ia.id.clone(), ib.id.clone()];
    expected.sort();
    assert_eq!(found, expected);
    assert!(store.messages_with_ids(&[]).await.unwrap().is_empty());

    // Outlook's conversation key is indexed like a Message-ID.
    let c = fp(23);
    let ic = interaction(&c, InteractionState::Queued);
    let mut first = message(&c, &ic.id, "outlook@example.org", at(2));
    first.conversation_key = Some(MessageId::parse("thread-index.AdQ1v2x3y4z5@outlook").unwrap());
    store.create_interaction(&ic, &first).await.unwrap();
    let by_key = store.messages_with_ids(&[first.conversation_key.clone().unwrap()]).await.unwrap();
    assert_eq!(by_key.iter().map(|c| &c.interaction_id).collect::<Vec<_>>(), vec![&ic.id]);
}

#[tokio::test]
async fn queue_visibility_release_and_delete() {
    let Some(moto) = moto().await else { return };
    let (url, _dlq) = moto.create_queue_with_dlq(&unique_name("mr-vis"), 5).await;
    let q = moto.queue(&url);
    assert!(url.ends_with(q.name()));

    q.send("job-1", Duration::ZERO).await.expect("send");
    assert_eq!(q.depth().await.unwrap(), 1);
    let got = q.receive(10, Duration::from_secs(2), Duration::ZERO).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].body.as_str(), got[0].receive_count), ("job-1", 1));
    assert!(
        q.receive(10, Duration::from_secs(2), Duration::ZERO).await.unwrap().is_empty(),
        "invisible while in flight"
    );
    assert_eq!(q.depth().await.unwrap(), 1, "in flight still counts");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = q.receive(10, Duration::from_secs(30), Duration::ZERO).await.expect("receive again");
    assert_eq!(again.len(), 1, "redelivered after the visibility timeout");
    assert_eq!(again[0].receive_count, 2);

    q.release(&again[0].receipt, Duration::ZERO).await.expect("release");
    let released = q.receive(10, Duration::from_secs(30), Duration::from_secs(1)).await.expect("receive released");
    assert_eq!(released.len(), 1, "released for immediate redelivery");
    assert_eq!(released[0].receive_count, 3);

    q.delete(&released[0].receipt).await.expect("delete");
    assert_eq!(q.depth().await.unwrap(), 0);
    assert!(q.receive(10, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap().is_empty());

    // A delayed message is not delivered before its delay.
    q.send("later", Duration::from_secs(1)).await.expect("send delayed");
    assert!(q.receive(10, Duration::from_secs(30), Duration::ZERO).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(q.receive(10, Duration::from_secs(30), Duration::ZERO).await.unwrap().len(), 1);
}

#[tokio::test]
async fn messages_move_to_the_dead_letter_queue_after_max_receives() {
    let Some(moto) = moto().await else { return };
    let (url, dlq_url) = moto.create_queue_with_dlq(&unique_name("mr-dlq"), 2).await;
    let (q, dlq) = (moto.queue(&url), moto.queue(&dlq_url));
    q.send("poison", Duration::ZERO).await.expect("send");
    for attempt in 1..=2 {
        let got = q.receive(1, Duration::from_secs(1), Duration::ZERO).await.expect("receive");
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].receive_count, attempt);
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert!(q.receive(10, Duration::from_secs(30), Duration::ZERO).await.unwrap().is_empty(), "gone from the queue");
    let dead = dlq.receive(10, Duration::from_secs(30), Duration::from_secs(1)).await.expect("receive dlq");
    assert_eq!(dead.iter().map(|w| w.body.as_str()).collect::<Vec<_>>(), vec!["poison"]);
}
