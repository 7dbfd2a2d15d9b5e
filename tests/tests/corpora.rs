//! Real email from public corpora (fetched by `infra/setup.sh`): every message gets a final
//! disposition, nothing panics, nothing is lost.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::app::embedded_ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::ids::RawMailKey;
use mailroom::domain::journal::Source;
use mailroom::ports::IngestStore;
use mailroom::usecases::ingest::InboundEmail;
use mailroom_tests::fixtures::corpus_files;

fn corpus(name: &str) -> Option<PathBuf> {
    let root = mailroom_tests::server_env("MAILROOM_CORPORA_DIR")?;
    let dir = PathBuf::from(root).join(name);
    if dir.is_dir() {
        Some(dir)
    } else if name == "cpython" {
        // setup.sh skips it on a Python without its test data.
        eprintln!("skipped: corpus {name} is not installed");
        None
    } else {
        panic!("corpus {name} is missing under MAILROOM_CORPORA_DIR: run infra/setup.sh");
    }
}

/// Ingests a whole corpus into a fresh store and returns the count per disposition.
async fn ingest_corpus(name: &str) -> Option<BTreeMap<String, usize>> {
    let dir = corpus(name)?;
    let files = corpus_files(&dir);
    assert!(!files.is_empty(), "corpus {name} is empty");
    let data = tempfile::tempdir().expect("tempdir");
    let backend = EmbeddedBackend::open(data.path()).expect("open");
    let service = embedded_ingest_service(&AppConfig::demo(), &backend).expect("service");
    let mut counts = BTreeMap::new();
    let mut raw_keys = HashSet::new();
    for path in &files {
        let raw = std::fs::read(path).expect("read");
        raw_keys.insert(RawMailKey::of(&raw));
        let out = service
            .ingest(InboundEmail::new(raw, Source::File { path: path.display().to_string() }))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        *counts.entry(out.disposition().as_str().to_string()).or_insert(0) += 1;
    }
    let journal = backend.journal_recent(usize::MAX >> 1).await.expect("journal");
    assert_eq!(journal.len(), raw_keys.len(), "{name}: one journal entry per distinct raw message");
    assert!(journal.iter().all(|e| e.is_final()), "{name}: nothing left pending");
    assert_eq!(counts.values().sum::<usize>(), files.len());
    eprintln!("{name}: {} messages: {counts:?}", files.len());
    Some(counts)
}

fn share(counts: &BTreeMap<String, usize>, dispositions: &[&str]) -> f64 {
    let total: usize = counts.values().sum();
    let hit: usize = dispositions.iter().map(|d| counts.get(*d).copied().unwrap_or(0)).sum();
    hit as f64 / total as f64
}

#[tokio::test]
async fn spamassassin_corpus() {
    if let Some(counts) = ingest_corpus("spamassassin").await {
        // Mostly 2002 mailing-list traffic and spam: a mix, but every message is accounted for.
        assert!(share(&counts, &["bulk"]) > 0.2, "{counts:?}");
    }
}

#[tokio::test]
async fn cpython_email_tests_corpus() {
    ingest_corpus("cpython").await;
}

#[tokio::test]
async fn mail_parser_corpus() {
    ingest_corpus("mail-parser").await;
}

#[tokio::test]
async fn flufl_bounce_corpus() {
    if let Some(counts) = ingest_corpus("flufl-bounce").await {
        let automatic = share(&counts, &["bounce", "auto_reply", "duplicate", "quarantined"]);
        assert!(automatic > 0.9, "bounces must stay out of the agents' queues: {counts:?}");
    }
}

#[tokio::test]
async fn talon_replies_corpus() {
    if let Some(counts) = ingest_corpus("talon").await {
        assert!(share(&counts, &["new", "threaded"]) > 0.8, "replies from people reach agents: {counts:?}");
    }
}
