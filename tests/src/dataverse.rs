//! (placeholder: test support for the dataverse server)
