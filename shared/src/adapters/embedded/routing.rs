//! `RoutingStore` on SQLite: one write transaction per transition, which SQLite serializes
//! across threads and processes.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::store::{from_json, get_interaction, put_interaction, to_json};
use super::{EmbeddedBackend, sql_error};
use crate::domain::agent::Agent;
use crate::domain::ids::{AgentId, InteractionId, QueueName};
use crate::domain::interaction::Interaction;
use crate::domain::presence::{AgentState, Refusal};
use crate::domain::queue::EmailQueue;
use crate::ports::BackendResult;
use crate::ports::routing::{AgentRecord, RoutingStore, TransitionFn, Transitioned};

fn get_agent(conn: &rusqlite::Connection, id: &AgentId) -> BackendResult<Option<AgentRecord>> {
    let row: Option<(String, String)> = conn
        .query_row("SELECT agent, state FROM agents WHERE id = ?1", [id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|e| sql_error("read agent", e))?;
    row.map(|(agent, state)| Ok(AgentRecord { agent: from_json(&agent)?, state: from_json(&state)? })).transpose()
}

fn put_agent_record(conn: &rusqlite::Connection, r: &AgentRecord) -> BackendResult<()> {
    conn.execute(
        "INSERT INTO agents (id, agent, state) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET agent = excluded.agent, state = excluded.state",
        params![r.agent.id.as_str(), to_json(&r.agent)?, to_json(&r.state)?],
    )
    .map_err(|e| sql_error("write agent", e))?;
    Ok(())
}

fn interactions(
    conn: &rusqlite::Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> BackendResult<Vec<Interaction>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| sql_error("read interactions", e))?;
    let rows = stmt
        .query_map(args, |r| r.get::<_, String>(0))
        .map_err(|e| sql_error("read interactions", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error("read interactions", e))?;
    rows.iter().map(|d| from_json(d)).collect()
}

#[async_trait]
impl RoutingStore for EmbeddedBackend {
    async fn put_agent(&self, agent: &Agent) -> BackendResult<()> {
        let mut conn = self.db.lock();
        let tx =
            conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| sql_error("write agent", e))?;
        let record = match get_agent(&tx, &agent.id)? {
            Some(mut existing) => {
                existing.agent = agent.clone();
                existing
            }
            None => AgentRecord { agent: agent.clone(), state: AgentState::new(chrono::Utc::now()) },
        };
        put_agent_record(&tx, &record)?;
        tx.commit().map_err(|e| sql_error("write agent", e))
    }

    async fn agent(&self, id: &AgentId) -> BackendResult<Option<AgentRecord>> {
        get_agent(&self.db.lock(), id)
    }

    async fn agents(&self) -> BackendResult<Vec<AgentRecord>> {
        let conn = self.db.lock();
        let mut stmt = conn
            .prepare_cached("SELECT agent, state FROM agents ORDER BY id")
            .map_err(|e| sql_error("read agents", e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| sql_error("read agents", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read agents", e))?;
        rows.iter().map(|(a, s)| Ok(AgentRecord { agent: from_json(a)?, state: from_json(s)? })).collect()
    }

    async fn put_queue(&self, queue: &EmailQueue) -> BackendResult<()> {
        let conn = self.db.lock();
        conn.execute(
            "INSERT INTO queues (name, data) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET data = excluded.data",
            params![queue.name.as_str(), to_json(queue)?],
        )
        .map_err(|e| sql_error("write queue", e))?;
        Ok(())
    }

    async fn queues(&self) -> BackendResult<Vec<EmailQueue>> {
        let conn = self.db.lock();
        let mut stmt =
            conn.prepare_cached("SELECT data FROM queues ORDER BY name").map_err(|e| sql_error("read queues", e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| sql_error("read queues", e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sql_error("read queues", e))?;
        rows.iter().map(|d| from_json(d)).collect()
    }

    async fn waiting(&self, queue: &QueueName, limit: usize) -> BackendResult<Vec<Interaction>> {
        interactions(
            &self.db.lock(),
            "SELECT data FROM interactions WHERE queue = ?1 AND state = 'queued'
             ORDER BY priority DESC, queued_at, id LIMIT ?2",
            params![queue.as_str(), limit as i64],
        )
    }

    async fn held_by(&self, agent: &AgentId) -> BackendResult<Vec<Interaction>> {
        interactions(
            &self.db.lock(),
            "SELECT data FROM interactions WHERE agent = ?1 AND state IN ('offered', 'assigned') ORDER BY queued_at, id",
            params![agent.as_str()],
        )
    }

    async fn transition(
        &self,
        interaction: Option<&InteractionId>,
        agent: Option<&AgentId>,
        change: &TransitionFn<'_>,
    ) -> BackendResult<Result<Transitioned, Refusal>> {
        let mut conn = self.db.lock();
        // IMMEDIATE takes the write lock before reading, so no other process can change the
        // records between our read and our write.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| sql_error("route", e))?;
        let mut i = interaction.map(|id| get_interaction(&tx, id)).transpose()?.flatten();
        let mut a = agent.map(|id| get_agent(&tx, id)).transpose()?.flatten();
        if let Err(refusal) = change(i.as_mut(), a.as_mut()) {
            return Ok(Err(refusal));
        }
        if let Some(i) = &i {
            put_interaction(&tx, i)?;
        }
        if let Some(a) = &a {
            put_agent_record(&tx, a)?;
        }
        tx.commit().map_err(|e| sql_error("route", e))?;
        Ok(Ok(Transitioned { interaction: i, agent: a }))
    }
}
