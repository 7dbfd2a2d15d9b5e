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
    println!("queues (messages waiting or in flight):");
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
