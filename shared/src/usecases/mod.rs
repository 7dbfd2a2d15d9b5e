//! Use cases: the application's operations, written against the ports only.

pub mod agent_profile;
pub mod channel_admin;
pub mod channel_directory;
pub mod crm_settings;
pub mod dead_letters;
pub mod handoff;
pub mod ingest;
pub mod outbound;
pub mod poll_mailbox;
pub mod routing;
pub mod send_mail;
pub mod teams;
