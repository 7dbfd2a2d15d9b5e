//! A deterministic stand-in for the fuzzer that runs in every test run: thousands of mutated
//! copies of the fixtures (bit flips, truncation, spliced headers, repeated bytes) go through the
//! whole ingest use case, and each must end in a final journal entry without a panic.
//! Coverage-guided fuzzing lives in `tests/fuzz` (cargo-fuzz).

use std::sync::Arc;

use mailroom::adapters::memory::{MemoryIngestStore, MemoryRawStore, MemoryWorkQueue};
use mailroom::app::ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::journal::Source;
use mailroom::testing::Rng;
use mailroom::usecases::ingest::InboundEmail;
use mailroom_tests::fixtures;

const SPLICES: &[&[u8]] = &[
    b"\r\nContent-Type: multipart/mixed; boundary=\"\"\r\n",
    b"\r\nContent-Transfer-Encoding: base64\r\n",
    b"=?utf-8?B?////?=",
    b"=?x-unknown?Q?=FF=FE?=",
    b"\r\nReferences: <<<>>> <a@b> <",
    b"\r\nFrom: \"\\\"\" <@>\r\n",
    b"\r\n--\r\n\r\n--",
    b"\0\0\xff\xfe",
    b"\r\nSubject: [MR-0123456789AB]\r\n",
    b"\r\nThread-Index: AAAA\r\n",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.index(4) {
        match rng.index(5) {
            0 if !data.is_empty() => {
                let i = rng.index(data.len());
                data[i] ^= 1 << rng.index(8);
            }
            1 if !data.is_empty() => {
                let cut = rng.index(data.len());
                data.truncate(cut);
            }
            2 => {
                let i = rng.index(data.len() + 1);
                let s = SPLICES[rng.index(SPLICES.len())];
                data.splice(i..i, s.iter().copied());
            }
            3 if !data.is_empty() => {
                let i = rng.index(data.len());
                let b = data[i];
                let n = rng.index(64);
                data.splice(i..i, std::iter::repeat_n(b, n));
            }
            _ => {
                let i = rng.index(data.len() + 1);
                let j = (i + rng.index(200)).min(data.len());
                data.drain(i..j);
            }
        }
    }
    data
}

#[tokio::test]
async fn mutated_fixtures_always_get_a_final_disposition() {
    let seeds: Vec<Vec<u8>> =
        fixtures::groups().into_values().flatten().map(|p| std::fs::read(p).expect("fixture")).collect();
    let service = ingest_service(
        &AppConfig::demo(),
        Arc::new(MemoryRawStore::default()),
        Arc::new(MemoryIngestStore::default()),
        Arc::new(MemoryWorkQueue::new("routing", 5)),
    )
    .expect("service");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..4_000 {
        let seed = &seeds[rng.index(seeds.len())];
        let data = mutate(&mut rng, seed);
        let out = service
            .ingest(InboundEmail::new(data, Source::Replay))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(out.entry.is_final(), "round {round}");
    }
}
