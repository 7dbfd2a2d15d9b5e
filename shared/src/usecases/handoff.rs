//! (placeholder: filled in by the handoff work)
