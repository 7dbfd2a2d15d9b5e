//! (placeholder: filled in by the local_crm work)
