//! The local stack around the three functions: the template's tables and queues on moto
//! ([`provision`]), API Gateway in front of the api function ([`gateway`]), and the SQS event
//! source mappings that trigger ingest and deliver ([`esm`]). `make dev` runs it; the
//! integration tests start one per test, each under its own resource prefix.

pub mod audit;
pub mod capacity;
pub mod esm;
pub mod gateway;
pub mod iam;
pub mod provision;
pub mod redrive;
pub mod sigv4;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use aws_config::SdkConfig;
use shared::runtime::config::Config;
use shared::storage::services::Services;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use provision::{ProvisionError, Provisioned};

pub const API_FUNCTION: &str = "ApiFunction";
pub const INGEST_FUNCTION: &str = "IngestFunction";
pub const DELIVER_FUNCTION: &str = "DeliverFunction";

/// `infra/template.yaml` of this checkout.
pub fn default_template() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra/template.yaml"
    ))
}

#[derive(Clone, Debug)]
pub struct StackOptions {
    pub template: PathBuf,
    /// Prefix of every table and queue name.
    pub prefix: String,
    pub api_addr: SocketAddr,
    /// Values of the template's parameters (`AdminApiKeySha256`, `DestinationAllowCidrs`, …).
    pub parameters: HashMap<String, String>,
    /// Environment set on top of what the template gives every function.
    pub env_overrides: HashMap<String, String>,
    /// Queue attributes set on top of the template's, by logical id (tests shorten the
    /// visibility timeout so crashed jobs come back in seconds).
    pub queue_overrides: HashMap<String, HashMap<String, String>>,
    pub run_api: bool,
    pub run_ingest: bool,
    pub run_deliver: bool,
    /// Concurrent pollers per queue (Lambda runs several per mapping); the batches they
    /// receive run concurrently up to the mapping's `MaximumConcurrency`.
    pub pollers: usize,
    /// Overrides every mapping's `MaximumConcurrency` (a test that wants one batch at a time).
    pub max_concurrency: Option<usize>,
    /// The period of the template's `Schedule` events (tests shorten it); `None`: as the
    /// template says.
    pub schedule_every: Option<std::time::Duration>,
    /// DynamoDB's capacity per partition key, metered between the functions and the local
    /// endpoint ([`capacity`]): AWS's figures by default, scaled down by tests that want a
    /// hot key; `None`: not metered.
    pub capacity: Option<capacity::Budgets>,
    /// Functions' `Timeout` instead of the template's, by logical id (tests shorten it).
    pub function_timeouts: HashMap<String, std::time::Duration>,
}

impl StackOptions {
    /// The local defaults: loopback destinations allowed, every function running.
    pub fn local(prefix: &str, api_addr: SocketAddr, admin_key: &str) -> Self {
        Self {
            template: default_template(),
            prefix: prefix.to_owned(),
            api_addr,
            parameters: HashMap::from([
                (
                    "AdminApiKeySha256".to_owned(),
                    shared::model::api_key::sha256_hex(admin_key),
                ),
                (
                    "DestinationAllowCidrs".to_owned(),
                    "127.0.0.0/8,::1/128".to_owned(),
                ),
            ]),
            env_overrides: HashMap::new(),
            queue_overrides: HashMap::new(),
            run_api: true,
            run_ingest: true,
            run_deliver: true,
            pollers: 2,
            max_concurrency: None,
            schedule_every: None,
            capacity: Some(capacity::Budgets::AWS),
            function_timeouts: HashMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Config(#[from] shared::runtime::config::ConfigError),
    #[error("{0}")]
    Start(String),
}

pub struct Stack {
    pub api_url: String,
    pub provisioned: Provisioned,
    pub aws: SdkConfig,
    /// Queue-triggered invocations so far, by function.
    pub invocations: esm::Stats,
    /// What the functions spent per DynamoDB partition key (`None` when not metered).
    pub capacity: Option<capacity::Meter>,
    /// What the functions reach AWS through: the meter when there is one.
    functions_aws: SdkConfig,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    pub async fn start(aws: SdkConfig, options: StackOptions) -> Result<Self, StackError> {
        // The functions' metric lines, which on Lambda go to stdout: in the log at DEBUG here
        // (unless a test took them first).
        shared::runtime::logging::set_metric_sink(|line| tracing::debug!(target: "emf", "{line}"));
        let provisioned = provision::provision(
            &aws,
            &options.template,
            &options.prefix,
            &options.parameters,
            &options.queue_overrides,
        )
        .await?;
        let (shutdown, watch_rx) = watch::channel(false);
        let invocations = esm::Stats::default();
        let mut tasks = Vec::new();
        // The functions reach the local endpoint through the capacity meter.
        let meter = match (options.capacity, aws.endpoint_url()) {
            (Some(budgets), Some(_)) => Some(
                capacity::Meter::start(
                    &aws,
                    provisioned.tables.clone(),
                    budgets,
                    sigv4::Keys::of(provisioned.identities.values()),
                )
                .await
                .map_err(|e| StackError::Start(format!("capacity meter: {e}")))?,
            ),
            _ => None,
        };
        let functions_aws = match &meter {
            Some(meter) => {
                let mut config = aws.to_builder().endpoint_url(&meter.url);
                // Set in code: it wins over `AWS_ENDPOINT_URL` in each client's config.
                config.insert_origin("endpoint_url", aws_types::origin::Origin::shared_config());
                config.build()
            }
            None => aws.clone(),
        };
        // Each function signs its calls with its own identity, as its role would on AWS.
        let aws_of = |function: &str| -> Result<SdkConfig, StackError> {
            Ok(provisioned
                .identity_of(function)?
                .sdk_config(&functions_aws))
        };
        let services_of = |function: &str| -> Result<Services, StackError> {
            let mut env = provisioned.env_of(function)?.clone();
            env.extend(options.env_overrides.clone());
            Ok(Services::new(Config::from_map(&env)?, &aws_of(function)?))
        };

        let listener = TcpListener::bind(options.api_addr)
            .await
            .map_err(|e| StackError::Start(format!("binding {}: {e}", options.api_addr)))?;
        let api_url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(|e| StackError::Start(e.to_string()))?
        );
        if options.run_api {
            let env = provisioned.env_of(API_FUNCTION)?;
            let admin_key_sha256 = env
                .get("ADMIN_API_KEY_SHA256")
                .cloned()
                .ok_or_else(|| StackError::Start("ADMIN_API_KEY_SHA256 is not set".into()))?;
            let api = api::Api::new(&services_of(API_FUNCTION)?, admin_key_sha256)
                .map_err(|e| StackError::Start(e.to_string()))?;
            let timeout = options
                .function_timeouts
                .get(API_FUNCTION)
                .or(provisioned.timeouts.get(API_FUNCTION))
                .copied()
                .unwrap_or(gateway::INTEGRATION_TIMEOUT);
            let routes = provisioned
                .routes
                .iter()
                .filter(|r| r.function == API_FUNCTION)
                .cloned()
                .collect();
            tasks.push(tokio::spawn(gateway::serve(
                listener,
                Arc::new(api),
                Arc::new(gateway::Routes::new(routes)),
                timeout.min(gateway::INTEGRATION_TIMEOUT),
                watch_rx.clone(),
            )));
        }
        let mut scheduled = Vec::new();
        // Lambda's SQS event source mapping: several pollers per queue-triggered function,
        // under the function's identity (on AWS, the poller uses the function's role), and
        // up to MaximumConcurrency batches at once.
        let mut poll = |function: &str, handler: esm::Handler| -> Result<(), StackError> {
            let mut trigger = provisioned.trigger_of(function)?.clone();
            if let Some(timeout) = options.function_timeouts.get(function) {
                trigger.timeout = *timeout;
            }
            let sqs = aws_sdk_sqs::Client::new(&aws_of(function)?);
            let concurrency = Arc::new(tokio::sync::Semaphore::new(
                options
                    .max_concurrency
                    .unwrap_or(trigger.max_concurrency)
                    .max(1),
            ));
            for _ in 0..options.pollers {
                tasks.push(tokio::spawn(esm::run(
                    sqs.clone(),
                    trigger.clone(),
                    handler.clone(),
                    watch_rx.clone(),
                    invocations.clone(),
                    concurrency.clone(),
                )));
            }
            Ok(())
        };
        if options.run_ingest {
            let ingest = Arc::new(ingest::Ingest::from_services(&services_of(
                INGEST_FUNCTION,
            )?));
            // EventBridge's schedule: the scheduled event, through the function's entry point.
            for (function, period) in &provisioned.schedules {
                if function != INGEST_FUNCTION {
                    continue;
                }
                let period = options.schedule_every.unwrap_or(*period);
                let timeout = options
                    .function_timeouts
                    .get(INGEST_FUNCTION)
                    .or(provisioned.timeouts.get(INGEST_FUNCTION))
                    .copied()
                    .unwrap_or(std::time::Duration::from_secs(30));
                let (ingest, mut stop) = (ingest.clone(), watch_rx.clone());
                scheduled.push(tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(period);
                    ticks.tick().await;
                    loop {
                        tokio::select! {
                            _ = ticks.tick() => {}
                            _ = stop.changed() => return,
                        }
                        let scheduled = serde_json::json!({
                            "source": "aws.events",
                            "detail-type": "Scheduled Event",
                            "detail": {},
                        });
                        // Stopped at the function's timeout, as Lambda stops it.
                        let deadline = std::time::Instant::now() + timeout;
                        match tokio::time::timeout(
                            timeout,
                            ingest.invoke_until(scheduled, deadline),
                        )
                        .await
                        {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "the scheduled sweep failed; next tick")
                            }
                            Err(_) => tracing::warn!(
                                "the scheduled sweep was stopped at its timeout; next tick"
                            ),
                        }
                    }
                }));
            }
            poll(
                INGEST_FUNCTION,
                Arc::new(move |event, deadline| {
                    let ingest = ingest.clone();
                    Box::pin(async move { ingest.handle_until(event, deadline).await })
                }),
            )?;
        }
        if options.run_deliver {
            let deliver = deliver::Deliver::from_services(&services_of(DELIVER_FUNCTION)?)
                .map_err(|e| StackError::Start(e.to_string()))?;
            let deliver = Arc::new(deliver);
            poll(
                DELIVER_FUNCTION,
                Arc::new(move |event, deadline| {
                    let deliver = deliver.clone();
                    Box::pin(async move { deliver.handle_until(event, deadline).await })
                }),
            )?;
        }
        tasks.extend(scheduled);
        Ok(Self {
            api_url,
            provisioned,
            aws,
            invocations,
            capacity: meter,
            functions_aws,
            shutdown,
            tasks,
        })
    }

    /// Stops the next queue-triggered invocation of `function` (a logical id) `after` it
    /// starts, as Lambda stops a function that crashes or runs out of memory: nothing more of
    /// it runs, and its batch comes back whole after the visibility timeout.
    pub fn stop_next_invocation(&self, function: &str, after: std::time::Duration) {
        if let Ok(mut stats) = self.invocations.lock() {
            stats.entry(function.to_owned()).or_default().stop_next = Some(after);
        }
    }

    /// The AWS configuration of a function (by logical id) or of the event sources
    /// ([`iam::EVENT_SOURCE`]): this stack's endpoint (through its capacity meter), signed
    /// with that identity's keys.
    pub fn aws_of(&self, identity: &str) -> Result<SdkConfig, ProvisionError> {
        Ok(self
            .provisioned
            .identity_of(identity)?
            .sdk_config(&self.functions_aws))
    }

    /// The URL of a queue by its logical id in the template (`IngestQueue`, …).
    pub fn queue_url(&self, logical_id: &str) -> &str {
        self.provisioned
            .physical
            .get(logical_id)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// Ends every function at once, mid-batch if need be, as a crashed process would: nothing
    /// in flight is finished, recorded or deleted.
    pub fn abort(self) {
        for task in self.tasks {
            task.abort();
        }
    }

    /// Stops serving and polling; in-flight batches finish first.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
