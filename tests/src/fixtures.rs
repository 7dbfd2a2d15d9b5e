//! The email fixtures under `tests/fixtures/email` and their expectations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub disposition: String,
    #[serde(default)]
    pub acceptable: Vec<String>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub from_name: Option<String>,
    pub degraded: Option<bool>,
    pub body_contains: Option<String>,
    pub reason: Option<String>,
    pub note: Option<String>,
}

pub fn email_dir() -> PathBuf {
    crate::tests_dir().join("fixtures/email")
}

/// Expectations keyed by path relative to `fixtures/email` (e.g. `thread/01-original.eml`).
pub fn expectations() -> BTreeMap<String, Expectation> {
    let text = std::fs::read_to_string(email_dir().join("expectations.toml")).expect("expectations.toml");
    toml::from_str(&text).expect("expectations.toml parses")
}

/// The fixture groups (sub-directories), each with its `.eml` files in name order.
pub fn groups() -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(email_dir()).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
                .expect("group dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .collect();
            files.sort();
            out.insert(path.file_name().expect("name").to_string_lossy().into_owned(), files);
        }
    }
    out
}

pub fn relative(path: &Path) -> String {
    path.strip_prefix(email_dir()).expect("under fixtures").to_string_lossy().replace('\\', "/")
}

/// Converts LF line endings to CRLF (leaving existing CRLF alone), as mail arrives from SES and
/// IMAP servers.
pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// The files of a corpus directory (recursively, in name order).
pub fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}
