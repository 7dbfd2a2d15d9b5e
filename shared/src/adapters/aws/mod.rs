//! AWS adapters: S3 for raw mail, DynamoDB for state, SQS for work.
//!
//! Clients are built once per process ([`AwsBackend::connect`]) and shared by every invocation.
//! SDK errors keep their cause and are sorted by [`classify`] into `Transient` (worth a retry:
//! throttling, 5xx, timeouts, dropped connections) and `Permanent` (everything else), the
//! distinction that decides between an SQS retry and a recorded failure.

mod dynamodb;
pub mod routing;
mod s3;
mod sqs;

use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

pub use aws_config::SdkConfig;

pub use self::dynamodb::DynamoIngestStore;
pub use self::s3::S3RawStore;
pub use self::sqs::SqsWorkQueue;
use crate::config::ConfigError;
use crate::ports::BackendError;

/// Where the AWS resources are, from the function's environment (set by `template.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// The DynamoDB state table (`pk`/`sk`, GSI `gsi1`).
    pub table: String,
    /// The bucket SES writes inbound mail to (under `inbound_prefix`) and raw mail is kept in (`raw/`).
    pub raw_bucket: String,
    /// The SQS queue that hands queued interactions to routing.
    pub routing_queue_url: String,
    /// The key prefix SES writes inbound mail under.
    pub inbound_prefix: String,
}

impl AwsSettings {
    pub const DEFAULT_INBOUND_PREFIX: &'static str = "inbound/";

    /// Reads `MAILROOM_TABLE`, `MAILROOM_RAW_BUCKET`, `MAILROOM_ROUTING_QUEUE_URL` and
    /// `MAILROOM_INBOUND_PREFIX` (default `inbound/`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`AwsSettings::from_env`], with the variables looked up by `lookup` (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| {
            lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).ok_or(ConfigError::MissingEnv { name })
        };
        Ok(Self {
            table: required("MAILROOM_TABLE")?,
            raw_bucket: required("MAILROOM_RAW_BUCKET")?,
            routing_queue_url: required("MAILROOM_ROUTING_QUEUE_URL")?,
            inbound_prefix: lookup("MAILROOM_INBOUND_PREFIX")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| Self::DEFAULT_INBOUND_PREFIX.to_owned()),
        })
    }
}

/// The SDK configuration from the environment (credentials, region, `AWS_ENDPOINT_URL`).
pub async fn sdk_config() -> SdkConfig {
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

/// True when an endpoint override is set: emulators such as moto need path-style S3 addressing.
pub fn endpoint_overridden() -> bool {
    ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// An S3 client; `force_path_style` for emulators on `localhost`/`127.0.0.1`.
pub fn s3_client(config: &SdkConfig, force_path_style: bool) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(config).force_path_style(force_path_style).build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// The handoff queue named by `MAILROOM_HANDOFF_QUEUE_URL`, when the stack gives one: ingest tells
/// the handoff about each message threaded into an interaction, so its case gets the email too.
pub async fn handoff_queue_from_env() -> Option<Arc<dyn crate::ports::WorkQueue>> {
    let url = std::env::var("MAILROOM_HANDOFF_QUEUE_URL").ok().filter(|v| !v.trim().is_empty())?;
    Some(Arc::new(SqsWorkQueue::new(aws_sdk_sqs::Client::new(&sdk_config().await), url.trim())))
}

/// The three adapters ingest needs, on one set of SDK clients.
#[derive(Clone)]
pub struct AwsBackend {
    pub raw: Arc<S3RawStore>,
    pub store: Arc<DynamoIngestStore>,
    pub routing: Arc<SqsWorkQueue>,
}

impl AwsBackend {
    /// Loads the SDK configuration from the environment and builds the clients (once, at INIT).
    pub async fn connect(settings: &AwsSettings) -> Self {
        let config = sdk_config().await;
        Self::from_sdk_config(&config, settings, endpoint_overridden())
    }

    pub fn from_sdk_config(config: &SdkConfig, settings: &AwsSettings, s3_path_style: bool) -> Self {
        Self::from_clients(
            s3_client(config, s3_path_style),
            aws_sdk_dynamodb::Client::new(config),
            aws_sdk_sqs::Client::new(config),
            settings,
        )
    }

    pub fn from_clients(
        s3: aws_sdk_s3::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        sqs: aws_sdk_sqs::Client,
        settings: &AwsSettings,
    ) -> Self {
        Self {
            raw: Arc::new(S3RawStore::new(s3, &settings.raw_bucket)),
            store: Arc::new(DynamoIngestStore::new(dynamodb, &settings.table)),
            routing: Arc::new(SqsWorkQueue::new(sqs, &settings.routing_queue_url)),
        }
    }
}

/// Error codes that mean "try again later", across S3, DynamoDB and SQS.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "SlowDown",
    "TransactionInProgressException",
    "TransactionConflictException",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "KmsThrottled",
    "KMSThrottlingException",
];

/// Whether a failed call can succeed when retried. (The SDK has already retried it with backoff;
/// this decides whether the whole piece of work is worth another attempt later.)
pub(crate) fn is_transient<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(_) | SdkError::ServiceError(_) => {
            err.code().is_some_and(|code| TRANSIENT_CODES.contains(&code))
                || err.raw_response().is_some_and(|r| r.status().is_server_error() || r.status().as_u16() == 429)
        }
        _ => false,
    }
}

/// The one mapping of SDK errors to [`BackendError`]: the SDK error stays the source.
pub(crate) fn classify<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if is_transient(&err) { BackendError::transient(operation, err) } else { BackendError::permanent(operation, err) }
}

/// The HTTP status of a service's answer, when there was one.
pub(crate) fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::types::error::ProvisionedThroughputExceededException;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
    }

    #[test]
    fn settings_name_the_missing_variable() {
        let env: HashMap<&str, &str> =
            HashMap::from([("MAILROOM_TABLE", "t"), ("MAILROOM_RAW_BUCKET", "b"), ("MAILROOM_ROUTING_QUEUE_URL", "u")]);
        let s = AwsSettings::from_lookup(|n| env.get(n).map(|v| v.to_string())).unwrap();
        assert_eq!(s.inbound_prefix, "inbound/");
        assert_eq!(s.table, "t");
        let err = AwsSettings::from_lookup(|n| (n != "MAILROOM_RAW_BUCKET").then(|| "x".to_string())).unwrap_err();
        assert!(matches!(err, ConfigError::MissingEnv { name: "MAILROOM_RAW_BUCKET" }), "{err:?}");
        assert!(err.to_string().contains("MAILROOM_RAW_BUCKET"));
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        let throttled = ProvisionedThroughputExceededException::builder()
            .message("slow down")
            .meta(
                aws_sdk_dynamodb::error::ErrorMetadata::builder()
                    .code("ProvisionedThroughputExceededException")
                    .build(),
            )
            .build();
        let err: SdkError<PutItemError, HttpResponse> =
            SdkError::service_error(PutItemError::ProvisionedThroughputExceededException(throttled), response(400));
        let mapped = classify("put", err);
        assert!(mapped.is_transient());
        assert!(std::error::Error::source(&mapped).is_some(), "the SDK error is kept as the source");

        let unhandled =
            PutItemError::generic(aws_sdk_dynamodb::error::ErrorMetadata::builder().code("Whatever").build());
        assert!(classify("put", SdkError::service_error(unhandled, response(503))).is_transient());

        let denied = PutItemError::generic(
            aws_sdk_dynamodb::error::ErrorMetadata::builder().code("AccessDeniedException").build(),
        );
        assert!(!classify("put", SdkError::service_error(denied, response(400))).is_transient());

        let timeout: SdkError<PutItemError, HttpResponse> = SdkError::timeout_error("deadline");
        assert!(classify("put", timeout).is_transient());
        let construction: SdkError<PutItemError, HttpResponse> = SdkError::construction_failure("bad input");
        assert!(!classify("put", construction).is_transient());
    }
}
