//! Test support: a whole local stack per test (own tables and queues on moto), real HTTP
//! receivers on loopback, an API client, and the third-party signature verifiers.

pub mod faults;
pub mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use local::{Stack, StackOptions};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef0123";

/// The workspace root, where `.venv` and `tests/verifiers` live.
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

pub async fn aws() -> aws_config::SdkConfig {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "AWS_ENDPOINT_URL is not set: run the integration tests with `make test`, which starts moto"
    );
    aws_config::load_defaults(shared::storage::services::behavior_version()).await
}

/// A unique resource prefix, so tests run side by side on one moto.
pub fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("t{:x}{:04x}", nanos, rand_u16())
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u16
}

/// The local defaults on a fresh prefix, from `infra/template.yaml` or the template that
/// `POPUP_TEMPLATE` names (the IAM test runs a test against a copy with an action removed).
///
/// The circuit breaker opens only after 1,000 failures in a row here (and never on a failure
/// rate), so that a test of retries sees every attempt it plans; the breaker's own tests
/// (tests/scale.rs) set it.
pub fn local_options() -> StackOptions {
    let mut options = StackOptions::local(
        &unique_prefix(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ADMIN_KEY,
    );
    options
        .env_overrides
        .insert("BREAKER_THRESHOLD".into(), "1000".into());
    options
        .env_overrides
        .insert("BREAKER_RATE_MIN_ATTEMPTS".into(), "1000000".into());
    if let Some(template) = std::env::var_os("POPUP_TEMPLATE") {
        options.template = template.into();
    }
    options
}

/// [`local_options`] with extra environment for every function.
pub fn local_options_with(env: &[(&str, &str)]) -> StackOptions {
    let mut options = local_options();
    for (k, v) in env {
        options.env_overrides.insert(k.to_string(), v.to_string());
    }
    options
}

/// [`local_options_with`] on the fault suites' compressed clock: retry waits of 1 s, an
/// overload wait of 2 s, a request timeout of 1.5 s, and the delivery queue's visibility
/// timeout at 2 s (a crashed worker's jobs come back in seconds). Same mechanism, smaller
/// numbers.
pub fn compressed_options(extra: &[(&str, &str)]) -> StackOptions {
    let mut o = local_options_with(&[
        ("RETRY_SCHEDULE_SECONDS", "1,1,1"),
        ("OVERLOAD_WAIT_MS", "2000"),
        ("REQUEST_TIMEOUT_MS", "1500"),
    ]);
    for (k, v) in extra {
        o.env_overrides.insert(k.to_string(), v.to_string());
    }
    o.queue_overrides.insert(
        "DeliveryQueue".into(),
        [("VisibilityTimeout".to_owned(), "2".to_owned())].into(),
    );
    o
}

/// Receives up to `want` messages of a queue the way the event source mapping does (at most
/// `within`).
pub async fn receive_jobs(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    want: usize,
    within: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let deadline = std::time::Instant::now() + within;
    let mut messages = Vec::new();
    while messages.len() < want && std::time::Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        messages.extend(out.messages.unwrap_or_default());
    }
    messages
}

/// The deliver function of `stack` for a test to play (calling its handler as Lambda would),
/// with the SQS client and trigger of Lambda's poller: both under the function's identity,
/// with the function's environment plus `overrides`.
pub fn played_deliver(
    stack: &Stack,
    overrides: &HashMap<String, String>,
) -> (
    deliver::Deliver,
    aws_sdk_sqs::Client,
    local::provision::QueueTrigger,
) {
    let aws = stack.aws_of(local::DELIVER_FUNCTION).unwrap();
    let trigger = stack
        .provisioned
        .trigger_of(local::DELIVER_FUNCTION)
        .unwrap()
        .clone();
    let mut env = stack
        .provisioned
        .env_of(local::DELIVER_FUNCTION)
        .unwrap()
        .clone();
    env.extend(overrides.clone());
    let services = shared::storage::services::Services::new(
        shared::runtime::config::Config::from_map(&env).unwrap(),
        &aws,
    );
    let deliver = deliver::Deliver::from_services(&services).unwrap();
    (deliver, aws_sdk_sqs::Client::new(&aws), trigger)
}

/// A log writer that keeps everything written to it (for a test binary that installs a
/// process-wide subscriber of its own).
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A stack with every function running.
pub async fn start_stack() -> Stack {
    start_with(local_options()).await
}

/// The last warnings and errors the functions under test logged (all tests of this process).
static FUNCTION_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps each log line in [`FUNCTION_LOG`], and prints it when `RUST_LOG` asks for logs.
struct LogTee;

impl std::io::Write for LogTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if std::env::var_os("RUST_LOG").is_some() {
            eprint!("{text}");
        }
        if let Ok(mut log) = FUNCTION_LOG.lock() {
            log.extend(text.lines().map(str::to_owned));
            let excess = log.len().saturating_sub(200);
            log.drain(..excess);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Warnings and errors of the functions (or what `RUST_LOG` selects) are kept for
/// [`function_errors`].
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,aws_config=error,aws_smithy_runtime=error".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| LogTee)
            .try_init();
    });
}

/// Every item of every table of the stack (one Scan page each: test-sized tables), as
/// (the table's logical id, the item printed).
pub async fn all_items(stack: &Stack) -> Vec<(String, String)> {
    let ddb = aws_sdk_dynamodb::Client::new(&stack.aws);
    let mut found = Vec::new();
    for (logical, table) in &stack.provisioned.physical {
        if !logical.ends_with("Table") {
            continue;
        }
        let items = ddb
            .scan()
            .table_name(table)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        found.extend(
            items
                .iter()
                .map(|item| (logical.clone(), format!("{item:?}"))),
        );
    }
    found
}

/// What the functions of this test process logged at warning level and above, most recent
/// last: for the message of an assertion about something that did not happen.
pub fn function_errors() -> String {
    let log = FUNCTION_LOG.lock().map(|l| l.clone()).unwrap_or_default();
    let lines: Vec<&String> = log.iter().rev().take(12).collect();
    lines
        .into_iter()
        .rev()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn start_with(options: StackOptions) -> Stack {
    init_logs();
    Stack::start(aws().await, options)
        .await
        .expect("local stack starts")
}

/// The API as a venue admin's tool would call it.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    pub key: Option<String>,
}

impl Client {
    pub fn new(stack: &Stack) -> Self {
        Self {
            base: stack.api_url.clone(),
            http: reqwest::Client::new(),
            key: Some(ADMIN_KEY.to_owned()),
        }
    }

    pub fn without_key(stack: &Stack) -> Self {
        Self {
            key: None,
            ..Self::new(stack)
        }
    }

    pub async fn send_raw(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(key) = &self.key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.expect("API answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("API answered non-JSON: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send_raw("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send_raw("POST", path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send_raw("PATCH", path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send_raw("DELETE", path, None).await
    }

    /// Creates an endpoint and returns the 201 body (with its secret or token).
    pub async fn create_endpoint(&self, venue: &str, body: Value) -> Value {
        let (status, created) = self.post(&format!("/venues/{venue}/endpoints"), body).await;
        assert_eq!(status, 201, "{created}");
        created
    }
}

/// One request as a receiver saw it.
#[derive(Clone, Debug)]
pub struct Captured {
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// A real HTTP receiver on loopback that records what it gets and answers with a set status.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    captured: Arc<Mutex<Vec<Captured>>>,
    status: Arc<AtomicU16>,
    /// Bodies containing the first string are answered with the second's status instead.
    rules: Arc<Mutex<Vec<(String, u16)>>>,
}

impl Receiver {
    pub async fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let receiver = Receiver {
            url: format!("http://{addr}/hooks"),
            captured: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
            rules: Arc::default(),
        };
        let handle = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let handle = handle.clone();
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let body = req.into_body().collect().await?.to_bytes();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            let rule = handle
                                .rules
                                .lock()
                                .unwrap()
                                .iter()
                                .find(|(part, _)| body.contains(part.as_str()))
                                .map(|(_, status)| *status);
                            handle
                                .captured
                                .lock()
                                .unwrap()
                                .push(Captured { headers, body });
                            let status =
                                rule.unwrap_or_else(|| handle.status.load(Ordering::SeqCst));
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(format!(
                                "receiver answered {status}"
                            ))));
                            *resp.status_mut() =
                                hyper::StatusCode::from_u16(status).unwrap_or_default();
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Answers requests whose body contains `part` with `status`, whatever the set status.
    pub fn answer(&self, part: &str, status: u16) {
        self.rules.lock().unwrap().push((part.to_owned(), status));
    }

    pub fn received(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (at most `timeout`), then returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Captured> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Publishes `events` for `venue` as one batch of the ingest function accepts them (so the
/// first attempts of up to ten events at one endpoint are one job and one history item).
pub async fn publish_together(stack: &Stack, venue: &str, events: &[Value]) {
    let env = stack.provisioned.env_of(local::API_FUNCTION).unwrap();
    let services = shared::storage::services::Services::new(
        shared::runtime::config::Config::from_map(env).unwrap(),
        &stack.aws_of(local::API_FUNCTION).unwrap(),
    );
    let publisher = shared::pipeline::ingest::Publisher::new(&services);
    let batch = shared::pipeline::ingest::IngestBatch::default();
    let tenant = shared::storage::store::Tenant::authorized(
        shared::model::ids::VenueId::parse(venue).unwrap(),
    );
    let mut jobs = Vec::new();
    for event in events {
        let request = serde_json::from_value(event.clone()).unwrap();
        let accepted = publisher
            .accept(&tenant, request, (chrono::Utc::now(), &batch))
            .await
            .unwrap();
        jobs.extend(accepted.jobs);
    }
    publisher.enqueue(&jobs).await.unwrap();
}

/// How many delivery jobs wait in the stack's retries table (its sweep cursor aside).
pub async fn waiting_retries(stack: &Stack) -> usize {
    let ddb = aws_sdk_dynamodb::Client::new(&stack.aws);
    let table = &stack.provisioned.physical["RetriesTable"];
    let mut count = 0;
    let mut start = None;
    loop {
        let out = ddb
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan the retries table");
        count += out
            .items()
            .iter()
            .filter(|item| {
                item.get("slot")
                    .and_then(|s| s.as_s().ok())
                    .map(String::as_str)
                    != Some("#cursor")
            })
            .count();
        start = out.last_evaluated_key;
        if start.is_none() {
            return count;
        }
    }
}

/// Polls `check` until it returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_verifier(mut command: Command, input: &Value) -> Vec<String> {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting {command:?}: {e} (run `make test` to install the verifiers)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("verifier runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn verifier_input(secret: &str, requests: &[Captured]) -> Value {
    Value::Array(
        requests
            .iter()
            .map(|r| json!({"secret": secret, "headers": r.headers, "body": r.body}))
            .collect(),
    )
}

/// Verifies with the PyPI `standardwebhooks` library: one "ok" or "fail …" per request.
pub fn verify_with_python(secret: &str, requests: &[Captured]) -> Vec<String> {
    let root = repo_root();
    let mut cmd = Command::new(root.join(".venv/bin/python"));
    cmd.arg(root.join("tests/verifiers/verify.py"));
    run_verifier(cmd, &verifier_input(secret, requests))
}

/// Verifies with the npm `standardwebhooks` and `svix` libraries.
pub fn verify_with_node(secret: &str, requests: &[Captured]) -> Vec<String> {
    let root = repo_root();
    let mut cmd = Command::new("node");
    cmd.arg(root.join("tests/verifiers/verify.mjs"));
    run_verifier(cmd, &verifier_input(secret, requests))
}

/// Signatures computed by the PyPI library for `(secret, id, timestamp, body)` inputs.
pub fn sign_with_python(inputs: &[(String, String, i64, String)]) -> Vec<String> {
    let root = repo_root();
    let mut cmd = Command::new(root.join(".venv/bin/python"));
    cmd.arg(root.join("tests/verifiers/verify.py"))
        .arg("--sign");
    let input = Value::Array(
        inputs
            .iter()
            .map(|(secret, id, ts, body)| {
                json!({"secret": secret, "id": id, "timestamp": ts.to_string(), "body": body})
            })
            .collect(),
    );
    run_verifier(cmd, &input)
}

/// A moto of its own, started as `make test` starts the suite's (IAM enforced,
/// `scripts/moto_server.py`), for a test whose calls must stay out of the suite's access log
/// (which the least-privilege audit reads). Stopped when dropped.
pub struct OwnMoto {
    pub url: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl OwnMoto {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let root = repo_root();
        let dir = root.join(format!(".dev/own-moto-{port}"));
        std::fs::create_dir_all(&dir).expect("moto dir");
        let credentials = dir.join("operator-credentials");
        let child = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("scripts/moto_server.py"))
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg(&credentials)
            .arg(dir.join("access.jsonl"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto (run `make test`, which installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let text = loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if let (true, Ok(text)) = (ready, std::fs::read_to_string(&credentials)) {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} = ")))
                .expect("operator credentials")
                .to_owned()
        };
        Self {
            url: format!("http://127.0.0.1:{port}"),
            access_key_id: field("aws_access_key_id"),
            secret_access_key: field("aws_secret_access_key"),
            child,
            dir,
        }
    }

    /// The environment that points a process at this moto as its operator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ]
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A stack with an operational endpoint registered (admin key only) on a receiver: the
/// client, the receiver and the endpoint's secret.
pub async fn with_operational_endpoint(stack: &local::Stack) -> (Client, Receiver, String) {
    let admin = Client::new(stack);
    let ops_rx = Receiver::start(200).await;
    let (status, ops) = admin
        .post(
            "/operational-endpoints",
            json!({"url": ops_rx.url, "event_types": ["endpoint.*", "delivery.exhausted"]}),
        )
        .await;
    assert_eq!(status, 201, "{ops}");
    let secret = ops["secret"].as_str().unwrap().to_owned();
    (admin, ops_rx, secret)
}
