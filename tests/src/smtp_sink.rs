//! (placeholder: test support for the smtp_sink server)
