//! Support for Mailroom's integration tests: fixture loading, backends under test, and the
//! contract suite that every backend must pass.

pub mod aws;
pub mod contract;
pub mod dataverse;
pub mod dovecot;
pub mod fixtures;
pub mod graph;
pub mod routing;
pub mod smtp_sink;

use std::path::PathBuf;

/// The repository's `tests/` directory.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether tests that need a server must fail (CI, `infra/test.sh`) rather than skip when the
/// server is not configured.
pub fn servers_required() -> bool {
    std::env::var("MAILROOM_REQUIRE_SERVERS").is_ok_and(|v| v == "1")
}

/// Returns the value of `var`, or `None` after printing why the test is skipped. Panics instead
/// when servers are required, so a CI run cannot pass by skipping.
pub fn server_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if servers_required() => {
            panic!("{var} is not set but MAILROOM_REQUIRE_SERVERS=1: start the servers with infra/test.sh")
        }
        _ => {
            eprintln!("skipped: {var} is not set (infra/test.sh sets it)");
            None
        }
    }
}
