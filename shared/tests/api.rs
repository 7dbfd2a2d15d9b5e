//! The agent API end to end against a real `mailroom serve`: mail arrives over SMTP, is offered
//! to exactly one available agent, accepted, transferred and ended, all through HTTP.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Server {
    child: Child,
    smtp: String,
    api: String,
    data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["serve", "--smtp-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut smtp, mut api) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while smtp.is_none() || api.is_none() {
        assert!(Instant::now() < deadline, "serve did not print its addresses");
        let mut line = String::new();
        out.read_line(&mut line).expect("stdout");
        if let Some(rest) = line.strip_prefix("SMTP listening on ") {
            smtp = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("API listening on ") {
            api = rest.split_whitespace().next().map(|u| u.trim_end_matches("/v1").to_owned());
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    Server { child, smtp: smtp.expect("smtp"), api: api.expect("api"), data }
}

fn token(server: &Server, agent: &str, role: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailroom"));
    cmd.args(["token", "--agent", agent, "--data-dir"]).arg(server.data.path());
    if let Some(r) = role {
        cmd.args(["--role", r]);
    }
    let out = cmd.output().expect("mailroom token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

fn smtp_send(addr: &str, from: &str, subject: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut expect = |code: &str| loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("reply");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect("220");
    for (cmd, code) in [
        ("EHLO test".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        ("RCPT TO:<support@example.com>".to_string(), "250"),
        ("DATA".to_string(), "354"),
    ] {
        write!(stream, "{cmd}\r\n").expect("write");
        expect(code);
    }
    let id = uuid::Uuid::new_v4();
    write!(stream, "From: {from}\r\nTo: support@example.com\r\nSubject: {subject}\r\nMessage-ID: <{id}@example.org>\r\n\r\nHello\r\n.\r\n")
        .expect("write");
    expect("250");
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let mut req = match method {
            "GET" => self.http.get(url),
            "PUT" => self.http.put(url),
            _ => self.http.post(url),
        };
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Waits until the agent has `n` offers (the offer worker runs asynchronously).
    async fn offers(&self, token: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.call("GET", "/v1/me/offers", token, None).await;
            assert_eq!(status, 200, "{body}");
            let offers = body["offers"].as_array().cloned().unwrap_or_default();
            if offers.len() >= n || Instant::now() > deadline {
                return offers;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn an_email_is_offered_to_exactly_one_agent_accepted_transferred_and_ended() {
    let server = start();
    let api = Api { http: reqwest::Client::new(), base: server.api.clone() };
    let (ana, ben, sam) = (token(&server, "ana", None), token(&server, "ben", None), token(&server, "sam", None));

    // Unauthenticated and malformed requests.
    assert_eq!(api.call("GET", "/v1/me/offers", "", None).await.0, 401);
    assert_eq!(api.call("GET", "/v1/me/offers", "not-a-token", None).await.0, 401);
    let (status, body) = api.call("PUT", "/v1/me/presence", &ana, Some(json!({ "presence": "sleepy" }))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("presence")), "{body}");
    let (status, body) = api.call("PUT", "/v1/me/presence", &ana, Some(json!({}))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("presence")), "{body}");
    assert_eq!(api.call("GET", "/v1/openapi.json", "", None).await.0, 200);

    // Two agents come in; two emails arrive.
    for t in [&ana, &ben] {
        let (status, body) = api.call("PUT", "/v1/me/presence", t, Some(json!({ "presence": "available" }))).await;
        assert_eq!((status, body["presence"].as_str()), (200, Some("available")), "{body}");
    }
    smtp_send(&server.smtp, "carol@example.org", "Invoice question");
    smtp_send(&server.smtp, "dave@example.org", "Delivery late");

    // Each email is offered to exactly one agent, with what the notification shows.
    let (ana_offers, ben_offers) = (api.offers(&ana, 1).await, api.offers(&ben, 1).await);
    assert_eq!((ana_offers.len(), ben_offers.len()), (1, 1), "{ana_offers:?} {ben_offers:?}");
    assert_ne!(ana_offers[0]["interaction_id"], ben_offers[0]["interaction_id"]);
    for field in ["customer_email", "subject", "queue", "waiting_seconds", "expires_at"] {
        assert!(!ana_offers[0][field].is_null(), "offer lacks {field}: {}", ana_offers[0]);
    }
    let ana_id = ana_offers[0]["interaction_id"].as_str().expect("id").to_owned();
    let ben_id = ben_offers[0]["interaction_id"].as_str().expect("id").to_owned();

    // Nobody acts on another agent's offer.
    assert_eq!(api.call("POST", &format!("/v1/me/offers/{ana_id}/accept"), &ben, None).await.0, 409);
    let (status, body) = api.call("POST", "/v1/me/offers/not-an-id/accept", &ben, None).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("interaction_id")));

    // Ana accepts and becomes busy; Ben rejects and works offline; the email goes back to wait.
    let (status, body) = api.call("POST", &format!("/v1/me/offers/{ana_id}/accept"), &ana, None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("assigned")), "{body}");
    assert_eq!(api.call("GET", "/v1/me/presence", &ana, None).await.1["presence"], "busy");
    let (status, body) = api.call("POST", &format!("/v1/me/offers/{ben_id}/reject"), &ben, None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("queued")), "{body}");
    assert_eq!(api.call("GET", "/v1/me/presence", &ben, None).await.1["presence"], "working_offline");

    // Ben may not read or end Ana's interaction; the supervisor may read it.
    assert_eq!(api.call("GET", &format!("/v1/interactions/{ana_id}"), &ben, None).await.0, 403);
    assert_eq!(api.call("POST", &format!("/v1/interactions/{ana_id}/end"), &ben, None).await.0, 403);
    let (status, detail) = api.call("GET", &format!("/v1/interactions/{ana_id}"), &sam, None).await;
    assert_eq!(status, 200);
    assert_eq!(detail["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(api.call("GET", "/v1/queues", &ana, None).await.0, 403, "agents do not see the supervisor views");

    // Supervisor view: one email waiting (Ben's), agents with presence.
    let (_, queues) = api.call("GET", "/v1/queues", &sam, None).await;
    let support = queues["queues"].as_array().expect("queues").iter().find(|q| q["queue"] == "support").cloned();
    assert_eq!(support.map(|q| q["waiting"].clone()), Some(json!(1)), "{queues}");
    let (_, agents) = api.call("GET", "/v1/agents", &sam, None).await;
    assert!(
        agents["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .any(|a| a["agent_id"] == "ben" && a["presence"] == "working_offline")
    );

    // Transfer needs a queue that exists and is not the current one.
    let (status, body) = api
        .call("POST", &format!("/v1/interactions/{ana_id}/transfer"), &ana, Some(json!({ "queue": "support" })))
        .await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("queue")));
    let (status, body) = api
        .call("POST", &format!("/v1/interactions/{ana_id}/transfer"), &ana, Some(json!({ "queue": "nowhere" })))
        .await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("queue")));

    // Wrap-up needs the case's contact (nobody in the Local CRM matches a new sender): Ana creates
    // it, then ends hers and is available again; the waiting email is offered to her at once.
    let (status, body) = api.call("POST", &format!("/v1/interactions/{ana_id}/end"), &ana, None).await;
    assert_eq!((status, body["error"]["field"].as_str()), (409, Some("contact_id")), "{body}");
    let contact = json!({ "first_name": "Alice", "last_name": "Moreau" });
    let (status, body) = api.call("POST", &format!("/v1/interactions/{ana_id}/contact/new"), &ana, Some(contact)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.call("POST", &format!("/v1/interactions/{ana_id}/end"), &ana, None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("ended")), "{body}");
    let next = api.offers(&ana, 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["interaction_id"], ben_id.as_str(), "the waiting email goes to the next free agent");
    assert_eq!(api.call("POST", &format!("/v1/me/offers/{ben_id}/accept"), &ana, None).await.0, 200);
    let (_, mine) = api.call("GET", "/v1/me/interactions", &ana, None).await;
    assert_eq!(mine["interactions"][0]["interaction_id"], ben_id.as_str());

    // Ana transfers it to billing, where Ben (back from working offline) is offered it.
    let (status, body) = api
        .call("POST", &format!("/v1/interactions/{ben_id}/transfer"), &ana, Some(json!({ "queue": "billing" })))
        .await;
    assert_eq!(
        (status, body["state"].as_str(), body["queue"].as_str()),
        (200, Some("queued"), Some("billing")),
        "{body}"
    );
    assert_eq!(api.call("GET", "/v1/me/presence", &ana, None).await.1["presence"], "available");
    api.call("PUT", "/v1/me/presence", &ben, Some(json!({ "presence": "available" }))).await;
    let offers = api.offers(&ben, 1).await;
    assert_eq!(offers[0]["interaction_id"], ben_id.as_str());
    assert_eq!(offers[0]["queue"], "billing");
}
