//! The contacts directory against the Graph emulator: identities merged by email into one contact
//! each, the required order, search and filter, paging through a large tenant, and presence from
//! the main identity (contact centre, then Teams in batches and cached, then the other directory).

use std::time::Duration;

use mailroom::domain::agent::Role;
use mailroom::domain::ids::AgentId;
use mailroom::domain::presence::ChosenPresence;
use mailroom::domain::teams::TeamsUserId;
use mailroom::ports::teams::TeamsGraph;
use mailroom_tests::graph::{agent, fast_graph_options, graph_tenant, teams_api};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn names(v: &Value) -> Vec<String> {
    v["contacts"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

fn find<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["contacts"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} in {v}"))
}

fn kinds(c: &Value) -> Vec<&str> {
    c["identities"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect()
}

const DIRECTORY_CSV: &str = "id,name,email,job_title,phone,presence\r\n\
p-ana,Ana on the phone,ana@example.com,,+1 555 0100,busy\r\n\
p-carl,Carl B,carl.b@corp.example,Sales,+1 555 0101,available\r\n\
p-nora,Nora Phone,,Reception,+1 555 0102,away\r\n\
p-adam,Adam Phone,adam@example.com,,,\r\n\
p-bad,,x@example.com,,,\r\n";

#[tokio::test]
async fn identities_merge_by_email_into_one_contact_in_the_required_order() {
    let Some(t) = graph_tenant(json!([
        { "displayName": "Ana in Teams", "mail": "ana@example.com", "jobTitle": "Customer Service Agent" },
        { "displayName": "Alex Weber", "mail": "alex@example.com", "jobTitle": "Claims Handler" },
        { "displayName": "Bea Teams", "mail": "bea@example.com" },
        // Found by the directory file through the sign-in name, not the mail.
        { "displayName": "Carl Both", "mail": "carl@example.com", "userPrincipalName": "carl.b@corp.example" },
        { "displayName": "Disabled Person", "mail": "gone@example.com", "accountEnabled": false },
    ]))
    .await
    else {
        return;
    };
    let api = teams_api(
        &t,
        &[
            agent("ana", "Ana Agent", "ana@example.com", Role::Agent),
            agent("ada", "Ada Admin", "ada@example.com", Role::Admin),
            agent("zed", "Zed Agent", "zed@example.com", Role::Agent),
            agent("bot", "Assistant", "bot@example.com", Role::AiAssistant),
        ],
        |_| {},
    )
    .await;
    let admin = api.token("ada", Role::Admin);
    let ana = api.token("ana", Role::Agent);

    // Only an admin syncs or imports.
    assert_eq!(api.post("/v1/contacts/sync", &ana, json!({})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        api.put_file("/v1/contacts/other-directory", &ana, "text/csv", DIRECTORY_CSV).await.0,
        StatusCode::FORBIDDEN
    );

    let (status, sync) = api.post("/v1/contacts/sync", &admin, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    assert_eq!(sync["users"], 4, "the disabled account is not imported: {sync}");
    let (status, import) = api.put_file("/v1/contacts/other-directory", &admin, "text/csv", DIRECTORY_CSV).await;
    assert_eq!(status, StatusCode::OK, "{import}");
    assert_eq!(import["imported"], 4);
    assert_eq!(import["rejected"][0]["line"], 6, "{import}");

    let (status, list) = api.get("/v1/contacts", &ana).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        names(&list),
        [
            // Contact-centre agents, with or without other identities (no AI assistant).
            "Ada Admin",
            "Ana Agent",
            "Zed Agent",
            // Only the other directory.
            "Adam Phone",
            "Nora Phone",
            // Only Teams.
            "Alex Weber",
            "Bea Teams",
            // Teams and the other directory.
            "Carl Both",
        ]
    );
    assert_eq!(list["total"], 8);
    let total_identities: usize =
        list["contacts"].as_array().unwrap().iter().map(|c| c["identities"].as_array().unwrap().len()).sum();
    assert_eq!(total_identities, 3 + 4 + 4, "every identity exactly once");
    let ana_contact = find(&list, "Ana Agent");
    assert_eq!(kinds(ana_contact), ["contact_centre", "teams", "other_directory"]);
    assert_eq!(ana_contact["job_title"], "Customer Service Agent");
    assert_eq!(ana_contact["identities"][2]["phone"], "+1 555 0100");
    let carl = find(&list, "Carl Both");
    assert_eq!(kinds(carl), ["teams", "other_directory"]);
    assert_eq!(list["sources"]["teams_count"], 4);
    assert_eq!(list["sources"]["other_count"], 4);

    // Search by name (any identity's, any case) and filter by identity.
    assert_eq!(names(&api.get("/v1/contacts?search=WEBER", &ana).await.1), ["Alex Weber"]);
    assert_eq!(names(&api.get("/v1/contacts?search=on%20the%20phone", &ana).await.1), ["Ana Agent"]);
    assert_eq!(
        names(&api.get("/v1/contacts?identity=other_directory", &ana).await.1),
        ["Ana Agent", "Adam Phone", "Nora Phone", "Carl Both"]
    );
    assert_eq!(names(&api.get("/v1/contacts?identity=teams&search=o", &ana).await.1), ["Ana Agent", "Carl Both"]);
    assert_eq!(names(&api.get("/v1/contacts?limit=2&offset=2", &ana).await.1), ["Zed Agent", "Adam Phone"]);
    let (status, bad) = api.get("/v1/contacts?identity=fax", &ana).await;
    assert_eq!((status, bad["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("identity")), "{bad}");

    // One contact by id.
    let id = ana_contact["id"].as_str().unwrap();
    let (status, one) = api.get(&format!("/v1/contacts/{id}"), &ana).await;
    assert_eq!((status, one["name"].as_str()), (StatusCode::OK, Some("Ana Agent")));

    // A user leaving the tenant leaves the directory at the next sync; syncing again duplicates nothing.
    t.control("user", json!({ "mail": "bea@example.com", "accountEnabled": false })).await;
    let (_, sync) = api.post("/v1/contacts/sync", &admin, json!({})).await;
    assert_eq!((sync["users"].as_u64(), sync["removed"].as_u64()), (Some(3), Some(1)), "{sync}");
    let list = api.get("/v1/contacts", &ana).await.1;
    assert!(!names(&list).contains(&"Bea Teams".to_owned()));
    assert_eq!(list["total"], 7);

    // The JSON form of the file replaces the directory too.
    let (status, import) = api
        .call(
            reqwest::Method::PUT,
            "/v1/contacts/other-directory",
            Some(&admin),
            Some(json!({ "people": [{ "id": "p-1", "name": "Only One", "presence": "dnd" }] })),
        )
        .await;
    assert_eq!(
        (status, import["imported"].as_u64(), import["removed"].as_u64()),
        (StatusCode::OK, Some(1), Some(4)),
        "{import}"
    );
    let (status, bad) = api
        .call(
            reqwest::Method::PUT,
            "/v1/contacts/other-directory",
            Some(&admin),
            Some(json!({ "people": [{ "id": "p-1", "name": "X", "email": "nope" }] })),
        )
        .await;
    assert_eq!((status, bad["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("people[0].email")), "{bad}");
}

#[tokio::test]
async fn a_large_tenant_is_synced_in_pages_of_999() {
    let Some(t) = graph_tenant(json!([])).await else { return };
    t.control("users", json!({ "generate": 2500 })).await;
    let api = teams_api(&t, &[agent("ada", "Ada Admin", "ada@example.com", Role::Admin)], |_| {}).await;
    let (status, sync) = api.post("/v1/contacts/sync", &api.token("ada", Role::Admin), json!({})).await;
    assert_eq!((status, sync["users"].as_u64()), (StatusCode::OK, Some(2500)), "{sync}");
    let requests = t.requests("users").await;
    assert_eq!(requests.len(), 3, "2500 users in pages of 999: {requests:?}");
    assert!(requests[0]["query"].as_str().unwrap().contains("$top=999"), "{requests:?}");
    assert!(requests.iter().all(|r| r["app_only"] == true && r["status"] == 200));
}

#[tokio::test]
async fn presence_comes_from_the_contact_centre_then_teams_then_the_other_directory() {
    let Some(t) = graph_tenant(json!([
        { "displayName": "Ana Agent", "mail": "ana@example.com", "presence": { "availability": "DoNotDisturb", "activity": "Presenting" } },
        { "displayName": "Alex Weber", "mail": "alex@example.com", "presence": { "availability": "Busy", "activity": "InAMeeting" } },
        { "displayName": "Sam Nolicense", "mail": "sam@example.com", "teams": false },
        { "displayName": "Bea Teams", "mail": "bea@example.com", "presence": { "availability": "BeRightBack", "activity": "BeRightBack" } },
    ]))
    .await
    else {
        return;
    };
    let api = teams_api(
        &t,
        &[
            agent("ana", "Ana Agent", "ana@example.com", Role::Agent),
            agent("ada", "Ada Admin", "ada@example.com", Role::Admin),
        ],
        |s| s.presence_ttl = Duration::from_millis(1500),
    )
    .await;
    let admin = api.token("ada", Role::Admin);
    api.post("/v1/contacts/sync", &admin, json!({})).await;
    let csv = "id,name,email,presence\np-sam,Sam Phone,sam@example.com,busy\np-nora,Nora Phone,,away\n";
    assert_eq!(api.put_file("/v1/contacts/other-directory", &admin, "text/csv", csv).await.0, StatusCode::OK);

    let presence = |list: &Value, name: &str| {
        let p = &find(list, name)["presence"];
        (p["availability"].as_str().unwrap().to_owned(), p["source"].as_str().map(str::to_owned), p["detail"].clone())
    };
    let list = api.get("/v1/contacts", &admin).await.1;
    // An agent: the contact centre wins (a new agent is working offline), not Teams' Do Not Disturb.
    assert_eq!(presence(&list, "Ana Agent"), ("away".into(), Some("contact_centre".into()), json!("working_offline")));
    // Teams where there is no contact-centre identity.
    assert_eq!(presence(&list, "Alex Weber"), ("busy".into(), Some("teams".into()), json!("Busy/InAMeeting")));
    assert_eq!(presence(&list, "Bea Teams"), ("away".into(), Some("teams".into()), json!("BeRightBack/BeRightBack")));
    // Teams knows nothing of an unlicensed user: the other directory's presence shows, as of the import.
    assert_eq!(presence(&list, "Sam Nolicense"), ("busy".into(), Some("other_directory".into()), json!("busy")));
    assert!(find(&list, "Sam Nolicense")["presence"]["as_of"].is_string());
    assert_eq!(presence(&list, "Nora Phone"), ("away".into(), Some("other_directory".into()), json!("away")));

    // One batched call for the page, none for agents.
    let calls = t.requests("getPresencesByUserId").await;
    assert_eq!(calls.len(), 1, "{calls:?}");

    // Cached briefly: a change in Teams shows once the cache expires.
    t.control(
        "user",
        json!({ "mail": "alex@example.com", "presence": { "availability": "Available", "activity": "Available" } }),
    )
    .await;
    let list = api.get("/v1/contacts", &admin).await.1;
    assert_eq!(presence(&list, "Alex Weber").0, "busy");
    assert_eq!(t.requests("getPresencesByUserId").await.len(), 1, "served from the cache");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let list = api.get("/v1/contacts", &admin).await.1;
    assert_eq!(presence(&list, "Alex Weber").0, "available");
    assert_eq!(t.requests("getPresencesByUserId").await.len(), 2);

    // The agent becomes available in the contact centre.
    api.routing.set_presence(&AgentId::parse("ana").unwrap(), ChosenPresence::Available).await.unwrap();
    let list = api.get("/v1/contacts", &admin).await.1;
    assert_eq!(presence(&list, "Ana Agent"), ("available".into(), Some("contact_centre".into()), json!("available")));
}

#[tokio::test]
async fn presence_is_read_in_batches_of_at_most_650() {
    let Some(t) = graph_tenant(json!([])).await else { return };
    t.control("users", json!({ "generate": 1400 })).await;
    let ids: Vec<TeamsUserId> = t.state().await["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| TeamsUserId::parse(u["id"].as_str().unwrap()).unwrap())
        .collect();
    let env = std::collections::HashMap::from([
        ("MAILROOM_GRAPH_TENANT", t.tenant.clone()),
        ("MAILROOM_GRAPH_CLIENT_ID", t.client_id.clone()),
        ("MAILROOM_GRAPH_CLIENT_SECRET", t.client_secret.clone()),
        ("MAILROOM_GRAPH_URL", format!("{}/v1.0", t.server)),
        ("MAILROOM_GRAPH_AUTHORITY", t.server.clone()),
    ]);
    let config = mailroom::adapters::graph::GraphConfig::from_lookup(|n| env.get(n).cloned()).unwrap().unwrap();
    let (graph, _) = config.clients(t.client_secret.clone().into(), fast_graph_options());
    let presences = graph.presences(&ids).await.unwrap();
    assert_eq!(presences.len(), 1400);
    let calls = t.requests("getPresencesByUserId").await;
    assert_eq!(calls.len(), 3, "650 + 650 + 100: {calls:?}");
    assert!(calls.iter().all(|c| c["status"] == 200));
}
