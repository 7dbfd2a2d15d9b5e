//! Use cases: the application's operations, written against the ports only.

pub mod dead_letters;
pub mod ingest;
