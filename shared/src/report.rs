//! The JSON shape of an ingest outcome, as `mailroom ingest --json` prints it and the golden
//! files record it.

use serde_json::{Value, json};

use crate::usecases::ingest::IngestOutcome;

/// One JSON object for one input email. `file` names the input as the caller knows it.
pub fn outcome_json(file: &str, outcome: &IngestOutcome) -> Value {
    let e = &outcome.entry;
    json!({
        "file": file,
        "disposition": outcome.disposition().as_str(),
        "reason": outcome.reason(),
        "interaction_id": e.interaction_id,
        "message_id": e.message_id,
        "from": e.from,
        "from_name": e.from_name,
        "subject": e.subject,
        "queue": e.queue,
        "priority": e.priority,
        "category": e.category,
        "sentiment": e.sentiment,
        "channel": e.channel,
        "degraded": !e.degraded.is_empty(),
        "degraded_reasons": e.degraded,
        "raw_key": e.raw_key,
    })
}
