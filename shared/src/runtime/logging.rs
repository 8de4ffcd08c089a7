//! Logging for the Lambda functions: one JSON object per line on stdout (the template sets
//! `LogFormat: JSON`; CloudWatch adds the time), with `level`, `message` and every field of the
//! event as a key of its own (`venue_id`, `endpoint_id`, `event_id`, `delivery_id`, `error`…),
//! so CloudWatch Logs Insights can filter on them. The level comes from
//! `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG` (a level name; `INFO` if unset). Only a level, not
//! per-module filters: a filter parser would bring a regex engine into every binary for nothing
//! the functions need; and a formatter of its own rather than `tracing-subscriber`'s `json`
//! feature, which would bring `tracing-serde` for the same output.
//!
//! Every line of an invocation carries Lambda's `requestId` (each function's `main` runs its
//! handler in [`with_request_id`]). Metric lines ([`crate::runtime::metrics`]) do not pass the level
//! filter: [`write_metric_line`] writes them straight to stdout, so raising the log level
//! never silences the metrics and the alarms on them.

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `work` (one invocation) with Lambda's request id on each of its log lines.
pub async fn with_request_id<F: Future>(request_id: String, work: F) -> F::Output {
    REQUEST_ID.scope(request_id, work).await
}

type MetricSink = Box<dyn Fn(&str) + Send + Sync>;
static METRIC_SINK: OnceLock<MetricSink> = OnceLock::new();

/// Sends metric lines elsewhere than stdout (the local stack and the tests); the first call
/// wins.
pub fn set_metric_sink(sink: impl Fn(&str) + Send + Sync + 'static) {
    let _ = METRIC_SINK.set(Box::new(sink));
}

/// One metric (EMF) line, whatever the log level: on stdout, where Lambda sends it to
/// CloudWatch, which reads the bare object.
pub fn write_metric_line(line: &str) {
    match METRIC_SINK.get() {
        Some(sink) => sink(line),
        None => {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }
}

/// Installs the subscriber; call once at the start of `main`.
pub fn init() {
    let _ = subscriber(level_from_env(), std::io::stdout).try_init();
}

fn level_from_env() -> Level {
    std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|raw| level_of(&raw))
        .unwrap_or(Level::INFO)
}

/// The functions' subscriber, writing to `writer` (stdout in the functions; a buffer in tests).
pub fn subscriber<W>(
    level: Level,
    writer: W,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    JsonLines,
    tracing_subscriber::filter::LevelFilter,
    W,
>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .event_format(JsonLines)
        .with_writer(writer)
}

/// Formats each event as one JSON object: `level`, `message`, the event's fields.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields(Map::new());
        let _ = REQUEST_ID.try_with(|id| {
            fields
                .0
                .insert("requestId".into(), Value::String(id.clone()));
        });
        fields.0.insert(
            "level".into(),
            Value::String(event.metadata().level().as_str().to_owned()),
        );
        event.record(&mut fields);
        if !fields.0.contains_key("message") {
            fields
                .0
                .insert("message".into(), Value::String(String::new()));
        }
        fields
            .0
            .insert("target".into(), event.metadata().target().into());
        let line = serde_json::to_string(&fields.0).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}

/// A level name in any case (`debug`, `INFO`, `warning`…); `None` for anything else.
fn level_of(raw: &str) -> Option<Level> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" | "warning" => Some(Level::WARN),
        "error" | "fatal" | "critical" => Some(Level::ERROR),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_carry_the_request_id_and_metrics_pass_any_level() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logs = Buffer::default();
        let writer = logs.clone();
        // At WARN, as `ApplicationLogLevel: WARN` would set it.
        let subscriber = subscriber(Level::WARN, move || writer.clone()).finish();
        let metrics = Buffer::default();
        let sink = metrics.clone();
        set_metric_sink(move |line| {
            let _ = writeln!(sink.clone(), "{line}");
        });
        let _guard = tracing::subscriber::set_default(subscriber);
        with_request_id("req-1".into(), async {
            tracing::warn!(venue_id = "v1", "something");
            tracing::info!("not at WARN");
            let gathered = crate::runtime::metrics::Metrics::default();
            gathered.count(crate::runtime::metrics::Counter::EventsAccepted, 2);
            gathered.flush("ingest");
        })
        .await;
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["requestId"], "req-1");
        assert_eq!(lines[0]["venue_id"], "v1");
        let emf = String::from_utf8(metrics.0.lock().unwrap().clone()).unwrap();
        assert!(emf.contains("\"EventsAccepted\""), "{emf}");
    }

    #[test]
    fn levels_are_read_in_any_case() {
        assert_eq!(level_of("DEBUG"), Some(Level::DEBUG));
        assert_eq!(level_of(" warn "), Some(Level::WARN));
        assert_eq!(level_of("shared=debug"), None);
    }
}
