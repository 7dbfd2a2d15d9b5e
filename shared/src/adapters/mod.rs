//! Adapters: the ports implemented against real things.

pub mod aws;
pub mod embedded;
pub mod memory;
pub mod mime;
pub mod smtp_listener;
