//! `mailroom ingest`: the ingest use case on files, one JSON object per email with `--json`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::app::embedded_ingest_service;
use mailroom::config::AppConfig;
use mailroom::domain::journal::Source;
use mailroom::report::outcome_json;
use mailroom::usecases::ingest::InboundEmail;
use serde_json::json;

#[derive(Args)]
pub struct IngestArgs {
    /// Print exactly one JSON object per input email, in input order.
    #[arg(long)]
    json: bool,
    /// .eml files, or directories searched recursively (in name order).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// Expands directories into their files, sorted by path so the order is the same on every run.
pub fn expand(inputs: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

pub async fn run(args: IngestArgs, config: &AppConfig, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let files = expand(&args.inputs)?;
    let backend = EmbeddedBackend::open(data_dir)?;
    let service = embedded_ingest_service(config, &backend)?;
    let progress = if std::io::stderr().is_terminal() && files.len() > 1 {
        let bar = ProgressBar::new(files.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} emails  {per_sec}  eta {eta}").expect("static template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failures = 0usize;
    let mut counts = std::collections::BTreeMap::<&'static str, usize>::new();
    for path in &files {
        let file = path.display().to_string();
        let raw = match std::fs::read(path) {
            Ok(raw) => raw,
            Err(e) => {
                failures += 1;
                if args.json {
                    writeln!(
                        out,
                        "{}",
                        json!({ "file": file, "disposition": null, "error": format!("cannot read the file: {e}") })
                    )?;
                } else {
                    progress.suspend(|| eprintln!("{file}: cannot read the file: {e}"));
                }
                progress.inc(1);
                continue;
            }
        };
        let inbound = InboundEmail::new(raw, Source::File { path: file.clone() });
        match service.ingest(inbound).await {
            Ok(outcome) => {
                *counts.entry(outcome.disposition().as_str()).or_default() += 1;
                if args.json {
                    writeln!(out, "{}", outcome_json(&file, &outcome))?;
                } else {
                    let e = &outcome.entry;
                    let target = e.interaction_id.as_ref().map(|i| format!(" -> {i}")).unwrap_or_default();
                    progress.suspend(|| println!("{file}: {}{target} ({})", outcome.disposition(), outcome.reason()));
                }
            }
            Err(e) => {
                failures += 1;
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    source = s.source();
                }
                if args.json {
                    writeln!(out, "{}", json!({ "file": file, "disposition": null, "error": msg }))?;
                } else {
                    progress.suspend(|| eprintln!("{file}: {msg}"));
                }
            }
        }
        progress.inc(1);
    }
    out.flush()?;
    progress.finish_and_clear();
    if !args.json {
        let summary: Vec<String> = counts.iter().map(|(d, n)| format!("{n} {d}")).collect();
        eprintln!("{} emails: {}", files.len(), summary.join(", "));
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
