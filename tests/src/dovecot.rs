//! (placeholder: test support for the dovecot server)
