//! Fuzzes the whole ingest use case on in-memory adapters: any bytes must end in a journaled
//! disposition, never a panic.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use mailroom::adapters::memory::{MemoryIngestStore, MemoryRawStore, MemoryWorkQueue};
use mailroom::app::ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::journal::Source;
use mailroom::usecases::ingest::{InboundEmail, IngestService};

static SERVICE: LazyLock<IngestService> = LazyLock::new(|| {
    ingest_service(
        &AppConfig::demo(),
        Arc::new(MemoryRawStore::default()),
        Arc::new(MemoryIngestStore::default()),
        Arc::new(MemoryWorkQueue::new("routing", 5)),
    )
    .expect("demo config")
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));

fuzz_target!(|data: &[u8]| {
    let outcome = RUNTIME
        .block_on(SERVICE.ingest(InboundEmail::new(data.to_vec(), Source::Replay)))
        .expect("in-memory ingest cannot fail");
    assert!(outcome.entry.is_final());
});
