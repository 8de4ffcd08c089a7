//! What every function builds once at start-up: configuration and the AWS-backed services.

use aws_config::SdkConfig;

use crate::config::{Config, ConfigError};
use crate::queue::Queues;
use crate::sealing::Sealer;
use crate::store::Store;

#[derive(Clone)]
pub struct Services {
    pub config: Config,
    pub store: Store,
    pub queues: Queues,
    pub sealer: Sealer,
}

impl Services {
    pub fn new(config: Config, aws: &SdkConfig) -> Self {
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
        let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Ok(Self::new(config, &aws))
    }
}
