//! (placeholder: filled in by the crm work)
