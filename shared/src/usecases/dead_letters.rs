//! Replaying dead-lettered work: after the cause is fixed, an operator moves what was parked back
//! to the queue it came from. Works the same on SQS and on the embedded queue.

use std::time::Duration;

use crate::ports::{BackendResult, WorkQueue};

/// Moves up to `max` messages from `dead_letters` back to `target` and returns how many moved.
/// Each message is sent before it is deleted, so a crash in between duplicates, never loses.
pub async fn replay(dead_letters: &dyn WorkQueue, target: &dyn WorkQueue, max: usize) -> BackendResult<usize> {
    let mut moved = 0;
    while moved < max {
        let batch = dead_letters.receive((max - moved).min(10), Duration::from_secs(60), Duration::ZERO).await?;
        if batch.is_empty() {
            break;
        }
        for work in batch {
            target.send(&work.body, Duration::ZERO).await?;
            dead_letters.delete(&work.receipt).await?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Reads up to `max` dead letters without removing them (they become visible again shortly).
pub async fn peek(dead_letters: &dyn WorkQueue, max: usize) -> BackendResult<Vec<String>> {
    let batch = dead_letters.receive(max, Duration::from_millis(1), Duration::ZERO).await?;
    Ok(batch.into_iter().map(|w| w.body).collect())
}
