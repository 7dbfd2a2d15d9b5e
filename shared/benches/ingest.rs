//! Ingest throughput on the SpamAssassin corpus, three ways side by side in one run:
//!
//! 1. raw mail-parser: parse each message and read its subject and text body;
//! 2. our ingest CPU path: the whole ingest use case on in-memory adapters (parse, screen,
//!    fingerprint, classify, thread lookup, script), no I/O;
//! 3. `mailroom ingest` end to end on the embedded backend (a fresh data directory on disk).
//!
//! Run with `cargo bench -p mailroom-shared --bench ingest` after `infra/setup.sh` fetched the
//! corpus. Targets on the project's 2-core machine: (2) at least half of (1); (3) at least
//! 2,000 emails/s.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailroom::adapters::memory::{MemoryIngestStore, MemoryRawStore, MemoryWorkQueue};
use mailroom::adapters::mime::{MailParserAdapter, strip_mbox_separator};
use mailroom::app::ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::classify::RuleClassifier;
use mailroom::domain::ids::{EmailAddress, RawMailKey};
use mailroom::domain::journal::Source;
use mailroom::domain::screening;
use mailroom::ports::MessageParser;
use mailroom::usecases::ingest::InboundEmail;
use mailroom::usecases::ingest::fingerprint;

fn corpus_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MAILROOM_CORPORA_DIR") {
        return PathBuf::from(dir).join("spamassassin");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/mailroom/corpora/spamassassin")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read corpus dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs `f` `runs` times and returns the median duration.
fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(|_| f()).collect();
    times.sort();
    times[runs / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore libtest-style arguments.
    let dir = corpus_dir();
    if !dir.is_dir() {
        eprintln!("corpus not found at {}: run `bash infra/setup.sh` first", dir.display());
        std::process::exit(2);
    }
    let paths = files(&dir);
    let messages: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).expect("read message")).collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let n = messages.len();
    println!("corpus: {} ({n} messages, {:.1} MB)", dir.display(), bytes as f64 / 1e6);

    let raw_parse = median(5, || {
        // One parser for all messages, as the adapter does: building one costs a header table.
        let parser = mail_parser::MessageParser::default();
        let start = Instant::now();
        let mut sink = 0usize;
        for m in &messages {
            let m = strip_mbox_separator(m);
            if let Some(msg) = parser.parse(m) {
                sink += msg.subject().map_or(0, str::len);
                sink += msg.body_text(0).map_or(0, |b| b.len());
            }
        }
        std::hint::black_box(sink);
        start.elapsed()
    });

    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let config = AppConfig::demo();
    let cpu_path = median(5, || {
        let service = ingest_service(
            &config,
            Arc::new(MemoryRawStore::default()),
            Arc::new(MemoryIngestStore::default()),
            Arc::new(MemoryWorkQueue::new("routing", 5)),
        )
        .expect("service");
        let inputs: Vec<InboundEmail> = messages.iter().map(|m| InboundEmail::new(m.clone(), Source::Replay)).collect();
        let start = Instant::now();
        runtime.block_on(async {
            for inbound in inputs {
                service.ingest(inbound).await.expect("ingest");
            }
        });
        start.elapsed()
    });

    // Where the CPU path spends its time, stage by stage (each over the whole corpus).
    let parser = MailParserAdapter::default();
    let parsed: Vec<_> = messages.iter().map(|m| parser.parse(m)).collect();
    let classifier = RuleClassifier::new(&config.classifier);
    let stages: Vec<(&str, Duration)> = vec![
        (
            "  parse into ParsedEmail",
            median(3, || {
                let start = Instant::now();
                for m in &messages {
                    std::hint::black_box(parser.parse(m));
                }
                start.elapsed()
            }),
        ),
        (
            "  sha-256 content address",
            median(3, || {
                let start = Instant::now();
                for m in &messages {
                    std::hint::black_box(RawMailKey::of(m));
                }
                start.elapsed()
            }),
        ),
        (
            "  fingerprint",
            median(3, || {
                let start = Instant::now();
                for (p, m) in parsed.iter().zip(&messages) {
                    std::hint::black_box(fingerprint(p, m));
                }
                start.elapsed()
            }),
        ),
        (
            "  screening",
            median(3, || {
                let own = [EmailAddress::parse("support@example.com").expect("address")];
                let start = Instant::now();
                for p in &parsed {
                    std::hint::black_box(screening::screen(p, &own));
                }
                start.elapsed()
            }),
        ),
        (
            "  classification",
            median(3, || {
                let start = Instant::now();
                for p in &parsed {
                    std::hint::black_box(classifier.classify(p));
                }
                start.elapsed()
            }),
        ),
    ];

    let data = tempfile::tempdir().expect("tempdir");
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["ingest", "--json", "--data-dir"])
        .arg(data.path())
        .arg(&dir)
        .output()
        .expect("run mailroom ingest");
    let end_to_end = start.elapsed();
    assert!(out.status.success(), "mailroom ingest failed: {}", String::from_utf8_lossy(&out.stderr));
    let printed = out.stdout.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(printed, n, "one JSON line per email");

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let base = rate(raw_parse);
    println!();
    println!("{:<38} {:>12} {:>9} {:>14}", "", "emails/s", "MB/s", "vs raw parse");
    for (name, d) in [
        ("raw mail-parser parse", raw_parse),
        ("ingest CPU path (in memory, no I/O)", cpu_path),
        ("mailroom ingest, end to end (disk)", end_to_end),
    ] {
        println!("{name:<38} {:>12.0} {:>9.1} {:>13.2}x", rate(d), mbps(d), rate(d) / base);
        if name.starts_with("ingest CPU") {
            for (stage, d) in &stages {
                println!(
                    "{stage:<38} {:>12.0} {:>9.1} {:>9.1} us/email",
                    rate(*d),
                    mbps(*d),
                    d.as_secs_f64() * 1e6 / n as f64
                );
            }
        }
    }
    println!();
    let cpu_ok = rate(cpu_path) >= base / 2.0;
    let e2e_ok = rate(end_to_end) >= 2_000.0;
    println!("target: CPU path >= 0.5x raw parse ........ {}", if cpu_ok { "met" } else { "MISSED" });
    println!("target: end to end >= 2,000 emails/s ...... {}", if e2e_ok { "met" } else { "MISSED" });
}
