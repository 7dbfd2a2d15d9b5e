//! (placeholder: filled in by the mailbox work)
