//! Operator commands: the journal, queue status and dead-letter replay.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use mailroom::adapters::embedded::{DEFAULT_MAX_RECEIVES, EmbeddedBackend};
use mailroom::ports::{IngestStore, WorkQueue};
use mailroom::usecases::dead_letters;

#[derive(Args)]
pub struct JournalArgs {
    /// How many entries, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// One JSON object per entry.
    #[arg(long)]
    json: bool,
}

pub async fn journal(args: JournalArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let backend = EmbeddedBackend::open(data_dir)?;
    for e in backend.journal_recent(args.limit).await? {
        if args.json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            let disposition = e.disposition.map(|d| d.as_str()).unwrap_or("pending");
            let interaction = e.interaction_id.as_ref().map(|i| i.as_str()).unwrap_or("-");
            let queue = e.queue.as_ref().map(|q| q.as_str()).unwrap_or("-");
            println!(
                "{}  {:<11}  interaction {:<12}  queue {:<10}  {}",
                e.received_at.format("%Y-%m-%d %H:%M:%S"),
                disposition,
                interaction,
                queue,
                e.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let backend = EmbeddedBackend::open(data_dir)?;
    println!("data directory: {}", data_dir.display());
    println!("journal:");
    for (disposition, count) in backend.journal_counts()? {
        println!("  {disposition:<12} {count}");
    }
    println!("email queues (interactions waiting for an agent):");
    let routing = mailroom::app::embedded_routing_service(&backend);
    for q in routing.queue_views().await? {
        let oldest = q.oldest_wait_seconds.map(|s| format!(", oldest {s} s")).unwrap_or_default();
        println!("  {:<16} {} waiting{oldest}, {} agent(s) free", q.queue.as_str(), q.waiting, q.available_agents);
    }
    println!("work queues (messages waiting or in flight):");
    let mut names = backend.queue_names()?;
    if !names.iter().any(|n| n == mailroom::app::ROUTING_QUEUE) {
        names.insert(0, mailroom::app::ROUTING_QUEUE.to_string());
    }
    for name in names {
        let depth = backend.queue(&name, DEFAULT_MAX_RECEIVES).depth().await?;
        println!("  {name:<16} {depth}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Subcommand)]
enum DlqAction {
    /// Show what is parked in a queue's dead-letter queue.
    List {
        #[arg(default_value = "routing")]
        queue: String,
    },
    /// Move parked work back to its queue once the cause is fixed.
    Replay {
        #[arg(default_value = "routing")]
        queue: String,
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
}

pub async fn dlq(args: DlqArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let backend = EmbeddedBackend::open(data_dir)?;
    match args.action {
        DlqAction::List { queue } => {
            let dlq = backend.dead_letter_queue(&queue);
            for body in dead_letters::peek(&dlq, 100).await? {
                println!("{body}");
            }
        }
        DlqAction::Replay { queue, max } => {
            let dlq = backend.dead_letter_queue(&queue);
            let target = backend.queue(&queue, DEFAULT_MAX_RECEIVES);
            let moved = dead_letters::replay(&dlq, &target, max).await?;
            println!("replayed {moved} message(s) from {}-dlq to {queue}", queue);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct TokenArgs {
    /// The agent the token speaks for (an agent id from the configuration).
    #[arg(long)]
    agent: String,
    /// agent, supervisor, admin or ai_assistant; defaults to the agent's role in the configuration.
    #[arg(long)]
    role: Option<String>,
    /// How long the token is valid.
    #[arg(long, default_value_t = 12)]
    ttl_hours: i64,
}

/// Prints a token signed with this data directory's key, which `mailroom serve` verifies.
pub fn token(args: TokenArgs, config: &mailroom::config::AppConfig, data_dir: &Path) -> anyhow::Result<ExitCode> {
    use mailroom::domain::agent::Role;
    let id = mailroom::domain::ids::AgentId::parse(&args.agent)?;
    let configured = config.agents.iter().find(|a| a.id == id);
    let role = match &args.role {
        Some(r) => {
            Role::parse(r).ok_or_else(|| anyhow::anyhow!("--role must be agent, supervisor, admin or ai_assistant"))?
        }
        None => configured.map(|a| a.role).unwrap_or_default(),
    };
    if configured.is_none() && role != Role::AiAssistant {
        anyhow::bail!("no agent {id:?} in the configuration (see `mailroom config`)");
    }
    let secret = mailroom::api::auth::local_secret(data_dir)?;
    println!("{}", mailroom::api::auth::mint_local_token(&secret, &id, role, chrono::Duration::hours(args.ttl_hours)));
    Ok(ExitCode::SUCCESS)
}
