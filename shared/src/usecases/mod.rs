//! Use cases: the application's operations, written against the ports only.

pub mod dead_letters;
pub mod handoff;
pub mod ingest;
pub mod poll_mailbox;
pub mod routing;
pub mod send_mail;
