//! The handoff on the Local CRM (the embedded default: no Dynamics tenant): the same flows as against
//! the Dataverse emulator, read back through the functions the API exposes.

use std::collections::BTreeMap;

use mailroom::domain::crm::{ContactResolution, HandoffStage, TicketPropertyInput, dataverse_len};
use mailroom::ports::WorkQueue;
use mailroom::ports::crm::{Crm, NewContact};
use mailroom::usecases::crm_settings::{ConnectionStatus, CrmSettingsInput, save_settings, verify_connection};
use mailroom::usecases::handoff::{
    AiHandoffRequest, CaseStatus, ContactPolicy, HandoffError, HandoffRequest, NewContactInput, WorkOutcome, drain,
};
use mailroom_tests::dataverse::{Harness, interaction_of};

fn ai_request() -> AiHandoffRequest {
    let path = mailroom_tests::tests_dir().join("fixtures/handoff/ai-handoff.json");
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("valid AI handoff request")
}

#[tokio::test]
async fn automatic_handoff_creates_one_case_with_contact_transcript_and_emails() {
    let h = Harness::new();
    let first = h.ingest_fixture("email/thread/01-original.eml").await;
    let id = interaction_of(&first);
    let second = h.ingest_fixture("email/thread/02-reply-in-reply-to.eml").await;
    assert_eq!(interaction_of(&second), id);

    let request = HandoffRequest::Interaction { interaction_id: id.clone(), contact_policy: ContactPolicy::Automatic };
    h.queue.send(&request.to_body(), std::time::Duration::ZERO).await.unwrap();
    h.queue.send(&request.to_body(), std::time::Duration::ZERO).await.unwrap(); // redelivered
    assert_eq!(drain(&h.service, std::time::Duration::ZERO).await.unwrap(), 2);

    let cases = h.local.list_cases(10).unwrap();
    assert_eq!(cases.len(), 1, "a redelivered handoff creates no second case");
    let detail = h.local.case_detail(cases[0].ticket_number.as_str()).unwrap().expect("case by number");
    assert!(detail.case.ticket_number.as_str().starts_with("CAS-01000-"), "{:?}", detail.case);
    assert_eq!(detail.case.title, "general - Alice Moreau", "classification - sender name");
    assert_eq!(detail.case.origin, 2);
    assert_eq!(detail.case.priority, Some(2));
    assert_eq!(detail.customer.first_name.as_deref(), Some("Alice"));
    assert_eq!(detail.customer.last_name.as_deref(), Some("Moreau"));
    assert_eq!(detail.customer.emails[0].as_deref(), Some("alice@example.org"));
    assert!(
        detail.description.starts_with("Channel: email\nClassification: general\nSentiment: "),
        "{}",
        detail.description
    );
    assert_eq!(detail.description.matches("\n--- ").count(), 2, "both messages in the transcript");
    assert_eq!(detail.activities.len(), 2, "both emails on the case");
    assert!(detail.activities.iter().all(|a| a.incoming));

    // A later email of the interaction is appended to the same case.
    let record = h.service.case_for_interaction(&id).await.unwrap().expect("record");
    assert_eq!(record.appended.len(), 2);
    let later = h.ingest_fixture("email/thread/04-references-only.eml").await;
    assert_eq!(interaction_of(&later), id, "the reply joins the interaction");
    mailroom::usecases::handoff::notify_message(h.queue.as_ref(), &id, later.entry.fingerprint.as_ref().unwrap())
        .await
        .unwrap();
    drain(&h.service, std::time::Duration::ZERO).await.unwrap();
    let detail = h.local.case_detail(cases[0].id.as_str()).unwrap().unwrap();
    assert_eq!(detail.activities.len(), 3, "the later email is appended to the same case");
    assert_eq!(h.local.list_cases(10).unwrap().len(), 1);
}

#[tokio::test]
async fn screen_pop_covers_none_one_and_several_matches() {
    let h = Harness::new();
    // None: the case waits; the agent creates the contact and the case is linked to it.
    let id = interaction_of(&h.ingest_fixture("email/thread/01-original.eml").await);
    let pop = h.service.screen_pop(&id).await.expect("screen pop");
    assert_eq!(pop.matches, Some(0));
    assert!(matches!(pop.case, CaseStatus::AwaitingContact { .. }), "{pop:?}");
    let prompt = pop.new_contact.expect("a prefilled new-contact form");
    assert_eq!((prompt.first_name.as_deref(), prompt.last_name.as_str()), (Some("Alice"), "Moreau"));
    assert!(pop.inbound_email.as_ref().is_some_and(|e| e.subject.contains("Order 48213")));
    assert!(matches!(h.service.check_wrap_up(&id).await, Err(HandoffError::ContactRequired { .. })));
    assert!(h.local.list_contacts(None, 10).unwrap().is_empty(), "no ghost contact");

    let record = h
        .service
        .create_contact_and_link(
            &id,
            NewContactInput { first_name: Some("Alice".into()), last_name: "Moreau-Leroy".into(), email: None },
        )
        .await
        .expect("contact created and linked");
    assert_eq!(record.stage, HandoffStage::Created);
    assert_eq!(record.contact_resolution, Some(ContactResolution::CreatedByAgent));
    h.service.check_wrap_up(&id).await.expect("ready for wrap-up");
    let case = h.local.case_detail(record.incident_id.as_str()).unwrap().unwrap();
    assert_eq!(case.customer.last_name.as_deref(), Some("Moreau-Leroy"));

    // One: another interaction of the same sender is linked at once, inbound email included.
    let other = interaction_of(&h.ingest_fixture("email/thread/05-reused-message-id.eml").await);
    if other != id {
        let pop = h.service.screen_pop(&other).await.unwrap();
        assert_eq!(pop.matches, Some(1));
        match &pop.case {
            CaseStatus::Created { contact_id, .. } => assert_eq!(contact_id, &record.contact.clone().unwrap()),
            other => panic!("{other:?}"),
        }
        let created = h.service.case_for_interaction(&other).await.unwrap().unwrap();
        assert_eq!(created.appended.len(), 1, "the inbound email is on the case");
    }

    // Several: the case waits until the agent picks one; then it is linked to that one.
    let priya = interaction_of(&h.ingest_fixture("email/new/angry-complaint.eml").await);
    let sender = mailroom::domain::ids::EmailAddress::parse("priya.shah@example.net").unwrap();
    for (i, last) in ["Shah", "Shah-Patel"].iter().enumerate() {
        h.local
            .create_contact(&NewContact {
                id: mailroom::domain::crm::ContactId::derive(&format!("priya-{i}")),
                first_name: Some("Priya".into()),
                last_name: last.to_string(),
                email: sender.clone(),
            })
            .await
            .unwrap();
    }
    let pop = h.service.screen_pop(&priya).await.unwrap();
    assert_eq!(pop.matches, Some(2));
    assert!(matches!(pop.case, CaseStatus::AwaitingContact { .. }) && pop.new_contact.is_none(), "{pop:?}");
    let pick = pop.contacts[1].id.clone();
    let record = h.service.link_contact(&priya, &pick).await.expect("linked");
    assert_eq!((record.stage, record.contact.as_ref()), (HandoffStage::Created, Some(&pick)));
    assert!(matches!(h.service.link_contact(&priya, &pop.contacts[0].id).await, Err(HandoffError::AlreadyLinked(_))));
}

#[tokio::test]
async fn long_threads_are_cut_with_the_full_transcript_in_a_note() {
    let h = Harness::new();
    let id = h.ingest_dir("handoff/long-thread").await;
    let record = h.service.handoff_interaction(&id, ContactPolicy::Automatic).await.expect("handoff");
    assert!(record.description_truncated && record.transcript_note_added);
    let case = h.local.case_detail(record.incident_id.as_str()).unwrap().unwrap();
    assert!(dataverse_len(&case.description) <= 2000);
    assert!(case.description.ends_with("is in the note \"Full transcript\".]"), "{}", case.description);
    let note = case.notes.iter().find(|n| n.subject == "Full transcript").expect("transcript note");
    assert_eq!(note.text.matches("--- 2025-").count(), 6, "every message in the note");
    assert!(!note.text.contains("(earlier message quoted here)"), "quoted history dropped");
    assert_eq!(case.activities.len(), 6);
}

#[tokio::test]
async fn attachments_become_notes_within_the_upload_limit() {
    let h = Harness::new();
    let id = interaction_of(&h.ingest_fixture("email/new/with-pdf-attachment.eml").await);
    let record = h.service.handoff_interaction(&id, ContactPolicy::Automatic).await.unwrap();
    assert_eq!(record.attachments.len(), 1);
    assert!(record.attachments[0].added);
    let case = h.local.case_detail(record.incident_id.as_str()).unwrap().unwrap();
    let note = case.notes.iter().find(|n| n.file_name.is_some()).expect("a note with the file");
    let (name, mime, bytes) = h.local.note_file(&note.id).unwrap().expect("file");
    assert!(name.ends_with(".pdf") && mime == "application/pdf" && bytes.starts_with(b"%PDF"), "{name} {mime}");

    let small = Harness::with_local(|crm| crm.with_max_upload(16));
    let id = interaction_of(&small.ingest_fixture("email/new/with-pdf-attachment.eml").await);
    let record = small.service.handoff_interaction(&id, ContactPolicy::Automatic).await.unwrap();
    assert!(!record.attachments[0].added);
    let case = small.local.case_detail(record.incident_id.as_str()).unwrap().unwrap();
    assert!(case.notes.iter().any(|n| n.subject.starts_with("Attachment not copied") && n.file_name.is_none()));
}

#[tokio::test]
async fn ai_handoff_is_idempotent_and_maps_labels() {
    let h = Harness::new();
    let client = mailroom::domain::ids::AgentId::parse("helper-bot").unwrap();
    let first = h.service.ai_handoff(&client, ai_request()).await.expect("AI handoff");
    assert!(!first.replayed);
    assert_eq!(first.contact_resolution, Some(ContactResolution::CreatedFromSender));
    let again = h.service.ai_handoff(&client, ai_request()).await.expect("repeat");
    assert!(again.replayed);
    assert_eq!(
        (again.incident_id.clone(), again.ticket_number.clone()),
        (first.incident_id.clone(), first.ticket_number.clone())
    );
    assert_eq!(h.local.list_cases(10).unwrap().len(), 1);
    let case = h.local.case_detail(first.ticket_number.as_str()).unwrap().unwrap();
    assert_eq!(case.case.title, "billing - Chloé Martin");
    assert_eq!(case.case.origin, 3, "an AI assistant's conversation comes from the web, not from email");
    assert_eq!(case.case.properties["new_region"], 100000001, "label Europe mapped to its value");
    assert_eq!(case.case.properties["new_productline"], 100000002);
    assert!(
        case.description.starts_with("Channel: AI assistant\nClassification: billing\nSentiment: negative\nSummary: ")
    );
    assert_eq!(case.customer.first_name.as_deref(), Some("Chloé"));

    let mut changed = ai_request();
    changed.messages.pop();
    assert!(matches!(h.service.ai_handoff(&client, changed).await, Err(HandoffError::IdempotencyKeyReused(_))));
    // Another summary under the same key is another request too, not a retry.
    let mut resummarised = ai_request();
    resummarised.summary = Some("Something else entirely".into());
    let outcome = h.service.ai_handoff(&client, resummarised).await;
    assert!(matches!(outcome, Err(HandoffError::IdempotencyKeyReused(_))), "{outcome:?}");

    let mut bad = ai_request();
    bad.idempotency_key = mailroom::domain::crm::IdempotencyKey::parse("other").unwrap();
    bad.ticket_properties = BTreeMap::from([("new_region".to_owned(), TicketPropertyInput::Label("Mars".into()))]);
    match h.service.ai_handoff(&client, bad).await {
        Err(e @ HandoffError::InvalidTicketProperties(_)) => {
            assert_eq!(e.field(), Some("ticket_properties"));
            assert!(e.to_string().contains("\"Mars\" is not a label of new_region"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn local_connection_check_and_settings() {
    let h = Harness::new();
    let report = verify_connection(&h.runtime).await;
    assert_eq!(report.status, ConnectionStatus::Active, "{report:?}");

    let err = save_settings(
        &h.runtime,
        CrmSettingsInput {
            ticket_properties: Some(BTreeMap::from([("new_region".into(), TicketPropertyInput::Value(7))])),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("7 is not an option of new_region"), "{err}");
    let saved = save_settings(
        &h.runtime,
        CrmSettingsInput {
            default_priority: Some(1),
            ticket_properties: Some(BTreeMap::from([(
                "new_region".into(),
                TicketPropertyInput::Label("europe".into()),
            )])),
            ..Default::default()
        },
    )
    .await
    .expect("saved");
    assert_eq!(saved.ticket_properties.get("new_region"), Some(100000001));
    let id = interaction_of(&h.ingest_fixture("email/new/angry-complaint.eml").await);
    let record = h.service.handoff_interaction(&id, ContactPolicy::Automatic).await.unwrap();
    let case = h.local.case_detail(record.incident_id.as_str()).unwrap().unwrap();
    assert_eq!(case.case.priority, Some(1));
    assert_eq!(case.case.properties["new_region"], 100000001);
}

#[tokio::test]
async fn unparseable_work_is_parked_with_its_reason() {
    let h = Harness::new();
    let outcome = h.service.handle_work("{\"type\":\"interaction\"}").await;
    assert!(
        matches!(&outcome, WorkOutcome::Parked { reason } if reason.contains("not a handoff request")),
        "{outcome:?}"
    );
    assert_eq!(h.dead_letters.depth().await.unwrap(), 1);
    let missing = HandoffRequest::Interaction {
        interaction_id: mailroom::domain::ids::InteractionId::parse("ZZZZZZZZZZZZ").unwrap(),
        contact_policy: ContactPolicy::Automatic,
    };
    let outcome = h.service.handle_work(&missing.to_body()).await;
    assert!(matches!(&outcome, WorkOutcome::Parked { reason } if reason.contains("does not exist")), "{outcome:?}");
}

#[tokio::test]
async fn the_serve_worker_takes_requests_from_the_queue_until_shutdown() {
    let h = Harness::new();
    let id = interaction_of(&h.ingest_fixture("email/new/thankful-message.eml").await);
    // What `mailroom serve` wires: the embedded handoff service and its worker.
    let (service, local) = mailroom::adapters::local_crm::embedded_handoff_service(&h.backend).expect("composed");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(mailroom::usecases::handoff::run_worker(service.clone(), async {
        let _ = stopped.await;
    }));
    let request = HandoffRequest::Interaction { interaction_id: id.clone(), contact_policy: ContactPolicy::Automatic };
    service.queue.send(&request.to_body(), std::time::Duration::ZERO).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while local.list_cases(1).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the worker did not hand off in time");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), worker).await.expect("stops").unwrap();
    assert_eq!(service.queue.depth().await.unwrap(), 0);
}
