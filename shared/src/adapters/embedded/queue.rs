//! A durable work queue on SQLite with the semantics of SQS: at-least-once delivery, a
//! visibility timeout, redelivery of what is not deleted in time, and a dead-letter queue after
//! `max_receives` receives.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::{Db, sql_error};
use crate::ports::{BackendError, BackendResult, ReceivedWork, WorkQueue};

#[derive(Clone)]
pub struct EmbeddedQueue {
    db: Arc<Db>,
    name: String,
    dead_letter: String,
    max_receives: u32,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl EmbeddedQueue {
    pub(super) fn new(db: Arc<Db>, name: &str, max_receives: u32) -> Self {
        Self { db, name: name.to_owned(), dead_letter: format!("{name}-dlq"), max_receives }
    }

    fn receive_now(&self, max: usize, visibility: Duration) -> BackendResult<Vec<ReceivedWork>> {
        let mut conn = self.db.lock();
        let tx = conn.transaction().map_err(|e| sql_error("receive work", e))?;
        let now = now_ms();
        let mut out = Vec::new();
        {
            let mut select = tx
                .prepare_cached("SELECT id, body, receive_count FROM work WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT ?3")
                .map_err(|e| sql_error("receive work", e))?;
            let candidates = select
                .query_map(params![self.name, now, (max * 2) as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, u32>(2)?))
                })
                .map_err(|e| sql_error("receive work", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| sql_error("receive work", e))?;
            for (id, body, count) in candidates {
                if out.len() >= max {
                    break;
                }
                if count >= self.max_receives {
                    // Received too often without being deleted: park it, as an SQS redrive policy does.
                    tx.execute(
                        "UPDATE work SET queue = ?1, receive_count = 0, visible_at = ?2 WHERE id = ?3",
                        params![self.dead_letter, now, id],
                    )
                    .map_err(|e| sql_error("dead-letter work", e))?;
                    tracing::warn!(queue = %self.name, work_id = id, "work moved to the dead-letter queue");
                    continue;
                }
                let count = count + 1;
                tx.execute(
                    "UPDATE work SET receive_count = ?1, visible_at = ?2 WHERE id = ?3",
                    params![count, now + visibility.as_millis() as i64, id],
                )
                .map_err(|e| sql_error("receive work", e))?;
                out.push(ReceivedWork { body, receipt: format!("{id}:{count}"), receive_count: count });
            }
        }
        tx.commit().map_err(|e| sql_error("receive work", e))?;
        Ok(out)
    }
}

fn parse_receipt(receipt: &str) -> BackendResult<(i64, u32)> {
    let bad = || BackendError::permanent("use receipt", format!("malformed receipt handle {receipt:?}"));
    let (id, count) = receipt.split_once(':').ok_or_else(bad)?;
    Ok((id.parse().map_err(|_| bad())?, count.parse().map_err(|_| bad())?))
}

#[async_trait]
impl WorkQueue for EmbeddedQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str, delay: Duration) -> BackendResult<()> {
        {
            let conn = self.db.lock();
            let now = now_ms();
            conn.execute(
                "INSERT INTO work (queue, body, visible_at, receive_count, sent_at) VALUES (?1, ?2, ?3, 0, ?4)",
                params![self.name, body, now + delay.as_millis() as i64, now],
            )
            .map_err(|e| sql_error("send work", e))?;
        }
        self.db.work_sent.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> BackendResult<Vec<ReceivedWork>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.db.work_sent.notified();
            let got = self.receive_now(max.max(1), visibility)?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            // Another process may send too, so poll as well as wait for this process's senders.
            let nap = (deadline - tokio::time::Instant::now()).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn delete(&self, receipt: &str) -> BackendResult<()> {
        let (id, count) = parse_receipt(receipt)?;
        let conn = self.db.lock();
        // Only the latest receipt deletes: a worker whose visibility ran out must not delete the
        // copy another worker is handling now.
        conn.execute(
            "DELETE FROM work WHERE id = ?1 AND queue = ?2 AND receive_count = ?3",
            params![id, self.name, count],
        )
        .map_err(|e| sql_error("delete work", e))?;
        Ok(())
    }

    async fn release(&self, receipt: &str, delay: Duration) -> BackendResult<()> {
        let (id, count) = parse_receipt(receipt)?;
        {
            let conn = self.db.lock();
            conn.execute(
                "UPDATE work SET visible_at = ?1 WHERE id = ?2 AND queue = ?3 AND receive_count = ?4",
                params![now_ms() + delay.as_millis() as i64, id, self.name, count],
            )
            .map_err(|e| sql_error("release work", e))?;
        }
        self.db.work_sent.notify_waiters();
        Ok(())
    }

    async fn depth(&self) -> BackendResult<u64> {
        let conn = self.db.lock();
        conn.query_row("SELECT COUNT(*) FROM work WHERE queue = ?1", [&self.name], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| sql_error("count work", e))
    }
}
