//! Golden files: for each fixture, the JSON that `mailroom ingest --json` prints, stored under
//! `tests/golden/<group>/<name>.json`. On a mismatch the actual output is written beside it as
//! `.failed`; `UPDATE_GOLDEN=1` rewrites the expected files after a deliberate change.

use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::app::embedded_ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::journal::Source;
use mailroom::report::outcome_json;
use mailroom::usecases::ingest::InboundEmail;
use mailroom_tests::fixtures;

#[tokio::test]
async fn golden_outputs_for_every_fixture() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let golden_dir = mailroom_tests::tests_dir().join("golden");
    let mut failures = Vec::new();
    for crlf in [false, true] {
        for (group, files) in fixtures::groups() {
            let dir = tempfile::tempdir().expect("tempdir");
            let backend = EmbeddedBackend::open(dir.path()).expect("open");
            let service = embedded_ingest_service(&AppConfig::demo(), &backend).expect("service");
            for path in files {
                let rel = fixtures::relative(&path);
                let mut raw = std::fs::read(&path).expect("read");
                if crlf {
                    raw = fixtures::to_crlf(&raw);
                }
                let out =
                    service.ingest(InboundEmail::new(raw, Source::File { path: rel.clone() })).await.expect("ingest");
                let mut actual = outcome_json(&rel, &out);
                // The content address differs between the LF and CRLF copies; everything else must not.
                actual["raw_key"] = serde_json::Value::String("<sha256 of the raw bytes>".into());
                // A duplicate names the original's raw key and arrival time, which vary by run.
                if let Some(reason) = actual["reason"].as_str()
                    && let Some((head, _)) = reason.split_once(" (raw ")
                {
                    actual["reason"] = serde_json::Value::String(format!("{head} (raw <original>, received <time>)"));
                }
                let actual = serde_json::to_string_pretty(&actual).expect("json") + "\n";
                let expected_path =
                    golden_dir.join(&group).join(path.file_name().expect("name")).with_extension("json");
                if update && !crlf {
                    std::fs::create_dir_all(expected_path.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&expected_path, &actual).expect("write golden");
                    continue;
                }
                let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
                let failed_path = expected_path.with_extension("failed");
                if expected != actual {
                    std::fs::write(&failed_path, &actual).expect("write .failed");
                    failures.push(format!(
                        "{rel} ({}): see {}",
                        if crlf { "CRLF" } else { "LF" },
                        failed_path.display()
                    ));
                } else if failed_path.exists() {
                    let _ = std::fs::remove_file(&failed_path);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (run with UPDATE_GOLDEN=1 after checking them):\n{}",
        failures.join("\n")
    );
}
