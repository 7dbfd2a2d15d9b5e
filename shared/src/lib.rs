//! Mailroom: an email channel for contact centres.
//!
//! - [`domain`]: values, rules and state machines (no I/O).
//! - [`ports`]: the traits use cases need from the outside world.
//! - [`usecases`]: the operations, one function each, shared by Lambda, `mailroom` and tests.
//! - [`adapters`]: ports implemented on AWS, on the embedded backend and in memory.
//! - [`config`]: typed configuration, read once.

pub mod adapters;
pub mod api;
pub mod app;
pub mod config;
pub mod domain;
pub mod ports;
pub mod report;
pub mod telemetry;
pub mod testing;
pub mod usecases;
