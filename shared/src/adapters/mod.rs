//! Adapters: the ports implemented against real things.

pub mod aws;
pub mod channels;
pub mod dataverse;
pub mod embedded;
pub mod graph;
pub mod local_crm;
pub mod mailbox;
pub mod memory;
pub mod microsoft_identity;
pub mod mime;
pub mod outbound;
pub mod secrets;
pub mod smtp_listener;
