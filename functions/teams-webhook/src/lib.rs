//! The Teams chat Lambda functions' handlers, kept apart from the wiring in `main.rs` and
//! `bin/teams-worker.rs` so tests call them with event fixtures and no Lambda runtime.
//!
//! - [`webhook`]: Graph's change and lifecycle notifications arrive here (API Gateway HTTP API).
//!   The validation handshake is answered at once; each item's `clientState` is checked; valid
//!   items go to an SQS queue and Graph gets its 202 well within its 3 seconds.
//! - [`worker`]: takes the items from the queue and reads the messages with the agent's token
//!   (retrying what failed for a transient reason through `batchItemFailures`), and runs the
//!   scheduled tasks: renewing subscriptions, syncing the Teams directory.

pub mod webhook;
pub mod worker;
