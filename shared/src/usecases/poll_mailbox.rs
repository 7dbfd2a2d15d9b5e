//! (placeholder: filled in by the poll_mailbox work)
