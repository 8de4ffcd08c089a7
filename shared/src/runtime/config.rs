//! Runtime configuration, read once at start-up from the environment the SAM template sets.

use std::collections::HashMap;
use std::time::Duration;

use ipnet::IpNet;

use crate::delivery::breaker::BreakerPolicy;
use crate::delivery::destination::DestinationPolicy;
use crate::delivery::http_client::ClientSettings;
use crate::delivery::retry::RetryPolicy;

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
    /// Delivery jobs waiting longer than SQS can delay a message.
    pub retries_table: String,
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
    /// What an invocation keeps before its deadline (Lambda stops it at `Timeout`): no
    /// delivery attempt starts unless it can end `deadline_reserve` before the deadline; half
    /// of it is for recording what was sent, half for handing back what was not started.
    pub deadline_reserve: Duration,
    /// Events a second one venue may publish over the API (`POST /events`; 429 past it).
    pub venue_publish_rate_limit: u32,
}

/// Where a delivery job waits for its retry: on the delivery queue with `DelaySeconds` up to
/// `max_queue_delay`, in the retries table beyond, in slots of `slot` swept on a schedule.
/// Never in flight on the queue.
#[derive(Clone, Debug)]
pub struct WaitConfig {
    /// At most 900 s (SQS's limit).
    pub max_queue_delay: Duration,
    /// The retries table's time slot; at most half of `max_queue_delay`, so that a job
    /// written to the table always falls in a slot the sweep has not passed.
    pub slot: Duration,
    /// Partitions per slot: writes of one slot spread over this many partition keys.
    pub shards: u32,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub resources: Resources,
    pub limits: Limits,
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    /// Where a retry waits ([`crate::pipeline::waits`]).
    pub waits: WaitConfig,
    /// How long the re-sent jobs of a repeated event wait (see `ingest`).
    pub resume_delay: Duration,
    pub destinations: DestinationPolicy,
    pub user_agent: String,
    /// The first wait of a message that failed because AWS did; doubles with each receive
    /// ([`crate::delivery::backoff::outage_wait`]).
    pub outage_backoff: Duration,
    /// How many deliveries one page of a replay queues ([`crate::pipeline::replay`]).
    pub replay_page: usize,
    /// The most one page of an endpoint's backlog releases, a page a second
    /// ([`crate::pipeline::backlog`]).
    pub backlog_page_max: usize,
    /// Removing a venue ([`crate::pipeline::removal`]): items a purge step deletes (500), and how many
    /// steps the request itself runs before purge tasks take the rest (as many as 10 s allow).
    pub purge_page: usize,
    pub purge_inline_steps: usize,
    /// The venue's Settings → Webhooks page (the api function).
    pub portal: PortalConfig,
    /// Deliveries failed for good at one endpoint within this window are told to the
    /// operational endpoints as one `delivery.exhausted` (300 s; at most 840 s, under SQS's
    /// 900 s delay with room for the close).
    pub exhausted_window: Duration,
}

/// Portal sessions: where the page is, and how long a link may live.
#[derive(Clone, Debug)]
pub struct PortalConfig {
    /// The page's public URL (`https://…/portal`); empty: the API's own origin + `/portal`.
    pub url: Option<String>,
    /// The longest `ttl_seconds` a session may ask for.
    pub max_ttl_seconds: i64,
    /// Who may frame the page: the CSP `frame-ancestors` sources (Popup's dashboard).
    pub frame_ancestors: String,
}

impl Config {
    /// What the delivery client is built from.
    pub fn client(&self) -> ClientSettings {
        ClientSettings {
            destinations: self.destinations.clone(),
            user_agent: self.user_agent.clone(),
            request_timeout: self.limits.request_timeout,
            response_excerpt_bytes: self.limits.response_excerpt_bytes,
        }
    }

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
        // Read once: the delivery timeout also sets how long a probe holds its lease.
        let request_timeout_ms = number("REQUEST_TIMEOUT_MS", 15_000)?;
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
                retries_table: required("RETRIES_TABLE")?,
                secrets_kms_key_id: required("SECRETS_KMS_KEY_ID")?,
                delivery_queue_url: required("DELIVERY_QUEUE_URL")?,
                delivery_dlq_url: required("DELIVERY_DLQ_URL")?,
                ingest_dlq_url: required("INGEST_DLQ_URL")?,
                ingest_queue_url: get("INGEST_QUEUE_URL").filter(|v| !v.is_empty()),
            },
            limits: Limits {
                max_payload_bytes: number("MAX_PAYLOAD_BYTES", 256 * 1024)? as usize,
                request_timeout: Duration::from_millis(request_timeout_ms),
                response_excerpt_bytes: number("RESPONSE_EXCERPT_BYTES", 4096)? as usize,
                retention_days: number("RETENTION_DAYS", 30)? as i64,
                max_endpoints_per_venue: number("MAX_ENDPOINTS_PER_VENUE", 100)?.max(1) as usize,
                deadline_reserve: Duration::from_millis(number("DEADLINE_RESERVE_MS", 6_000)?),
                venue_publish_rate_limit: number("VENUE_PUBLISH_RATE_LIMIT", 1_000)?
                    .clamp(1, u64::from(u32::MAX)) as u32,
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
            breaker: {
                let defaults = BreakerPolicy::default();
                let ms = |d: Duration| d.as_millis() as u64;
                BreakerPolicy {
                    threshold: number("BREAKER_THRESHOLD", defaults.threshold as u64)?.max(1)
                        as u32,
                    cooldown: Duration::from_millis(
                        number("BREAKER_COOLDOWN_MS", ms(defaults.cooldown))?.max(1),
                    ),
                    max_cooldown: Duration::from_millis(
                        number("BREAKER_MAX_COOLDOWN_MS", ms(defaults.max_cooldown))?.max(1),
                    ),
                    // The probe's request, and a margin to record it.
                    probe_lease: Duration::from_millis(request_timeout_ms + 5_000),
                    max_hold: Duration::from_millis(
                        number("BREAKER_MAX_HOLD_MS", ms(defaults.max_hold))?.max(1),
                    ),
                    max_concurrent: number(
                        "ENDPOINT_MAX_CONCURRENCY",
                        defaults.max_concurrent as u64,
                    )?
                    .clamp(1, 50) as u32,
                    slow_after: Duration::from_millis(
                        number("SLOW_ATTEMPT_MS", ms(defaults.slow_after))?.max(1),
                    ),
                    slow_for: defaults.slow_for,
                    rate_percent: number(
                        "BREAKER_FAILURE_RATE_PERCENT",
                        u64::from(defaults.rate_percent),
                    )?
                    .clamp(1, 100) as u32,
                    rate_min_attempts: number(
                        "BREAKER_RATE_MIN_ATTEMPTS",
                        u64::from(defaults.rate_min_attempts),
                    )?
                    .clamp(1, u64::from(u32::MAX)) as u32,
                    rate_window: Duration::from_secs(
                        number(
                            "BREAKER_RATE_WINDOW_SECONDS",
                            defaults.rate_window.as_secs(),
                        )?
                        .max(1),
                    ),
                    host_endpoints: number(
                        "HOST_BREAKER_ENDPOINTS",
                        u64::from(defaults.host_endpoints),
                    )?
                    .min(10_000) as u32,
                    host_window: Duration::from_secs(
                        number(
                            "HOST_BREAKER_WINDOW_SECONDS",
                            defaults.host_window.as_secs(),
                        )?
                        .max(1),
                    ),
                    host_refresh: Duration::from_millis(
                        number("HOST_LIST_REFRESH_MS", ms(defaults.host_refresh))?.max(1),
                    ),
                }
            },
            waits: {
                let max_queue_delay = number("MAX_QUEUE_DELAY_SECONDS", 900)?.clamp(1, 900);
                let slot = number("RETRY_SLOT_SECONDS", 60)?.max(1);
                if slot * 2 > max_queue_delay {
                    return Err(ConfigError::Invalid {
                        name: "RETRY_SLOT_SECONDS",
                        message: format!(
                            "{slot} s is more than half of MAX_QUEUE_DELAY_SECONDS ({max_queue_delay} s)"
                        ),
                    });
                }
                WaitConfig {
                    max_queue_delay: Duration::from_secs(max_queue_delay),
                    slot: Duration::from_secs(slot),
                    shards: number("RETRY_SHARDS", 16)?.clamp(1, 1000) as u32,
                }
            },
            resume_delay: Duration::from_secs(number("RESUME_DELAY_SECONDS", 900)?.min(900)),
            destinations: DestinationPolicy { allow_cidrs },
            user_agent: format!("PopupWebhooks/{}", env!("CARGO_PKG_VERSION")),
            outage_backoff: Duration::from_millis(number("OUTAGE_BACKOFF_BASE_MS", 10_000)?.max(1)),
            replay_page: number("REPLAY_PAGE_SIZE", 100)?.clamp(1, 1000) as usize,
            backlog_page_max: number("BACKLOG_PAGE_MAX", 1000)?.clamp(1, 10_000) as usize,
            purge_page: number("PURGE_PAGE_SIZE", 500)?.clamp(1, 1000) as usize,
            purge_inline_steps: number("PURGE_INLINE_STEPS", 1_000_000)? as usize,
            exhausted_window: Duration::from_secs(
                number("EXHAUSTED_WINDOW_SECONDS", 300)?.clamp(1, 840),
            ),
            portal: PortalConfig {
                url: get("PORTAL_URL").filter(|v| !v.is_empty()),
                max_ttl_seconds: number("PORTAL_SESSION_MAX_TTL_SECONDS", 86_400)?.max(1) as i64,
                frame_ancestors: get("PORTAL_FRAME_ANCESTORS")
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| "'self'".into()),
            },
        })
    }
}
