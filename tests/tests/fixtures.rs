//! Every fixture gets the disposition and decoded fields `expectations.toml` names, with LF and
//! with CRLF line endings. Each group is ingested in name order into one fresh store, so threads
//! and duplicates see what came before them.

use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::app::embedded_ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::journal::Source;
use mailroom::ports::IngestStore;
use mailroom::usecases::ingest::InboundEmail;
use mailroom_tests::fixtures::{self, Expectation};
use unicode_normalization::UnicodeNormalization;

fn nfc(s: &str) -> String {
    s.nfc().collect()
}

async fn check_all(crlf: bool) -> Vec<String> {
    let expectations = fixtures::expectations();
    let mut failures = Vec::new();
    let mut seen = 0;
    for (group, files) in fixtures::groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = EmbeddedBackend::open(dir.path()).expect("open");
        let service = embedded_ingest_service(&AppConfig::demo(), &backend).expect("service");
        for path in files {
            let rel = fixtures::relative(&path);
            let Some(expected) = expectations.get(&rel) else {
                failures.push(format!("{rel}: no entry in expectations.toml"));
                continue;
            };
            seen += 1;
            let mut raw = std::fs::read(&path).expect("read fixture");
            if crlf {
                raw = fixtures::to_crlf(&raw);
            }
            let out = service.ingest(InboundEmail::new(raw, Source::File { path: rel.clone() })).await.expect("ingest");
            let mut problems = Vec::new();
            check(&mut problems, expected, &out, &backend).await;
            for p in problems {
                failures.push(format!("{rel} ({group}, {}): {p}", if crlf { "CRLF" } else { "LF" }));
            }
        }
    }
    assert_eq!(seen, expectations.len(), "every expectation has a fixture");
    failures
}

async fn check(
    problems: &mut Vec<String>,
    want: &Expectation,
    out: &mailroom::usecases::ingest::IngestOutcome,
    backend: &EmbeddedBackend,
) {
    let got = out.disposition().as_str();
    if got != want.disposition && !want.acceptable.iter().any(|a| a == got) {
        problems.push(format!("disposition {got} ({}), expected {}", out.reason(), want.disposition));
    }
    let e = &out.entry;
    if let Some(subject) = &want.subject
        && nfc(e.subject.as_deref().unwrap_or_default()) != nfc(subject)
    {
        problems.push(format!("subject {:?}, expected {subject:?}", e.subject));
    }
    if let Some(from) = &want.from
        && e.from.as_ref().map(|a| a.as_str()) != Some(from.to_lowercase().as_str())
    {
        problems.push(format!("from {:?}, expected {from:?}", e.from));
    }
    if let Some(name) = &want.from_name
        && e.from_name.as_deref().map(nfc) != Some(nfc(name))
    {
        problems.push(format!("from_name {:?}, expected {name:?}", e.from_name));
    }
    let is_degraded = !e.degraded.is_empty();
    if let Some(degraded) = want.degraded
        && degraded != is_degraded
    {
        problems.push(format!("degraded {:?}, expected {degraded}", e.degraded));
    }
    if let Some(reason) = &want.reason
        && !out.reason().to_lowercase().contains(&reason.to_lowercase())
    {
        problems.push(format!("reason {:?} lacks {reason:?}", out.reason()));
    }
    if let Some(needle) = &want.body_contains {
        let body = match &e.fingerprint {
            Some(fp) => backend.message(fp).await.expect("read").map(|m| m.text_body).unwrap_or_default(),
            None => String::new(),
        };
        if !nfc(&body).contains(&nfc(needle)) {
            problems.push(format!("body lacks {needle:?}: {:?}", body.chars().take(200).collect::<String>()));
        }
    }
}

#[tokio::test]
async fn fixtures_with_lf_line_endings() {
    let failures = check_all(false).await;
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn fixtures_with_crlf_line_endings() {
    let failures = check_all(true).await;
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
}
