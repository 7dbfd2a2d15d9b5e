//! The domain: values, rules and state machines, with no I/O and no AWS, HTTP or MIME types.

pub mod agent;
pub mod channel;
pub mod classify;
pub mod crm;
pub mod email;
pub mod ids;
pub mod interaction;
pub mod journal;
pub mod mailbox;
pub mod outbound;
pub mod presence;
pub mod profile;
pub mod queue;
pub mod routing;
pub mod screening;
pub mod script;
pub mod teams;
pub mod threading;
