//! (placeholder: filled in by the send_mail work)
