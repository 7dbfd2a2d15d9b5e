//! (placeholder: filled in by the dataverse work)
