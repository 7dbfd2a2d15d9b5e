//! The `mailroom` binary as a user runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mailroom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailroom"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/email")
}

fn ingest_json(data: &Path, inputs: &[PathBuf]) -> Vec<serde_json::Value> {
    let out =
        mailroom().arg("ingest").arg("--json").arg("--data-dir").arg(data).args(inputs).output().expect("run mailroom");
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn ingest_json_prints_one_object_per_email_in_input_order_and_remembers() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = fixtures().join("thread");
    let first = ingest_json(data.path(), std::slice::from_ref(&dir));
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert_eq!(first.len(), files.len());
    for (obj, file) in first.iter().zip(&files) {
        assert_eq!(obj["file"], file.display().to_string());
        for field in [
            "disposition",
            "reason",
            "interaction_id",
            "message_id",
            "from",
            "from_name",
            "subject",
            "queue",
            "priority",
            "category",
            "sentiment",
        ] {
            assert!(obj.get(field).is_some(), "field {field} missing in {obj}");
        }
    }
    assert_eq!(first[0]["disposition"], "new");
    assert_eq!(first[0]["queue"], "support");
    assert_eq!(first[1]["disposition"], "threaded");

    // A second run over the same data directory sees the first: every file is a duplicate now.
    let second = ingest_json(data.path(), &[dir]);
    assert!(second.iter().all(|o| o["disposition"] == "duplicate"), "{second:?}");
    assert_eq!(second[0]["interaction_id"], first[0]["interaction_id"]);
}

#[test]
fn ingest_reports_unreadable_files_and_exits_non_zero() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = mailroom()
        .args(["ingest", "--json", "--data-dir"])
        .arg(data.path())
        .arg(data.path().join("missing.eml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(line["error"].as_str().expect("error").contains("cannot read"));
}

fn smtp_send(addr: &str, from: &str, to: &str, message: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut expect = |code: &str| {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("reply");
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
    };
    expect("220");
    for (cmd, code) in [
        ("EHLO test.example".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        write!(stream, "{cmd}\r\n").expect("write");
        expect(code);
    }
    write!(stream, "{}\r\n.\r\n", message.replace('\n', "\r\n")).expect("write");
    expect("250");
    write!(stream, "QUIT\r\n").expect("write");
    expect("221");
}

#[test]
fn serve_accepts_smtp_journals_and_queues_and_stops_cleanly_on_ctrl_c() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = mailroom()
        .args(["serve", "--smtp-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        assert!(Instant::now() < deadline, "serve did not print its SMTP address");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read stdout");
        if let Some(rest) = line.strip_prefix("SMTP listening on ") {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    smtp_send(
        &addr,
        "carol@example.org",
        "support@example.com",
        "From: Carol <carol@example.org>\nTo: support@example.com\nSubject: My invoice is wrong\nMessage-ID: <serve-1@example.org>\n\nI was charged twice.",
    );

    let status = Command::new("kill").arg("-INT").arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("rest of stdout");
    assert!(exit.success(), "serve exits 0 on Ctrl-C: {exit:?}");
    assert!(rest.contains("stopped"), "{rest}");

    let journal = mailroom().args(["journal", "--json", "--data-dir"]).arg(data.path()).output().expect("journal");
    let entry: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&journal.stdout).lines().next().expect("one entry"))
            .expect("json");
    assert_eq!(entry["disposition"], "new");
    assert_eq!(entry["queue"], "support");
    assert_eq!(entry["category"], "billing");

    let status = mailroom().args(["status", "--data-dir"]).arg(data.path()).output().expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    // Nobody is available in the demo until agents sign in: the interaction waits in `support`.
    assert!(text.lines().any(|l| l.trim_start().starts_with("support") && l.contains("1 waiting")), "{text}");
}
