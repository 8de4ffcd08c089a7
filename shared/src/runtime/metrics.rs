//! Metrics as CloudWatch embedded-metric-format (EMF) lines on stdout: CloudWatch Logs turns
//! them into metrics, with no `PutMetricData` call and no permission beyond logging. Each
//! function gathers what one invocation did and writes a few lines at its end (not a line per
//! delivery). Dimensions are the function, the outcome and the error class only: the number
//! of metric series does not grow with venues or endpoints.
//!
//! Namespace `PopupWebhooks`:
//! - `Attempts` (Count) and `AttemptDuration` (Milliseconds), by `Function`, by `Function` and
//!   `Outcome` (`succeeded`, `failed`), and by those and `ErrorClass` (`none`, `http_5xx`,
//!   `timeout`…);
//! - by `Function`: `PublishToFirstAttempt` (Milliseconds: from an event's acceptance to its
//!   first attempt at an endpoint), `EventsAccepted`, `EventsRefused`, `RetriesScheduled`,
//!   `DeliveriesExhausted`, `AttemptsUnrecorded`, `HandedBack`, `NotesSetAside`,
//!   `DeliveriesHeld` (Count).

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::Utc;
use serde_json::{json, Map, Value};

use crate::model::domain::Attempt;

pub const NAMESPACE: &str = "PopupWebhooks";
/// EMF takes at most 100 values of one metric in one line.
const MAX_VALUES: usize = 100;

/// Counters by `Function` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    EventsAccepted,
    EventsRefused,
    RetriesScheduled,
    DeliveriesExhausted,
    /// Attempts that went out and whose record could not be written before the deadline.
    AttemptsUnrecorded,
    /// Deliveries handed back unattempted, too close to the deadline.
    HandedBack,
    /// Notes of stored, unqueued events the sweep could not handle and set aside.
    NotesSetAside,
    /// Deliveries held without an attempt (the endpoint's circuit open, or a slow endpoint
    /// at its cap): each time one looks and waits again.
    DeliveriesHeld,
}

impl Counter {
    fn name(self) -> &'static str {
        match self {
            Counter::EventsAccepted => "EventsAccepted",
            Counter::EventsRefused => "EventsRefused",
            Counter::RetriesScheduled => "RetriesScheduled",
            Counter::DeliveriesExhausted => "DeliveriesExhausted",
            Counter::AttemptsUnrecorded => "AttemptsUnrecorded",
            Counter::HandedBack => "HandedBack",
            Counter::NotesSetAside => "NotesSetAside",
            Counter::DeliveriesHeld => "DeliveriesHeld",
        }
    }
}

#[derive(Default)]
struct Gathered {
    /// (outcome, error class) → durations of those attempts.
    attempts: BTreeMap<(&'static str, String), Vec<u64>>,
    counters: BTreeMap<Counter, u64>,
    first_attempt_delays: Vec<u64>,
}

/// What one invocation did, until [`Metrics::flush`] writes it.
#[derive(Default)]
pub struct Metrics {
    gathered: Mutex<Gathered>,
}

impl Metrics {
    pub fn attempt(&self, attempt: &Attempt) {
        let (outcome, class) = if attempt.succeeded() {
            ("succeeded", "none".to_owned())
        } else {
            (
                "failed",
                attempt
                    .error_class
                    .clone()
                    .unwrap_or_else(|| "other".into()),
            )
        };
        if let Ok(mut g) = self.gathered.lock() {
            g.attempts
                .entry((outcome, class))
                .or_default()
                .push(attempt.duration_ms);
        }
    }

    pub fn count(&self, counter: Counter, n: u64) {
        if n == 0 {
            return;
        }
        if let Ok(mut g) = self.gathered.lock() {
            *g.counters.entry(counter).or_default() += n;
        }
    }

    /// From an event's acceptance to its first attempt at an endpoint.
    pub fn first_attempt_delay(&self, ms: u64) {
        if let Ok(mut g) = self.gathered.lock() {
            g.first_attempt_delays.push(ms);
        }
    }

    /// Attempts gathered so far, succeeded and failed (for a per-invocation summary line).
    pub fn attempts_so_far(&self) -> (u64, u64) {
        self.gathered.lock().map_or((0, 0), |g| {
            g.attempts
                .iter()
                .fold((0, 0), |(ok, failed), ((outcome, _), durations)| {
                    let n = durations.len() as u64;
                    if *outcome == "succeeded" {
                        (ok + n, failed)
                    } else {
                        (ok, failed + n)
                    }
                })
        })
    }

    /// A counter's value gathered so far.
    pub fn counted(&self, counter: Counter) -> u64 {
        self.gathered
            .lock()
            .map_or(0, |g| g.counters.get(&counter).copied().unwrap_or(0))
    }

    /// The EMF lines of what was gathered since the last call, emptying it.
    pub fn take_lines(&self, function: &str) -> Vec<Value> {
        let gathered = match self.gathered.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(_) => return Vec::new(),
        };
        let timestamp = Utc::now().timestamp_millis();
        let mut lines = Vec::new();
        for ((outcome, class), durations) in gathered.attempts {
            for (i, chunk) in durations.chunks(MAX_VALUES).enumerate() {
                let mut fields = Map::new();
                fields.insert("Function".into(), function.into());
                fields.insert("Outcome".into(), outcome.into());
                fields.insert("ErrorClass".into(), class.clone().into());
                fields.insert("AttemptDuration".into(), json!(chunk));
                let mut metrics = vec![json!({"Name": "AttemptDuration", "Unit": "Milliseconds"})];
                if i == 0 {
                    fields.insert("Attempts".into(), durations.len().into());
                    metrics.push(json!({"Name": "Attempts", "Unit": "Count"}));
                }
                lines.push(line(
                    timestamp,
                    &[
                        &["Function"],
                        &["Function", "Outcome"],
                        &["Function", "Outcome", "ErrorClass"],
                    ],
                    metrics,
                    fields,
                ));
            }
        }
        let mut fields = Map::new();
        let mut metrics = Vec::new();
        for (counter, n) in gathered.counters {
            fields.insert(counter.name().into(), n.into());
            metrics.push(json!({"Name": counter.name(), "Unit": "Count"}));
        }
        let delays = gathered.first_attempt_delays;
        let mut chunks = delays.chunks(MAX_VALUES);
        if let Some(first) = chunks.next() {
            fields.insert("PublishToFirstAttempt".into(), json!(first));
            metrics.push(json!({"Name": "PublishToFirstAttempt", "Unit": "Milliseconds"}));
        }
        if !metrics.is_empty() {
            fields.insert("Function".into(), function.into());
            lines.push(line(timestamp, &[&["Function"]], metrics, fields));
        }
        for chunk in chunks {
            let mut fields = Map::new();
            fields.insert("Function".into(), function.into());
            fields.insert("PublishToFirstAttempt".into(), json!(chunk));
            lines.push(line(
                timestamp,
                &[&["Function"]],
                vec![json!({"Name": "PublishToFirstAttempt", "Unit": "Milliseconds"})],
                fields,
            ));
        }
        lines
    }

    /// Writes what was gathered as EMF lines: straight to stdout, past the log level
    /// ([`crate::runtime::logging::write_metric_line`]).
    pub fn flush(&self, function: &str) {
        for line in self.take_lines(function) {
            crate::runtime::logging::write_metric_line(&line.to_string());
        }
    }
}

fn line(
    timestamp: i64,
    dimensions: &[&[&str]],
    metrics: Vec<Value>,
    mut fields: Map<String, Value>,
) -> Value {
    fields.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dimensions,
                "Metrics": metrics,
            }],
        }),
    );
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::domain::Trigger;

    fn attempt(status: u16, class: Option<&str>, ms: u64) -> Attempt {
        Attempt {
            attempt: 1,
            at: Utc::now(),
            trigger: Trigger::Scheduled,
            status_code: Some(status),
            duration_ms: ms,
            error: class.map(str::to_owned),
            error_class: class.map(str::to_owned),
            hint: None,
            response_body: None,
        }
    }

    /// Every metric a directive names is a field of the line, every dimension too, and no
    /// metric has more than 100 values.
    fn well_formed(line: &Value) {
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        for set in directive["Dimensions"].as_array().unwrap() {
            for key in set.as_array().unwrap() {
                assert!(line[key.as_str().unwrap()].is_string(), "{line}");
            }
        }
        for metric in directive["Metrics"].as_array().unwrap() {
            let value = &line[metric["Name"].as_str().unwrap()];
            assert!(
                value.is_number() || value.as_array().is_some_and(|v| v.len() <= MAX_VALUES),
                "{line}"
            );
        }
    }

    #[test]
    fn an_invocation_is_a_few_lines_whatever_it_did() {
        let m = Metrics::default();
        for ms in 0..250 {
            m.attempt(&attempt(200, None, ms));
        }
        m.attempt(&attempt(503, Some("http_5xx"), 40));
        m.attempt(&attempt(503, Some("http_5xx"), 60));
        m.count(Counter::RetriesScheduled, 2);
        m.count(Counter::EventsAccepted, 0);
        m.first_attempt_delay(120);
        let lines = m.take_lines("deliver");
        lines.iter().for_each(well_formed);
        // 250 successes: three lines of ≤ 100 durations, the count in the first; one line of
        // failures; one of counters.
        assert_eq!(lines.len(), 5, "{lines:#?}");
        let succeeded: Vec<&Value> = lines
            .iter()
            .filter(|l| l["Outcome"] == "succeeded")
            .collect();
        assert_eq!(succeeded[0]["Attempts"], 250);
        let durations: usize = succeeded
            .iter()
            .map(|l| l["AttemptDuration"].as_array().unwrap().len())
            .sum();
        assert_eq!(durations, 250);
        let failed = lines
            .iter()
            .find(|l| l["ErrorClass"] == "http_5xx")
            .unwrap();
        assert_eq!(
            (&failed["Attempts"], &failed["AttemptDuration"]),
            (&json!(2), &json!([40, 60]))
        );
        let counters = lines
            .iter()
            .find(|l| l.get("RetriesScheduled").is_some())
            .unwrap();
        assert_eq!(counters["RetriesScheduled"], 2);
        assert!(
            counters.get("EventsAccepted").is_none(),
            "nothing counted, nothing said"
        );
        assert_eq!(counters["PublishToFirstAttempt"], json!([120]));
        // Taken: the next invocation starts from nothing.
        assert!(m.take_lines("deliver").is_empty());
    }
}
