//! `mailroom serve`: every front door and worker in one process, on the embedded backend.
//!
//! Front doors: the SMTP listener (standing in for Amazon SES's inbound endpoint), the IMAP/POP3
//! poller of every channel with a mailbox (IMAP IDLE for near-instant pickup), and the agent API.
//! Workers: offers, and each capability's own (outbound mail, CRM handoff, Teams maintenance).
//! Each capability adds its API module and its tasks below; the order of shutdown is the reverse:
//! front doors stop taking work first, then the workers finish what is in hand.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use clap::Args;
use mailroom::adapters::embedded::EmbeddedBackend;
use mailroom::adapters::smtp_listener::{self, DeliveryRejection, Envelope, SmtpDelivery, SmtpListenerConfig};
use mailroom::api::auth::{Authenticator, local_secret};
use mailroom::api::{ApiModule, AppState};
use mailroom::app::{embedded_mailboxes, embedded_routing_service};
use mailroom::config::{AppConfig, ChannelSet};
use mailroom::domain::ids::EmailAddress;
use mailroom::domain::journal::Source;
use mailroom::usecases::channel_directory::ChannelDirectory;
use mailroom::usecases::ingest::{InboundEmail, IngestService};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// How often the SMTP listener's view of the channels (which recipients it accepts) is refreshed,
/// so a channel an admin adds through the API receives mail without a restart.
const RECIPIENT_REFRESH: Duration = Duration::from_secs(5);

/// Hands each accepted message to the ingest use case; answers 250 only once it is journaled.
struct IngestDelivery {
    service: IngestService,
    /// The channels as last read from the directory (the listener asks synchronously).
    channels: RwLock<Arc<ChannelSet>>,
}

#[async_trait]
impl SmtpDelivery for IngestDelivery {
    fn accepts_recipient(&self, rcpt: &str) -> bool {
        let channels = self.channels.read().expect("channel snapshot lock").clone();
        EmailAddress::parse(rcpt).ok().and_then(|a| channels.by_address(&a).map(|(c, _)| c.enabled)).unwrap_or(false)
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

/// Keeps `delivery`'s channel snapshot current until shutdown.
async fn refresh_recipients(
    delivery: Arc<IngestDelivery>,
    directory: ChannelDirectory,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(RECIPIENT_REFRESH);
    // The watch guard is dropped inside, so the task stays `Send`.
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => match directory.current().await {
                Ok(set) => *delivery.channels.write().expect("channel snapshot lock") = set,
                Err(e) => tracing::warn!(error = %e, "cannot re-read the channels; keeping the last known ones"),
            },
        }
    }
}

/// What `run` assembles: the API modules of each capability and the tasks to await at shutdown.
struct Assembly {
    modules: Vec<ApiModule>,
    workers: Vec<JoinHandle<()>>,
    /// Lines printed at start, telling the user what runs where.
    banner: Vec<String>,
}

pub async fn run(args: ServeArgs, config: &AppConfig, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let backend = EmbeddedBackend::open(data_dir)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let auth = Arc::new(Authenticator::local(&local_secret(data_dir)?));
    let mut parts = Assembly { modules: Vec::new(), workers: Vec::new(), banner: Vec::new() };

    // Channels (seeded from the config, then administered through the API) and their mailboxes.
    let mailboxes = embedded_mailboxes(config, &backend).await?;
    parts.workers.push(tokio::spawn(mailroom::usecases::poll_mailbox::run_idle_loop(
        mailboxes.poller.clone(),
        shutdown_rx.clone(),
    )));
    parts.modules.push(mailroom::api::channels::module(mailboxes.admin.clone(), auth.clone()));

    // Routing: the offer workers.
    let routing = embedded_routing_service(&backend);
    routing.seed(&config.agents, &config.queues).await?;
    for _ in 0..args.offer_workers.max(1) {
        let (routing, shutdown) = (routing.clone(), shutdown_rx.clone());
        parts.workers.push(tokio::spawn(async move { routing.run_worker(shutdown).await }));
    }

    // Outbound mail (issue 5): compose and profile API, and the send worker. The internal server
    // (Amazon SES in AWS) is the outbox directory here; channels with an SMTP server use it. Each
    // channel's outgoing side is read from the channel store at every send, so what an admin sets
    // through the API applies at once.
    {
        use mailroom::adapters::outbound::{EmbeddedOutbound, SmtpSender, StoredChannels, outbox::OutboxSender};
        let env = |name: &str| std::env::var(name).ok();
        let outbound_cfg = config.outbound_settings(&env)?;
        let outbox = OutboxSender::in_data_dir(data_dir);
        let secrets = Arc::new(mailroom::adapters::secrets::EmbeddedSecretStore::open(&backend)?);
        let mail = EmbeddedOutbound::build(
            &backend,
            StoredChannels::new(mailboxes.store.clone()),
            outbound_cfg.attachments,
            secrets,
            // The [mailbox] network policy covers outgoing servers too (on one machine: anything
            // but metadata and link-local addresses, unless the file says otherwise).
            SmtpSender::from_env()?
                .with_policy(config.mailbox.network_policy(mailroom::domain::mailbox::NetworkPolicy::LOCAL)),
            Some(Arc::new(outbox.clone())),
        )?;
        parts.modules.push(mailroom::api::mail::module(
            Arc::new(mail.outbound),
            Arc::new(mail.profiles),
            routing.clone(),
            auth.clone(),
        ));
        let (worker, shutdown) = (mail.worker, shutdown_rx.clone());
        parts.workers.push(tokio::spawn(async move { worker.run(shutdown).await }));
        let smtp_channels: Vec<String> = mailboxes
            .store
            .list()
            .await?
            .into_iter()
            .filter(|r| matches!(r.channel.outbound.server, mailroom::domain::outbound::OutgoingServer::Smtp { .. }))
            .map(|r| r.channel.name.to_string())
            .collect();
        let custom = if smtp_channels.is_empty() {
            String::new()
        } else {
            format!("; channels {} use their own SMTP server", smtp_channels.join(", "))
        };
        parts.banner.push(format!("outgoing mail: {} (internal server){custom}", outbox.dir().display()));
    }

    // CRM handoff (issue 7): the Local CRM until an admin saves Dynamics settings; the handoff worker.
    let (handoff, local_crm) = mailroom::adapters::local_crm::embedded_handoff_service(&backend)?;
    parts.modules.push(mailroom::api::crm::module(handoff.clone(), Some(local_crm), auth.clone()));
    {
        let mut shutdown = shutdown_rx.clone();
        // The watch guard is dropped inside, so the task stays `Send`.
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        parts.workers.push(tokio::spawn(mailroom::usecases::handoff::run_worker(handoff.clone(), stop)));
    }
    parts.banner.push(
        "CRM handoff to the Local CRM (cases: GET /v1/crm/cases; Dynamics: PUT /v1/admin/crm as an admin)".into(),
    );

    // Teams chat, when a Microsoft 365 tenant (or the Graph emulator) is configured.
    if let Some(graph) = mailroom::adapters::graph::GraphConfig::from_env()? {
        let teams = mailroom::adapters::graph::embedded_teams(&backend, data_dir, &graph).await?;
        parts.modules.push(mailroom::api::teams::module(teams.clone(), auth.clone()));
        parts.workers.push(tokio::spawn(teams.run_maintenance(
            Duration::from_secs(3_600),
            graph.directory_sync,
            shutdown_rx.clone(),
        )));
        parts.banner.push(format!("Teams chat through Graph at {}", graph.graph_url));
    }

    let api_state = AppState { routing: routing.clone(), auth: auth.clone(), handoff: Some(handoff.clone()) };
    let api = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the API on {}: {e}", args.api_addr))?;
    let api_addr = api.local_addr()?;
    let mut api_shutdown = shutdown_rx.clone();
    let app = mailroom::api::router(api_state, std::mem::take(&mut parts.modules));
    let api_task = tokio::spawn(async move {
        axum::serve(api, app)
            .with_graceful_shutdown(async move {
                let _ = api_shutdown.wait_for(|stop| *stop).await;
            })
            .await
    });

    let smtp = tokio::net::TcpListener::bind(args.smtp_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for SMTP on {}: {e}", args.smtp_addr))?;
    let smtp_addr = smtp.local_addr()?;
    let delivery = Arc::new(IngestDelivery {
        service: mailboxes.ingest.clone(),
        channels: RwLock::new(mailboxes.channels.current().await?),
    });
    parts.workers.push(tokio::spawn(refresh_recipients(
        delivery.clone(),
        mailboxes.channels.clone(),
        shutdown_rx.clone(),
    )));
    let smtp_task = tokio::spawn(smtp_listener::serve(
        smtp,
        delivery,
        SmtpListenerConfig { max_message_bytes: config.ingest.max_message_bytes, ..SmtpListenerConfig::default() },
        shutdown_rx.clone(),
        Duration::from_secs(30),
    ));

    println!("mailroom serve: data directory {}", data_dir.display());
    for c in mailboxes.channels.current().await?.channels() {
        let pulled = c
            .mailbox
            .as_ref()
            .map(|m| format!(" (polls {:?} at {}:{})", m.protocol, m.host.as_str(), m.port()))
            .unwrap_or_default();
        println!("  channel {:<12} {}  -> queue {}{pulled}", c.name.as_str(), c.address, c.default_queue);
    }
    println!("SMTP listening on {smtp_addr} (send mail to a channel address above)");
    println!("API listening on http://{api_addr}/v1 (tokens: mailroom token --agent ana)");
    for line in &parts.banner {
        println!("{line}");
    }
    println!("press Ctrl-C to stop");

    tokio::signal::ctrl_c().await?;
    println!("stopping: finishing messages in progress");
    let _ = shutdown_tx.send(true);
    smtp_task.await??;
    api_task.await??;
    for w in parts.workers {
        w.await?;
    }
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}
