//! Composition: building the services from configuration and a backend, once per process.

use std::path::PathBuf;
use std::sync::Arc;

use crate::adapters::embedded::{DEFAULT_MAX_RECEIVES, EmbeddedBackend};
use crate::adapters::mime::MailParserAdapter;
use crate::config::{AppConfig, ChannelSet, ConfigError};
use crate::domain::classify::RuleClassifier;
use crate::ports::{IngestStore, RawMailStore, SystemClock, WorkQueue};
use crate::usecases::ingest::IngestService;

/// The name of the queue that carries routing requests (the SQS `RoutingQueue` in AWS).
pub const ROUTING_QUEUE: &str = "routing";

/// The default data directory of the embedded backend, relative to the working directory.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("mailroom-data")
}

/// Builds the ingest service over any backend.
pub fn ingest_service(
    config: &AppConfig,
    raw_store: Arc<dyn RawMailStore>,
    store: Arc<dyn IngestStore>,
    routing: Arc<dyn WorkQueue>,
) -> Result<IngestService, ConfigError> {
    Ok(IngestService {
        raw_store,
        store,
        routing,
        parser: Arc::new(MailParserAdapter::default()),
        classifier: Arc::new(RuleClassifier::new(&config.classifier)),
        channels: ChannelSet::from_config(config)?,
        limits: config.ingest.clone(),
        clock: Arc::new(SystemClock),
    })
}

/// Builds the ingest service on the embedded backend.
pub fn embedded_ingest_service(config: &AppConfig, backend: &EmbeddedBackend) -> Result<IngestService, ConfigError> {
    let backend_arc = Arc::new(backend.clone());
    ingest_service(
        config,
        backend_arc.clone(),
        backend_arc,
        Arc::new(backend.queue(ROUTING_QUEUE, DEFAULT_MAX_RECEIVES)),
    )
}

/// Builds the routing service on the embedded backend.
pub fn embedded_routing_service(backend: &EmbeddedBackend) -> crate::usecases::routing::RoutingService {
    let backend_arc = Arc::new(backend.clone());
    crate::usecases::routing::RoutingService {
        store: backend_arc.clone(),
        transcripts: backend_arc,
        work: Arc::new(backend.queue(ROUTING_QUEUE, DEFAULT_MAX_RECEIVES)),
        clock: Arc::new(SystemClock),
    }
}
