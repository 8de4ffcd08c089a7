//! What every function builds once at start-up: configuration and the AWS-backed services.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::SdkConfig;

use crate::runtime::config::{Config, ConfigError};
use crate::storage::queue::Queues;
use crate::storage::sealing::Sealer;
use crate::storage::store::Store;

#[derive(Clone)]
pub struct Services {
    pub config: Config,
    pub store: Store,
    pub queues: Queues,
    pub sealer: Sealer,
}

/// The AWS SDK's behaviour defaults, pinned: a new SDK release does not change the
/// functions' retry, timeout or checksum behaviour until this line does.
pub fn behavior_version() -> aws_config::BehaviorVersion {
    aws_config::BehaviorVersion::v2026_01_12()
}

/// How the SDK retries a call that failed for a passing reason (throttling:
/// `ProvisionedThroughputExceededException`, `ThrottlingException`, SQS's `RequestThrottled`;
/// 5xx; connection errors): 4 attempts in all, jittered exponential backoff from 100 ms up to
/// 2 s. Past that the call is an error and the work comes back through its queue (the job
/// or event message is not deleted), waiting longer each time (see `deliver`).
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(4)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(2))
}

/// The longest one attempt of an AWS call may take: a request given up (its future dropped
/// at a deadline) may still land this long after it was sent, and no later.
pub const CALL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an AWS call may take: 2 s to connect, 5 s an attempt, 15 s in all with its
/// retries. A hung endpoint then fails the call well inside the functions' 30 s timeout,
/// so the failure path (leave the work to come back, record what is stranded) always runs.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(CALL_ATTEMPT_TIMEOUT)
        .operation_timeout(Duration::from_secs(15))
        .build()
}

impl Services {
    pub fn new(config: Config, aws: &SdkConfig) -> Self {
        let aws = &aws
            .to_builder()
            .retry_config(retry_config())
            .timeout_config(timeout_config())
            .build();
        let store = Store::new(
            aws_sdk_dynamodb::Client::new(aws),
            &config.resources,
            config.limits.retention_days,
        );
        let queues = Queues::new(
            aws_sdk_sqs::Client::new(aws),
            config.resources.delivery_queue_url.clone(),
        );
        let sealer = Sealer::new(
            aws_sdk_kms::Client::new(aws),
            config.resources.secrets_kms_key_id.clone(),
        );
        Self {
            config,
            store,
            queues,
            sealer,
        }
    }

    /// From the Lambda environment: variables set by the SAM template, credentials and
    /// `AWS_ENDPOINT_URL` (moto locally) as the SDK finds them.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let aws = aws_config::load_defaults(behavior_version()).await;
        Ok(Self::new(config, &aws))
    }
}
