//! (placeholder: filled in by the outbound work)
