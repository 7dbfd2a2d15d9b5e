//! Tracing set-up: JSON lines in Lambda (CloudWatch), compact text on a terminal.
//!
//! Field names are fixed across the code base (`interaction_id`, `message_id`, `channel_id`,
//! `agent_id`, `raw_key`, `disposition`), and no body, subject, address or secret is ever logged.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once. `RUST_LOG` overrides the default level.
pub fn init(json: bool, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_current_span(false).without_time().try_init()
    } else {
        builder.compact().try_init()
    };
}
