//! `mailroom serve`: every front door and worker in one process, on the embedded backend.
//! For now: the SMTP listener, standing in for Amazon SES's inbound endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Args;
use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::adapters::smtp_listener::{self, DeliveryRejection, Envelope, SmtpDelivery, SmtpListenerConfig};
use mailroom::api::AppState;
use mailroom::api::auth::{Authenticator, local_secret};
use mailroom::app::{embedded_ingest_service, embedded_routing_service};
use mailroom::config::{AppConfig, ChannelSet};
use mailroom::domain::ids::EmailAddress;
use mailroom::domain::journal::Source;
use mailroom::usecases::ingest::{InboundEmail, IngestService};
use tokio::sync::watch;

#[derive(Args)]
pub struct ServeArgs {
    /// Where the SMTP listener accepts inbound mail (as SES would).
    #[arg(long, env = "MAILROOM_SMTP_ADDR", default_value = "127.0.0.1:2525")]
    smtp_addr: SocketAddr,
    /// Where the agent API listens.
    #[arg(long, env = "MAILROOM_API_ADDR", default_value = "127.0.0.1:8080")]
    api_addr: SocketAddr,
    /// How many offer workers take routing requests concurrently.
    #[arg(long, default_value_t = 2)]
    offer_workers: usize,
}

/// Hands each accepted message to the ingest use case; answers 250 only once it is journaled.
struct IngestDelivery {
    service: IngestService,
    channels: Arc<ChannelSet>,
}

#[async_trait]
impl SmtpDelivery for IngestDelivery {
    fn accepts_recipient(&self, rcpt: &str) -> bool {
        EmailAddress::parse(rcpt)
            .ok()
            .and_then(|a| self.channels.by_address(&a).map(|(c, _)| c.enabled))
            .unwrap_or(false)
    }

    async fn deliver(&self, envelope: &Envelope, raw: Vec<u8>) -> Result<(), DeliveryRejection> {
        let inbound = InboundEmail {
            raw,
            source: Source::Smtp,
            envelope_recipients: envelope.rcpt_to.iter().filter_map(|r| EmailAddress::parse(r).ok()).collect(),
            channel: None,
        };
        match self.service.ingest(inbound).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "ingest failed; the sender will retry");
                Err(DeliveryRejection::Temporary("could not store the message, try again later".into()))
            }
        }
    }
}

pub async fn run(args: ServeArgs, config: &AppConfig, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let backend = EmbeddedBackend::open(data_dir)?;
    let service = embedded_ingest_service(config, &backend)?;
    let channels = ChannelSet::from_config(config)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let routing = embedded_routing_service(&backend);
    routing.seed(&config.agents, &config.queues).await?;
    let mut workers = Vec::new();
    for _ in 0..args.offer_workers.max(1) {
        let routing = routing.clone();
        let shutdown = shutdown_rx.clone();
        workers.push(tokio::spawn(async move { routing.run_worker(shutdown).await }));
    }

    let secret = local_secret(data_dir)?;
    let api_state = AppState { routing: routing.clone(), auth: Arc::new(Authenticator::local(&secret)) };
    let api = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the API on {}: {e}", args.api_addr))?;
    let api_addr = api.local_addr()?;
    let mut api_shutdown = shutdown_rx.clone();
    let api_task = tokio::spawn(async move {
        axum::serve(api, mailroom::api::router(api_state, Vec::new()))
            .with_graceful_shutdown(async move {
                let _ = api_shutdown.wait_for(|stop| *stop).await;
            })
            .await
    });

    let smtp = tokio::net::TcpListener::bind(args.smtp_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for SMTP on {}: {e}", args.smtp_addr))?;
    let smtp_addr = smtp.local_addr()?;
    let delivery = Arc::new(IngestDelivery { service, channels });
    let smtp_task = tokio::spawn(smtp_listener::serve(
        smtp,
        delivery,
        SmtpListenerConfig { max_message_bytes: config.ingest.max_message_bytes, ..SmtpListenerConfig::default() },
        shutdown_rx.clone(),
        Duration::from_secs(30),
    ));

    println!("mailroom serve: data directory {}", data_dir.display());
    for c in &config.channels {
        println!("  channel {:<12} {}  -> queue {}", c.name.as_str(), c.address, c.default_queue);
    }
    println!("SMTP listening on {smtp_addr} (send mail to a channel address above)");
    println!("API listening on http://{api_addr}/v1 (tokens: mailroom token --agent ana)");
    println!("press Ctrl-C to stop");

    tokio::signal::ctrl_c().await?;
    println!("stopping: finishing messages in progress");
    let _ = shutdown_tx.send(true);
    smtp_task.await??;
    api_task.await??;
    for w in workers {
        w.await?;
    }
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
