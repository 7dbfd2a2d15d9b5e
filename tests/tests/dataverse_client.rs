//! The Dataverse client against the strict emulator on loopback: headers, ids from OData-EntityId,
//! `$filter` escaping, records as Dataverse stores them, 429 / 5xx / 401 / 403 / 400 handling and
//! the concurrency cap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::adapters::dataverse::DataverseOptions;
use mailroom::domain::crm::{ActivityId, ContactId, IncidentId, NoteId, OwnerKind, OwnerRef, TicketProperties};
use mailroom::domain::ids::EmailAddress;
use mailroom::ports::crm::{
    Crm, CrmError, EmailParty, NewContact, NewEmailActivity, NewIncident, NewNote, NoteAttachment,
};
use mailroom_tests::dataverse::{dataverse, fast_options};
use serde_json::Value;

fn email(s: &str) -> EmailAddress {
    EmailAddress::parse(s).unwrap()
}

fn incident(id: &str, customer: &ContactId) -> NewIncident {
    NewIncident {
        id: IncidentId::derive(id),
        title: "billing - Ana Ng".into(),
        description: "Channel: email".into(),
        customer: customer.clone(),
        origin: 2,
        priority: Some(1),
        owner: None,
        email: Some(email("ana@example.com")),
        properties: TicketProperties::from_validated([("new_region".to_owned(), 100000001)].into()),
    }
}

#[tokio::test]
async fn records_are_created_as_dataverse_stores_them() {
    let Some(env) = dataverse().await else { return };
    let crm = env.client();
    let contact = crm
        .create_contact(&NewContact {
            id: ContactId::derive("ana"),
            first_name: Some("Ana".into()),
            last_name: "O'Neil".into(),
            email: email("a+b@example.com"),
        })
        .await
        .expect("contact created");
    assert_eq!(contact.full_name.as_deref(), Some("Ana O'Neil"), "fullname computed by the server");
    assert!(contact.created_on.is_some());

    // `+`, `@` and `'` survive the $filter; matching is case-insensitive.
    let found = crm.find_contacts_by_email(&email("A+B@example.com")).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let quoted = crm
        .create_contact(&NewContact {
            id: ContactId::derive("quote"),
            first_name: None,
            last_name: "Q".into(),
            email: email("o'brien@example.com"),
        })
        .await
        .unwrap();
    assert_eq!(crm.find_contacts_by_email(&email("o'brien@example.com")).await.unwrap()[0].id, quoted.id);

    let mut new = incident("case-1", &contact.id);
    new.owner = Some(OwnerRef { kind: OwnerKind::Team, id: env.support_team.clone() });
    let created = crm.create_incident(&new).await.expect("incident created");
    assert_eq!(created.id, new.id, "the id Mailroom chose");
    assert!(created.ticket_number.as_str().starts_with("CAS-"), "{:?}", created.ticket_number);
    assert_eq!(created.customer.as_ref(), Some(&contact.id));
    // Creating it again (a retry whose first answer was lost) returns the same incident.
    let again = crm.create_incident(&new).await.expect("idempotent");
    assert_eq!(again.ticket_number, created.ticket_number);
    crm.add_to_queue(&env.support_queue, &created.id).await.unwrap();
    crm.add_to_queue(&env.billing_queue, &created.id).await.unwrap(); // moves it

    let activity = NewEmailActivity {
        id: ActivityId::derive("m1"),
        incident: created.id.clone(),
        subject: "Invoice <5531>".into(),
        body: "Line 1\nLine 2 & more".into(),
        incoming: true,
        from: EmailParty::Contact(contact.id.clone(), email("a+b@example.com")),
        to: vec![EmailParty::Address(email("support@example.com"))],
        cc: vec![],
        sent_at: chrono::Utc::now(),
    };
    crm.add_email_activity(&activity).await.unwrap();
    crm.add_email_activity(&activity).await.expect("a duplicate activity is success");
    crm.add_note(&NewNote {
        id: NoteId::derive("n1"),
        incident: created.id.clone(),
        subject: "Full transcript".into(),
        text: "everything".into(),
        attachment: Some(NoteAttachment {
            file_name: "t.txt".into(),
            mime_type: "text/plain".into(),
            bytes: b"hi".to_vec(),
        }),
    })
    .await
    .unwrap();

    let state = env.state().await;
    let incidents = state["tables"]["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1);
    let i = &incidents[0];
    assert_eq!(i["incidentid"], new.id.as_str());
    assert_eq!(i["caseorigincode"], 2);
    assert_eq!(i["prioritycode"], 1);
    assert_eq!(i["new_region"], 100000001);
    assert_eq!(i["statecode"], 0);
    assert_eq!(i["customerid"], serde_json::json!(["contacts", contact.id.as_str()]));
    assert_eq!(i["primarycontactid"], serde_json::json!(["contacts", contact.id.as_str()]));
    assert_eq!(i["ownerid"], serde_json::json!(["teams", env.support_team.as_str()]));
    assert_eq!(i["emailaddress"], "ana@example.com");
    let items = state["tables"]["queueitems"].as_array().unwrap();
    assert_eq!(items.len(), 1, "AddToQueue moves the existing queue item");
    assert_eq!(items[0]["queueid"], serde_json::json!(["queues", env.billing_queue.as_str()]));
    let emails = state["tables"]["emails"].as_array().unwrap();
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0]["directioncode"], false, "incoming");
    assert_eq!(emails[0]["description"], "Line 1<br>Line 2 &amp; more");
    assert_eq!(emails[0]["regardingobjectid"], serde_json::json!(["incidents", created.id.as_str()]));
    let parties = state["activityparties"].as_array().unwrap();
    assert_eq!(parties.len(), 2);
    assert!(parties.iter().any(|p| p["participationtypemask"] == 1 && p["partyid"][1] == contact.id.as_str()));
    assert!(parties.iter().any(|p| p["participationtypemask"] == 2 && p["addressused"] == "support@example.com"));
    let notes = state["tables"]["annotations"].as_array().unwrap();
    assert_eq!(notes[0]["documentbody"], "aGk=");
    assert_eq!(notes[0]["filesize"], 2);

    // Every request carried the Web API headers and a token.
    let log = env.requests().await;
    for r in log["requests"].as_array().unwrap() {
        assert_eq!(r["headers"]["OData-Version"], "4.0", "{r}");
        assert_eq!(r["headers"]["OData-MaxVersion"], "4.0", "{r}");
        assert_eq!(r["headers"]["Accept"], "application/json", "{r}");
        assert_eq!(r["authorized"], true);
        if r["method"] == "POST" {
            assert!(r["headers"]["Content-Type"].as_str().unwrap().starts_with("application/json"));
        }
    }
}

#[tokio::test]
async fn metadata_identity_and_privileges() {
    let Some(env) = dataverse().await else { return };
    let crm = env.client();
    let sets = crm.incident_option_sets().await.unwrap();
    let region = sets.iter().find(|s| s.column == "new_region").expect("custom choice column");
    assert!(region.options.iter().any(|o| o.value == 100000002 && o.labels.contains(&"Asie-Pacifique".to_owned())));
    assert!(sets.iter().any(|s| s.column == "prioritycode"));
    assert!(!sets.iter().any(|s| s.column == "statecode"), "state columns are not picklists");
    assert_eq!(crm.max_upload_bytes().await.unwrap(), 5_242_880);
    let me = crm.who_am_i().await.unwrap();
    assert_eq!(me.user_id, env.app_user);
    let privileges = crm.user_privileges(&me.user_id).await.unwrap();
    assert!(privileges.iter().any(|p| p == "prvCreateIncident"));
    assert!(crm.queue_exists(&env.support_queue).await.unwrap());
    assert!(!crm.queue_exists(&mailroom::domain::crm::CrmQueueId::derive("nope")).await.unwrap());
    assert!(crm.owner_exists(&OwnerRef { kind: OwnerKind::Systemuser, id: env.ana.clone() }).await.unwrap());
    assert!(!crm.owner_exists(&OwnerRef { kind: OwnerKind::Team, id: env.ana.clone() }).await.unwrap());
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried() {
    let Some(env) = dataverse().await else { return };
    let crm = env.client();
    env.fail(429, 2, "GET", "WhoAmI", 1).await;
    let started = Instant::now();
    crm.who_am_i().await.expect("succeeds after two 429s");
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After honoured: {:?}", started.elapsed());

    env.fail(503, 2, "GET", "WhoAmI", 0).await;
    env.fail(502, 1, "GET", "WhoAmI", 0).await;
    crm.who_am_i().await.expect("succeeds after 5xx with backoff");

    // Longer than the client waits: reported with the wait, for the queue to retry later.
    env.fail(429, 1, "GET", "WhoAmI", 60).await;
    match crm.who_am_i().await {
        Err(e @ CrmError::Unavailable { .. }) => {
            assert!(e.is_transient());
            assert_eq!(e.retry_after(), Some(Duration::from_secs(60)));
        }
        other => panic!("{other:?}"),
    }
    // Keeps failing: gives up after max_attempts, transient.
    env.fail(500, 10, "GET", "WhoAmI", 0).await;
    let e = crm.who_am_i().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let log = env.requests().await;
    assert!(log["requests"].as_array().unwrap().iter().filter(|r| r["status"] == 500).count() == 4);
}

#[tokio::test]
async fn a_401_is_retried_once_with_a_fresh_token() {
    let Some(env) = dataverse().await else { return };
    let crm = env.client();
    crm.who_am_i().await.unwrap();
    env.identity_control("revoke", serde_json::json!({ "client_id": env.client_id })).await;
    crm.who_am_i().await.expect("the revoked token is replaced once");
    let tokens_401 = env.requests().await["requests"].as_array().unwrap().iter().filter(|r| r["status"] == 401).count();
    assert_eq!(tokens_401, 1);

    let wrong = env.client_as(&env.client_id, "not-the-secret", fast_options());
    match wrong.who_am_i().await {
        Err(CrmError::SignInRefused { code, description, .. }) => {
            assert_eq!(code, "invalid_client");
            assert!(description.contains("AADSTS7000215"), "{description}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refusals_name_the_privilege_or_the_property() {
    let Some(env) = dataverse().await else { return };
    let limited = env.client_as(&env.limited_client_id, &env.limited_client_secret, fast_options());
    let contact = limited
        .create_contact(&NewContact {
            id: ContactId::derive("c"),
            first_name: None,
            last_name: "X".into(),
            email: email("x@example.com"),
        })
        .await
        .unwrap();
    match limited.create_incident(&incident("c1", &contact.id)).await {
        Err(e @ CrmError::MissingPrivilege { .. }) => {
            assert_eq!(e.missing_privilege(), Some("prvCreateIncident"));
            assert!(!e.is_transient());
            assert!(e.to_string().contains("lacks the prvCreateIncident privilege"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    let crm = env.client();
    let mut long = incident("c2", &contact.id);
    long.description = "x".repeat(2001);
    match crm.create_incident(&long).await {
        Err(CrmError::InvalidProperty { property, code, message, .. }) => {
            assert_eq!(property, "description");
            assert_eq!(code, "0x80044331");
            assert!(message.contains("maximum allowed length of '2000'"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut bad = incident("c3", &contact.id);
    bad.properties = TicketProperties::from_validated([("new_region".to_owned(), 5)].into());
    match crm.create_incident(&bad).await {
        Err(CrmError::InvalidProperty { property, message, .. }) => {
            assert_eq!(property, "new_region");
            assert!(message.contains("Accepted Values: 100000000,100000001,100000002"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut unknown = incident("c4", &contact.id);
    unknown.properties = TicketProperties::from_validated([("new_colour".to_owned(), 1)].into());
    match crm.create_incident(&unknown).await {
        Err(CrmError::InvalidProperty { property, .. }) => assert_eq!(property, "new_colour"),
        other => panic!("{other:?}"),
    }
    let missing = incident("c5", &ContactId::derive("nobody"));
    assert!(matches!(crm.create_incident(&missing).await, Err(CrmError::NotFound { .. })));
    assert!(matches!(
        crm.add_to_queue(&mailroom::domain::crm::CrmQueueId::derive("nope"), &IncidentId::derive("c1")).await,
        Err(CrmError::NotFound { .. })
    ));
    env.fail(403, 1, "GET", "WhoAmI", 0).await;
    assert_eq!(crm.who_am_i().await.unwrap_err().missing_privilege(), Some("prvCreateIncident"));
}

#[tokio::test]
async fn concurrency_is_capped() {
    let Some(env) = dataverse().await else { return };
    env.control("settings", serde_json::json!({ "latency_ms": 150 })).await;
    let crm = Arc::new(env.client_as(
        &env.client_id,
        &env.client_secret,
        DataverseOptions { max_concurrency: 3, ..fast_options() },
    ));
    crm.who_am_i().await.unwrap(); // the token first, so the burst is Web API calls only
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let crm = crm.clone();
            tokio::spawn(async move { crm.who_am_i().await.map(|_| ()) })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let most: Value = env.requests().await["max_in_flight"].clone();
    assert_eq!(most, 3, "at most 3 requests in flight");
}
