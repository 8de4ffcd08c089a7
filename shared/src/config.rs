//! Runtime configuration, read once at start-up from the environment the SAM template sets.

use std::collections::HashMap;
use std::time::Duration;

use ipnet::IpNet;

use crate::retry::RetryPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing environment variable {0}")]
    Missing(&'static str),
    #[error("environment variable {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Names of the tables and queues the functions use. On AWS they come from the template's
/// `!Ref`s; locally the provisioner resolves the same template.
#[derive(Clone, Debug)]
pub struct Resources {
    pub endpoints_table: String,
    pub events_table: String,
    pub deliveries_table: String,
    pub api_keys_table: String,
    /// The KMS key that encrypts the data keys sealing endpoint secrets.
    pub secrets_kms_key_id: String,
    pub delivery_queue_url: String,
    pub delivery_dlq_url: String,
    pub ingest_dlq_url: String,
    /// The ingest function's own queue (only it is given it), to delay a failed event.
    pub ingest_queue_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted event body (`POST /events` and the ingest queue).
    pub max_payload_bytes: usize,
    /// How long one delivery request may take, connect to last byte.
    pub request_timeout: Duration,
    /// How much of a receiver's response body is read and kept.
    pub response_excerpt_bytes: usize,
    /// How long events and delivery history are kept.
    pub retention_days: i64,
    /// Most endpoints one venue may have: bounds the fan-out of an event, its item, and the
    /// ingest function's read of the venue's endpoints.
    pub max_endpoints_per_venue: usize,
}

/// Which destinations may be dialled in spite of the public-address rule, and which may use
/// plain `http`. Empty in production; loopback locally.
#[derive(Clone, Debug, Default)]
pub struct DestinationPolicy {
    pub allow_cidrs: Vec<IpNet>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub resources: Resources,
    pub limits: Limits,
    pub retry: RetryPolicy,
    /// The longest one SQS visibility change may hide a job (SQS allows 12 h from receipt);
    /// longer waits take several hops.
    pub max_hop: Duration,
    /// How long the re-sent jobs of a repeated event wait (see `ingest`).
    pub resume_delay: Duration,
    pub destinations: DestinationPolicy,
    pub user_agent: String,
    /// The first wait of a message that failed because AWS did; doubles with each receive
    /// ([`crate::backoff::outage_wait`]).
    pub outage_backoff: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| map.get(name).cloned())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let number = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(name).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
                    name,
                    message: format!("`{v}` is not a whole number"),
                }),
            }
        };
        let allow_cidrs = get("DESTINATION_ALLOW_CIDRS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>().map_err(|_| ConfigError::Invalid {
                    name: "DESTINATION_ALLOW_CIDRS",
                    message: format!("`{s}` is not a CIDR such as 127.0.0.0/8"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            resources: Resources {
                endpoints_table: required("ENDPOINTS_TABLE")?,
                events_table: required("EVENTS_TABLE")?,
                deliveries_table: required("DELIVERIES_TABLE")?,
                api_keys_table: required("API_KEYS_TABLE")?,
                secrets_kms_key_id: required("SECRETS_KMS_KEY_ID")?,
                delivery_queue_url: required("DELIVERY_QUEUE_URL")?,
                delivery_dlq_url: required("DELIVERY_DLQ_URL")?,
                ingest_dlq_url: required("INGEST_DLQ_URL")?,
                ingest_queue_url: get("INGEST_QUEUE_URL").filter(|v| !v.is_empty()),
            },
            limits: Limits {
                max_payload_bytes: number("MAX_PAYLOAD_BYTES", 256 * 1024)? as usize,
                request_timeout: Duration::from_millis(number("REQUEST_TIMEOUT_MS", 15_000)?),
                response_excerpt_bytes: number("RESPONSE_EXCERPT_BYTES", 4096)? as usize,
                retention_days: number("RETENTION_DAYS", 30)? as i64,
                max_endpoints_per_venue: number("MAX_ENDPOINTS_PER_VENUE", 100)?.max(1) as usize,
            },
            retry: {
                let defaults = RetryPolicy::default();
                let schedule = match get("RETRY_SCHEDULE_SECONDS").filter(|v| !v.is_empty()) {
                    None => defaults.schedule,
                    Some(list) => list
                        .split(',')
                        .map(|s| {
                            s.trim()
                                .parse::<f64>()
                                .ok()
                                .filter(|v| *v >= 0.0)
                                .map(Duration::from_secs_f64)
                                .ok_or_else(|| ConfigError::Invalid {
                                    name: "RETRY_SCHEDULE_SECONDS",
                                    message: format!("`{s}` is not a number of seconds"),
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                };
                RetryPolicy {
                    schedule,
                    jitter: defaults.jitter,
                    overload_wait: Duration::from_millis(number(
                        "OVERLOAD_WAIT_MS",
                        defaults.overload_wait.as_millis() as u64,
                    )?),
                    disable_after: Duration::from_secs(number(
                        "DISABLE_AFTER_SECONDS",
                        defaults.disable_after.as_secs(),
                    )?),
                }
            },
            max_hop: Duration::from_secs(number("MAX_HOP_SECONDS", 43_000)?.clamp(1, 43_000)),
            resume_delay: Duration::from_secs(number("RESUME_DELAY_SECONDS", 900)?.min(900)),
            destinations: DestinationPolicy { allow_cidrs },
            user_agent: format!("PopupWebhooks/{}", env!("CARGO_PKG_VERSION")),
            outage_backoff: Duration::from_millis(number("OUTAGE_BACKOFF_BASE_MS", 10_000)?.max(1)),
        })
    }
}
