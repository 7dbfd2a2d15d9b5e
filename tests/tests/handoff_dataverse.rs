//! The handoff use cases against the strict Dataverse emulator: the incident and contact as
//! Dynamics stores them, later emails, the three screen-pop cases, 429 / 5xx / 403 injected, a
//! redelivered and a re-run handoff, a long thread, attachments, the AI handoff, and the settings
//! and connection check.

use std::collections::BTreeMap;
use std::time::Duration;

use mailroom::domain::crm::{ContactResolution, HandoffStage, TicketPropertyInput, dataverse_len};
use mailroom::ports::WorkQueue;
use mailroom::usecases::crm_settings::{
    ConnectionStatus, SettingsError, save_settings, settings_view, verify_connection,
};
use mailroom::usecases::dead_letters;
use mailroom::usecases::handoff::{
    AiHandoffRequest, CaseStatus, ContactPolicy, HandoffError, HandoffRequest, NewContactInput, WorkOutcome, drain,
    notify_message,
};
use mailroom_tests::dataverse::{DataverseEnv, Harness, dataverse, interaction_of};
use secrecy::SecretString;
use serde_json::{Value, json};

fn ai_request() -> AiHandoffRequest {
    let path = mailroom_tests::tests_dir().join("fixtures/handoff/ai-handoff.json");
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("valid AI handoff request")
}

fn one<'a>(rows: &'a [Value], what: &str) -> &'a Value {
    assert_eq!(rows.len(), 1, "exactly one {what}: {rows:?}");
    &rows[0]
}

async fn handoff(h: &Harness, request: &HandoffRequest) {
    h.queue.send(&request.to_body(), Duration::ZERO).await.unwrap();
    assert_eq!(drain(&h.service, Duration::ZERO).await.unwrap(), 1);
}

async fn ready(env: &DataverseEnv) -> Harness {
    let h = Harness::new();
    h.use_dataverse(env, |s| {
        s.ticket_properties = Some(BTreeMap::from([
            ("new_productline".to_owned(), TicketPropertyInput::Label("printers".into())),
            ("new_region".to_owned(), TicketPropertyInput::Value(100000001)),
        ]))
    })
    .await;
    h
}

#[tokio::test]
async fn email_handoff_creates_the_case_as_dynamics_stores_it() {
    let Some(env) = dataverse().await else { return };
    let h = ready(&env).await;
    let id = interaction_of(&h.ingest_fixture("email/thread/01-original.eml").await);
    assert_eq!(interaction_of(&h.ingest_fixture("email/thread/02-reply-in-reply-to.eml").await), id);
    let request = HandoffRequest::Interaction { interaction_id: id.clone(), contact_policy: ContactPolicy::Automatic };
    handoff(&h, &request).await;
    handoff(&h, &request).await; // redelivered

    let state = env.state().await;
    let tables = &state["tables"];
    let contact = one(tables["contacts"].as_array().unwrap(), "contact");
    assert_eq!(contact["firstname"], "Alice");
    assert_eq!(contact["lastname"], "Moreau");
    assert_eq!(contact["fullname"], "Alice Moreau");
    assert_eq!(contact["emailaddress1"], "alice@example.org");
    let incident = one(tables["incidents"].as_array().unwrap(), "incident");
    assert_eq!(incident["title"], "general - Alice Moreau");
    assert_eq!(incident["caseorigincode"], 2);
    assert_eq!(incident["prioritycode"], 2, "the configured default");
    assert_eq!(incident["new_productline"], 100000000, "label mapped when the admin saved it");
    assert_eq!(incident["new_region"], 100000001);
    assert_eq!(incident["customerid"], json!(["contacts", contact["contactid"]]));
    assert_eq!(incident["ownerid"], json!(["systemusers", env.ana.as_str()]));
    assert_eq!(incident["emailaddress"], "alice@example.org");
    let description = incident["description"].as_str().unwrap();
    assert!(description.starts_with("Channel: email\nClassification: general\nSentiment: "), "{description}");
    assert!(description.contains("\n\n--- 2025-06-09 08:02 UTC | Alice Moreau <alice@example.org> (customer)\nSubject: Order 48213 arrived damaged\n"), "{description}");
    assert_eq!(description.matches("\n--- ").count(), 2);
    let item = one(tables["queueitems"].as_array().unwrap(), "queue item");
    assert_eq!(item["queueid"], json!(["queues", env.support_queue.as_str()]));
    assert_eq!(item["objectid"], json!(["incidents", incident["incidentid"]]));
    let emails = tables["emails"].as_array().unwrap();
    assert_eq!(emails.len(), 2);
    assert!(emails.iter().all(|e| e["regardingobjectid"] == json!(["incidents", incident["incidentid"]])));

    let record = h.service.case_for_interaction(&id).await.unwrap().unwrap();
    assert_eq!(record.ticket_number.as_ref().map(|t| t.as_str()), incident["ticketnumber"].as_str());
    assert_eq!(record.contact_resolution, Some(ContactResolution::CreatedFromSender));

    // A later email of the interaction: appended, no new incident.
    let later = h.ingest_fixture("email/thread/04-references-only.eml").await;
    assert_eq!(interaction_of(&later), id);
    notify_message(h.queue.as_ref(), &id, later.entry.fingerprint.as_ref().unwrap()).await.unwrap();
    drain(&h.service, Duration::ZERO).await.unwrap();
    assert_eq!(env.rows("incidents").await.len(), 1);
    assert_eq!(env.rows("emails").await.len(), 3);

    // Mailroom's record lost (another data directory, same mail): the deterministic ids find the
    // incident, contact and emails again instead of creating them twice.
    let other = Harness::new();
    other.use_dataverse(&env, |_| {}).await;
    let again = interaction_of(&other.ingest_fixture("email/thread/01-original.eml").await);
    assert_eq!(again, id);
    let record = other.service.handoff_interaction(&again, ContactPolicy::Automatic).await.unwrap();
    assert_eq!(record.ticket_number.as_ref().map(|t| t.as_str()), incident["ticketnumber"].as_str());
    assert_eq!(env.rows("incidents").await.len(), 1);
    assert_eq!(env.rows("contacts").await.len(), 1);
    assert_eq!(env.rows("emails").await.len(), 3);
}

#[tokio::test]
async fn screen_pop_with_none_one_and_several_matching_contacts() {
    let Some(env) = dataverse().await else { return };
    let h = ready(&env).await;

    // None: nothing is created until the agent creates the contact; then the case is linked to it.
    let alice = interaction_of(&h.ingest_fixture("email/thread/01-original.eml").await);
    let pop = h.service.screen_pop(&alice).await.unwrap();
    assert_eq!(pop.matches, Some(0));
    assert!(matches!(pop.case, CaseStatus::AwaitingContact { .. }));
    assert!(pop.new_contact.is_some());
    assert!(env.rows("contacts").await.is_empty() && env.rows("incidents").await.is_empty(), "no ghost records");
    assert!(matches!(h.service.check_wrap_up(&alice).await, Err(HandoffError::ContactRequired { .. })));
    let record = h
        .service
        .create_contact_and_link(
            &alice,
            NewContactInput { first_name: Some("Alice".into()), last_name: "Moreau".into(), email: None },
        )
        .await
        .unwrap();
    let incident = one(&env.rows("incidents").await, "incident").clone();
    assert_eq!(incident["customerid"][1], record.contact.as_ref().unwrap().as_str());
    h.service.check_wrap_up(&alice).await.unwrap();

    // One: linked at once, with the inbound email on the case.
    let priya_contact = env.seed_contact("Priya", "Shah", [Some("priya.shah@example.net"), None, None]).await;
    let priya = interaction_of(&h.ingest_fixture("email/new/angry-complaint.eml").await);
    let pop = h.service.screen_pop(&priya).await.unwrap();
    assert_eq!(pop.matches, Some(1));
    let CaseStatus::Created { incident_id, contact_id, .. } = &pop.case else { panic!("{pop:?}") };
    assert_eq!(contact_id, &priya_contact);
    let emails = env.rows("emails").await;
    assert!(emails.iter().any(|e| e["regardingobjectid"][1] == incident_id.as_str()), "inbound email included");

    // Several: the case waits until the agent picks; then it is linked to the pick.
    let first = env.seed_contact("Oscar", "Lindqvist", [Some("oscar.lindqvist@example.org"), None, None]).await;
    let second =
        env.seed_contact("O.", "Lindqvist", [Some("old@example.org"), Some("Oscar.Lindqvist@example.org"), None]).await;
    let oscar = interaction_of(&h.ingest_fixture("email/new/with-pdf-attachment.eml").await);
    let pop = h.service.screen_pop(&oscar).await.unwrap();
    assert_eq!(pop.matches, Some(2));
    assert_eq!(
        pop.contacts.iter().map(|c| (c.id.clone(), c.matched_on)).collect::<Vec<_>>(),
        vec![(first, 1), (second.clone(), 2)]
    );
    assert!(matches!(pop.case, CaseStatus::AwaitingContact { .. }) && pop.new_contact.is_none());
    let incidents_before = env.rows("incidents").await.len();
    assert_eq!(incidents_before, 2, "the third case waits");
    let linked = h.service.link_contact(&oscar, &second).await.unwrap();
    assert_eq!(linked.stage, HandoffStage::Created);
    let incidents = env.rows("incidents").await;
    let oscar_case = incidents.iter().find(|i| i["incidentid"] == linked.incident_id.as_str()).unwrap();
    assert_eq!(oscar_case["customerid"], json!(["contacts", second.as_str()]));
    assert!(matches!(
        h.service.link_contact(&oscar, &mailroom::domain::crm::ContactId::derive("nobody")).await,
        Err(HandoffError::ContactNotFound(_))
    ));
}

#[tokio::test]
async fn several_matches_in_automatic_mode_follow_the_rule_and_record_it() {
    let Some(env) = dataverse().await else { return };
    let h = ready(&env).await;
    let older = env.seed_contact("Priya", "S", [None, Some("priya.shah@example.net"), None]).await;
    let newer = env.seed_contact("Priya", "Shah", [Some("PRIYA.SHAH@example.net"), None, None]).await;
    let id = interaction_of(&h.ingest_fixture("email/new/angry-complaint.eml").await);
    let record = h.service.handoff_interaction(&id, ContactPolicy::Automatic).await.unwrap();
    assert_eq!(record.contact.as_ref(), Some(&newer), "emailaddress1 beats an older emailaddress2");
    assert_eq!(record.contact_resolution, Some(ContactResolution::MatchedAmbiguous));
    let ambiguity = record.ambiguity.unwrap();
    assert!(ambiguity.contains(newer.as_str()) && ambiguity.contains(older.as_str()), "{ambiguity}");
    assert_eq!(env.rows("contacts").await.len(), 2, "no contact created");
}

#[tokio::test]
async fn throttling_and_server_errors_during_a_handoff() {
    let Some(env) = dataverse().await else { return };
    let h = ready(&env).await;
    let id = interaction_of(&h.ingest_fixture("email/new/angry-complaint.eml").await);
    env.fail(429, 1, "POST", "incidents", 1).await;
    env.fail(503, 2, "POST", "emails", 0).await;
    env.fail(502, 1, "POST", "AddToQueue", 0).await;
    let request = HandoffRequest::Interaction { interaction_id: id.clone(), contact_policy: ContactPolicy::Automatic };
    assert_eq!(h.service.handle_work(&request.to_body()).await, WorkOutcome::Done);
    assert_eq!(env.rows("incidents").await.len(), 1);
    assert_eq!(env.rows("queueitems").await.len(), 1);

    // Dynamics asks for a long pause: the queue gets the work back with that delay.
    let other = interaction_of(&h.ingest_fixture("email/thread/01-original.eml").await);
    env.fail(429, 1, "POST", "contacts", 90).await;
    let request =
        HandoffRequest::Interaction { interaction_id: other.clone(), contact_policy: ContactPolicy::Automatic };
    match h.service.handle_work(&request.to_body()).await {
        WorkOutcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(90))),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.service.handle_work(&request.to_body()).await, WorkOutcome::Done);
    assert_eq!(env.rows("incidents").await.len(), 2);
}

#[tokio::test]
async fn a_refused_handoff_is_parked_with_the_reason_and_replays_after_the_fix() {
    let Some(env) = dataverse().await else { return };
    let h = Harness::new();
    h.use_dataverse(&env, |s| {
        s.client_id = Some(env.limited_client_id.clone());
        s.client_secret = Some(SecretString::from(env.limited_client_secret.clone()));
    })
    .await;
    let id = interaction_of(&h.ingest_fixture("email/new/angry-complaint.eml").await);
    handoff(&h, &HandoffRequest::Interaction { interaction_id: id.clone(), contact_policy: ContactPolicy::Automatic })
        .await;
    assert_eq!(h.queue.depth().await.unwrap(), 0);
    let parked = dead_letters::peek(h.dead_letters.as_ref(), 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    let body: Value = serde_json::from_str(&parked[0]).unwrap();
    assert_eq!(body["type"], "parked");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("create the case") && reason.contains("lacks the prvCreateIncident privilege"), "{reason}");
    let record = h.service.case_for_interaction(&id).await.unwrap().unwrap();
    assert!(record.last_error.as_deref().is_some_and(|e| e.contains("prvCreateIncident")));
    assert!(env.rows("incidents").await.is_empty());

    // The admin grants the privilege; the parked work replays unchanged.
    env.grant(&env.limited_client_id, &["prvCreateIncident"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dead_letters::replay(h.dead_letters.as_ref(), h.queue.as_ref(), 10).await.unwrap(), 1);
    drain(&h.service, Duration::ZERO).await.unwrap();
    assert_eq!(env.rows("incidents").await.len(), 1);
    let record = h.service.case_for_interaction(&id).await.unwrap().unwrap();
    assert!(record.is_created() && record.last_error.is_none());
}

#[tokio::test]
async fn a_long_thread_is_cut_cleanly_and_attached_whole() {
    let Some(env) = dataverse().await else { return };
    let h = ready(&env).await;
    let id = h.ingest_dir("handoff/long-thread").await;
    h.service.handoff_interaction(&id, ContactPolicy::Automatic).await.unwrap();
    let incident = one(&env.rows("incidents").await, "incident").clone();
    let description = incident["description"].as_str().unwrap();
    assert!(dataverse_len(description) <= 2000);
    assert!(
        description.ends_with("The full transcript (6 messages) is in the note \"Full transcript\".]"),
        "{description}"
    );
    let notes = env.rows("annotations").await;
    let note = notes.iter().find(|n| n["subject"] == "Full transcript").expect("transcript note");
    assert_eq!(note["objectid"], json!(["incidents", incident["incidentid"]]));
    assert_eq!(note["notetext"].as_str().unwrap().matches("\n--- 2025-06-").count(), 6);
    assert_eq!(note["filename"], "transcript.txt");
    assert_eq!(env.rows("emails").await.len(), 6);
}

#[tokio::test]
async fn attachments_are_copied_within_the_org_limit() {
    let Some(env) = dataverse().await else { return };
    let h = ready(&env).await;
    let id = interaction_of(&h.ingest_fixture("email/new/with-pdf-attachment.eml").await);
    h.service.handoff_interaction(&id, ContactPolicy::Automatic).await.unwrap();
    let notes = env.rows("annotations").await;
    let file = one(&notes, "note");
    assert!(file["filename"].as_str().unwrap().ends_with(".pdf"));
    assert_eq!(file["mimetype"], "application/pdf");
    assert!(file["filesize"].as_u64().unwrap() > 0);

    // An org with a tiny upload limit (its own environment: the same mail gives the same ids).
    let Some(small) = dataverse().await else { return };
    small.control("settings", json!({ "maxuploadfilesize": 64 })).await;
    let h3 = ready(&small).await;
    let id = interaction_of(&h3.ingest_fixture("email/new/with-pdf-attachment.eml").await);
    let record = h3.service.handoff_interaction(&id, ContactPolicy::Automatic).await.unwrap();
    assert!(!record.attachments[0].added);
    let notes = small.rows("annotations").await;
    let note = one(&notes, "note");
    assert!(note["subject"].as_str().unwrap().starts_with("Attachment not copied"));
    assert!(note.get("documentbody").is_none_or(Value::is_null));
}

#[tokio::test]
async fn ai_handoff_returns_the_incident_and_ticket_number() {
    let Some(env) = dataverse().await else { return };
    let h = ready(&env).await;
    let bot = mailroom::domain::ids::AgentId::parse("helper-bot").unwrap();
    let result = h.service.ai_handoff(&bot, ai_request()).await.unwrap();
    let incident = one(&env.rows("incidents").await, "incident").clone();
    assert_eq!(incident["incidentid"], result.incident_id.as_str());
    assert_eq!(incident["ticketnumber"], result.ticket_number.as_str());
    assert_eq!(incident["title"], "billing - Chloé Martin");
    assert_eq!(incident["new_region"], 100000001, "the AI's label, mapped");
    assert_eq!(incident["new_productline"], 100000002, "the AI's value over the admin's default");
    let description = incident["description"].as_str().unwrap();
    assert!(description.starts_with(
        "Channel: AI assistant\nClassification: billing\nSentiment: negative\nSummary: Customer was charged twice"
    ));
    assert!(description.contains("--- 2026-11-21 09:14 UTC | AI assistant helper-bot (assistant)\n"), "{description}");
    let contact = one(&env.rows("contacts").await, "contact").clone();
    assert_eq!((contact["firstname"].as_str(), contact["lastname"].as_str()), (Some("Chloé"), Some("Martin")));

    let again = h.service.ai_handoff(&bot, ai_request()).await.unwrap();
    assert!(again.replayed && again.ticket_number == result.ticket_number);
    assert_eq!(env.rows("incidents").await.len(), 1);

    let mut ambiguous = ai_request();
    ambiguous.idempotency_key = mailroom::domain::crm::IdempotencyKey::parse("k2").unwrap();
    ambiguous.ticket_properties =
        BTreeMap::from([("new_contactreason".to_owned(), TicketPropertyInput::Label("other".into()))]);
    let err = h.service.ai_handoff(&bot, ambiguous).await.unwrap_err();
    assert!(err.to_string().contains("names several options (100000000, 100000002)"), "{err}");
}

#[tokio::test]
async fn settings_and_connection_check() {
    let Some(env) = dataverse().await else { return };
    let h = ready(&env).await;
    let report = verify_connection(&h.runtime).await;
    assert_eq!(report.status, ConnectionStatus::Active, "{report:#?}");
    assert_eq!(report.user_id.as_ref(), Some(&env.app_user));
    let view = settings_view(&h.runtime).await.unwrap().unwrap();
    assert!(view.client_secret_set);
    assert!(!serde_json::to_string(&view).unwrap().contains(&env.client_secret), "the secret is write-only");

    // Saved again without the secret: the stored one is kept.
    h.use_dataverse(&env, |s| {
        s.client_secret = None;
        s.default_queue_id = None;
    })
    .await;
    let view = settings_view(&h.runtime).await.unwrap().unwrap();
    assert!(view.client_secret_set);
    assert!(view.warnings.iter().any(|w| w.contains("no default_queue_id")), "{view:?}");
    let report = verify_connection(&h.runtime).await;
    assert_eq!(report.status, ConnectionStatus::Problem);
    assert!(report.problems.iter().any(|p| p.contains("unassigned")), "{report:#?}");

    // A wrong secret: the sign-in is refused, in plain words.
    h.use_dataverse(&env, |s| s.client_secret = Some(SecretString::from("wrong".to_owned()))).await;
    let report = verify_connection(&h.runtime).await;
    assert_eq!(report.status, ConnectionStatus::Problem);
    let token = report.checks.iter().find(|c| c.name == "token").expect("token check");
    assert!(!token.ok && token.detail.contains("invalid_client"), "{token:?}");

    // Missing privileges, named with what they are for.
    h.use_dataverse(&env, |s| {
        s.client_id = Some(env.limited_client_id.clone());
        s.client_secret = Some(SecretString::from(env.limited_client_secret.clone()));
    })
    .await;
    env.revoke(&env.limited_client_id, &["prvAppendToQueue"]).await;
    let report = verify_connection(&h.runtime).await;
    let privileges = report.checks.iter().find(|c| c.name == "privileges").unwrap();
    assert!(!privileges.ok);
    assert!(privileges.detail.contains("prvCreateIncident (to create the case)"), "{}", privileges.detail);
    assert!(privileges.detail.contains("prvAppendToQueue"), "{}", privileges.detail);

    // A queue that does not exist, and ticket properties Dynamics would reject, caught on save.
    let bad_queue = mailroom::domain::crm::CrmQueueId::derive("nope").to_string();
    h.use_dataverse(&env, |s| s.default_queue_id = Some(bad_queue)).await;
    let report = verify_connection(&h.runtime).await;
    assert!(report.problems.iter().any(|p| p.contains("is not a queue of this environment")), "{report:#?}");
    let mut input = mailroom::usecases::crm_settings::CrmSettingsInput {
        backend: Some(mailroom::usecases::crm_settings::CrmBackend::Dataverse),
        environment_url: Some(env.url.clone()),
        tenant: Some(env.tenant.clone()),
        client_id: Some(env.client_id.clone()),
        client_secret: Some(SecretString::from(env.client_secret.clone())),
        authority: Some(env.server.clone()),
        ..Default::default()
    };
    input.ticket_properties = Some(BTreeMap::from([
        ("new_contactreason".to_owned(), TicketPropertyInput::Label("Other".into())),
        ("new_region".to_owned(), TicketPropertyInput::Value(42)),
    ]));
    match save_settings(&h.runtime, input).await {
        Err(SettingsError::Properties { field, problems }) => {
            assert_eq!(field, "ticket_properties");
            assert_eq!(problems.len(), 2, "{problems:?}");
        }
        other => panic!("{other:?}"),
    }
    let bad = mailroom::usecases::crm_settings::CrmSettingsInput {
        backend: Some(mailroom::usecases::crm_settings::CrmBackend::Dataverse),
        environment_url: Some("http://dynamics.example.com".into()),
        ..Default::default()
    };
    match save_settings(&h.runtime, bad).await {
        Err(SettingsError::Invalid { field, .. }) => assert_eq!(field, "environment_url"),
        other => panic!("{other:?}"),
    }
}
