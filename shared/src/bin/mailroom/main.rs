//! `mailroom`: the whole of Mailroom on one machine, on the embedded backend.
//!
//! - `mailroom ingest FILE_OR_DIR...` runs the ingest use case on `.eml` files.
//! - `mailroom serve` runs an SMTP listener (standing in for SES) and the workers in one process.
//! - `mailroom journal`, `mailroom status` and `mailroom dlq` show and repair what happened.

mod ingest_cmd;
mod ops_cmd;
mod serve_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailroom::config::AppConfig;

#[derive(Parser)]
#[command(name = "mailroom", version, about = "An email channel for contact centres, on one machine")]
struct Cli {
    /// Where the embedded backend keeps its database.
    #[arg(long, global = true, env = "MAILROOM_DATA_DIR", default_value = "mailroom-data")]
    data_dir: PathBuf,
    /// Configuration file (TOML). Without it, the built-in demo: channel support@example.com, queue `support`.
    #[arg(long, global = true, env = "MAILROOM_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest .eml files (or directories of them) and print what became of each.
    Ingest(ingest_cmd::IngestArgs),
    /// Run the SMTP listener and the workers until Ctrl-C.
    Serve(serve_cmd::ServeArgs),
    /// Show the newest journal entries: what became of every email that arrived.
    Journal(ops_cmd::JournalArgs),
    /// Show queue depths and dead letters.
    Status,
    /// List or replay dead-lettered work.
    Dlq(ops_cmd::DlqArgs),
    /// Print the effective configuration (the demo when no --config is given).
    Config,
    /// Mint a development token for the local agent API.
    Token(ops_cmd::TokenArgs),
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<AppConfig> {
    Ok(match path {
        Some(p) => AppConfig::load(p)?,
        None => AppConfig::demo(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Ingest(_));
    mailroom::telemetry::init(false, if quiet { "warn" } else { "info" });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        let config = load_config(cli.config.as_ref())?;
        match cli.command {
            Command::Ingest(args) => ingest_cmd::run(args, &config, &cli.data_dir).await,
            Command::Serve(args) => serve_cmd::run(args, &config, &cli.data_dir).await,
            Command::Journal(args) => ops_cmd::journal(args, &cli.data_dir).await,
            Command::Status => ops_cmd::status(&cli.data_dir).await,
            Command::Dlq(args) => ops_cmd::dlq(args, &cli.data_dir).await,
            Command::Token(args) => ops_cmd::token(args, &config, &cli.data_dir),
            Command::Config => {
                println!("{}", toml::to_string_pretty(&config)?);
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(2)
        }
    }
}
