//! Domain types and their rules: endpoints, events, deliveries and attempts.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::error::ValidationError;
use crate::model::headers::SealedHeaders;
use crate::model::ids::{DeliveryId, EndpointId, EventId, VenueId};
use crate::model::secret::{Sealed, Secret};

pub const MAX_EVENT_TYPE_LEN: usize = 128;
pub const MAX_EVENT_TYPES_PER_ENDPOINT: usize = 100;
pub const MAX_DESCRIPTION_LEN: usize = 1024;
pub const MAX_URL_LEN: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Standard Webhooks signatures (`webhook-signature`).
    SignedSecret,
    /// `authorization: Bearer <token>`.
    BearerToken,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::SignedSecret => "signed_secret",
            AuthMode::BearerToken => "bearer_token",
        }
    }
}

/// How an endpoint authenticates, as stored: the secrets only sealed (see [`crate::storage::sealing`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointAuth {
    pub mode: AuthMode,
    /// What reads show of the current secret or token.
    pub hint: String,
    /// Newest first. Older signing secrets keep signing until their `expires_at` (a rotation
    /// grace period); a bearer endpoint has exactly one.
    pub secrets: Vec<SealedSecret>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SealedSecret {
    pub sealed: Sealed,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The secrets of an endpoint, opened for one request: never stored, never logged.
#[derive(Clone, Debug)]
pub enum Credential {
    /// Signing secrets valid now, newest first.
    SignedSecret {
        secrets: Vec<Secret>,
    },
    BearerToken {
        token: Secret,
    },
}

impl Credential {
    /// HMAC keys that sign a request, newest first.
    pub fn signing_keys(&self) -> Vec<Vec<u8>> {
        match self {
            Credential::SignedSecret { secrets } => {
                secrets.iter().filter_map(Secret::signing_key).collect()
            }
            Credential::BearerToken { .. } => Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// `{"id","type","timestamp","data"}`.
    #[default]
    Envelope,
    /// Only the `data` object.
    Data,
    /// The endpoint's JMESPath template evaluated over the envelope (e.g. a Slack message).
    Template,
}

/// A destination of a venue, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Endpoint {
    pub venue_id: VenueId,
    pub endpoint_id: EndpointId,
    pub url: String,
    #[serde(default)]
    pub description: Option<String>,
    pub event_types: Vec<String>,
    pub auth: EndpointAuth,
    /// Custom headers sent with every request, sealed ([`crate::model::headers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<SealedHeaders>,
    #[serde(default)]
    pub payload_format: PayloadFormat,
    /// The JMESPath expression of `payload_format: template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub enabled: bool,
    /// Why the system disabled it (410 Gone, failing too long); cleared on re-enable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Start of the current run of failures; cleared by any success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<DateTime<Utc>>,
    /// The circuit breaker ([`crate::delivery::breaker`]): failed attempts in a row…
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures_in_row: u32,
    /// …the circuit is open (deliveries wait unattempted) until then…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_open_until: Option<DateTime<Utc>>,
    /// …after opening this many times in a row…
    #[serde(default, skip_serializing_if = "is_zero")]
    pub circuit_opens: u32,
    /// …and a probe holds the endpoint until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_until: Option<DateTime<Utc>>,
    /// The failure-rate window ([`crate::delivery::breaker::FailureWindow`]): since then…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_window_since: Option<DateTime<Utc>>,
    /// …this many attempts…
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failure_window_attempts: u32,
    /// …of which this many failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failure_window_failures: u32,
    /// At most this many requests a second to the endpoint, set by its venue (`None`: no
    /// limit); deliveries beyond it wait on the queue for their turn
    /// (`storage::store::pacing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Attempts took long lately: until then each takes a lease slot (an item of the
    /// endpoint's history partition: `storage::store::slots`), so that only a few run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// For `skip_serializing_if`: a count left out of an item while it is zero.
pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Endpoint {
    /// Back to a closed circuit (the venue changed the endpoint: a fresh start).
    pub fn reset_circuit(&mut self) {
        self.failures_in_row = 0;
        self.circuit_open_until = None;
        self.circuit_opens = 0;
        self.probe_until = None;
        self.slow_until = None;
        self.failure_window_since = None;
        self.failure_window_attempts = 0;
        self.failure_window_failures = 0;
    }

    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.event_types
            .iter()
            .any(|pattern| pattern_matches(pattern, event_type))
    }
}

/// `*` matches all; `registration.*` matches `registration.created` and deeper; anything else
/// matches itself.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix) && event_type.len() > prefix.len(),
        None => pattern == event_type,
    }
}

/// Checks an event type name: dot-separated segments of `[a-zA-Z0-9_-]`, at most 128 characters.
pub fn validate_event_type(field: &str, value: &str) -> Result<(), ValidationError> {
    let segments_ok = value.split('.').all(|seg| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if value.is_empty() || value.len() > MAX_EVENT_TYPE_LEN || !segments_ok {
        return Err(ValidationError::new(
            field,
            format!(
                "`{value}` is not an event type: use dot-separated names of A-Z, a-z, 0-9, `_`, `-` \
                 (at most {MAX_EVENT_TYPE_LEN} characters), e.g. `order.created`"
            ),
        ));
    }
    Ok(())
}

/// Checks an endpoint's subscription list: at least one entry, each `*`, an exact type, or a
/// prefix wildcard such as `registration.*`.
pub fn validate_event_type_patterns(patterns: &[String]) -> Result<(), ValidationError> {
    if patterns.is_empty() {
        return Err(ValidationError::new(
            "event_types",
            "subscribe to at least one event type, or `[\"*\"]` for all",
        ));
    }
    if patterns.len() > MAX_EVENT_TYPES_PER_ENDPOINT {
        return Err(ValidationError::new(
            "event_types",
            format!("at most {MAX_EVENT_TYPES_PER_ENDPOINT} entries"),
        ));
    }
    for pattern in patterns {
        if pattern == "*" {
            continue;
        }
        let name = pattern.strip_suffix(".*").unwrap_or(pattern);
        validate_event_type("event_types", name).map_err(|_| {
            ValidationError::new(
                "event_types",
                format!(
                    "`{pattern}` is not an event type or pattern: use `order.created`, a prefix \
                     wildcard such as `registration.*`, or `*`"
                ),
            )
        })?;
    }
    Ok(())
}

/// Formats a time the way the wire format shows it: RFC 3339, UTC, `Z`.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// An accepted event: what every delivery of it carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339 UTC, as shown on the wire.
    pub timestamp: String,
    /// Compact JSON of an object, kept as raw bytes so every delivery sends exactly them.
    pub data: Box<RawValue>,
}

/// What a producer sends to `POST /venues/{venue_id}/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: serde_json::Value,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// What an event source puts on the ingest queue: the publish body plus the venue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestMessage {
    pub venue_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: serde_json::Value,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl IngestMessage {
    pub fn split(self) -> Result<(VenueId, PublishRequest), ValidationError> {
        let venue = VenueId::parse(&self.venue_id)?;
        Ok((
            venue,
            PublishRequest {
                event_type: self.event_type,
                data: self.data,
                id: self.id,
                timestamp: self.timestamp,
            },
        ))
    }
}

impl PublishRequest {
    /// Validates and normalises: a generated id if none was given, the timestamp in UTC.
    pub fn into_event(self, now: DateTime<Utc>) -> Result<Event, ValidationError> {
        validate_event_type("type", &self.event_type)?;
        if !self.data.is_object() {
            return Err(ValidationError::new(
                "data",
                "must be a JSON object, e.g. {\"order_id\":\"123\"}",
            ));
        }
        let id = match self.id {
            Some(raw) => EventId::parse(&raw)?,
            None => EventId::generate(),
        };
        let timestamp = match self.timestamp {
            // Whole seconds, as the wire format shows them; a producer's own time keeps its
            // precision.
            None => now.with_nanosecond(0).unwrap_or(now),
            Some(raw) => DateTime::parse_from_rfc3339(&raw)
                .map_err(|_| {
                    ValidationError::new(
                        "timestamp",
                        format!("`{raw}` is not an RFC 3339 time such as 2026-11-27T10:15:00Z"),
                    )
                })?
                .with_timezone(&Utc),
        };
        let data = RawValue::from_string(self.data.to_string())
            .map_err(|e| ValidationError::new("data", e.to_string()))?;
        Ok(Event {
            id,
            event_type: self.event_type,
            timestamp: rfc3339(timestamp),
            data,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet attempted, or failed and due for another try.
    Pending,
    Succeeded,
    /// Failed for good: no more scheduled attempts.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Scheduled,
    Manual,
    Test,
}

/// One HTTP request to an endpoint and what came of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub trigger: Trigger,
    #[serde(default)]
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    #[serde(default)]
    pub error: Option<String>,
    /// What kind of failure: `dns`, `connect`, `tls`, `timeout`, `redirect`,
    /// `blocked_address`, `http_4xx`, `http_5xx`, `other`.
    #[serde(default)]
    pub error_class: Option<String>,
    /// For a failure: one line that points at the fix.
    #[serde(default)]
    pub hint: Option<String>,
    /// The first bytes of the response body (lossy UTF-8).
    #[serde(default)]
    pub response_body: Option<String>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// Where one event goes: an endpoint and the delivery id minted for it at fan-out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub endpoint_id: EndpointId,
    pub delivery_id: DeliveryId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_prefix_and_all() {
        assert!(pattern_matches("*", "order.created"));
        assert!(pattern_matches("order.created", "order.created"));
        assert!(!pattern_matches("order.created", "order.created.v2"));
        assert!(pattern_matches("registration.*", "registration.created"));
        assert!(pattern_matches(
            "registration.*",
            "registration.ticket.scanned"
        ));
        assert!(!pattern_matches("registration.*", "registration"));
        assert!(!pattern_matches("registration.*", "registrations.created"));
    }

    #[test]
    fn event_type_names_are_checked() {
        assert!(validate_event_type("type", "order.created").is_ok());
        assert!(validate_event_type("type", "a_b-c.D9").is_ok());
        for bad in ["", ".x", "x.", "a..b", "a b", "a/b", "a*"] {
            assert!(validate_event_type("type", bad).is_err(), "{bad}");
        }
        assert!(validate_event_type("type", &"a".repeat(129)).is_err());
        assert!(validate_event_type_patterns(&["registration.*".into(), "*".into()]).is_ok());
        assert!(validate_event_type_patterns(&[]).is_err());
        assert!(validate_event_type_patterns(&["registration*".into()]).is_err());
        assert!(validate_event_type_patterns(&["*.created".into()]).is_err());
    }

    #[test]
    fn publish_request_normalises_time_and_compacts_data() {
        let now = Utc::now();
        let req: PublishRequest = serde_json::from_str(
            r#"{"type":"order.created","data":{ "b": 1, "a": [1, 2] },"timestamp":"2026-11-27T11:15:00+01:00"}"#,
        )
        .unwrap();
        let event = req.into_event(now).unwrap();
        assert!(event.id.as_str().starts_with("evt_"));
        assert_eq!(event.timestamp, "2026-11-27T10:15:00Z");
        assert_eq!(event.data.get(), r#"{"b":1,"a":[1,2]}"#);
    }

    #[test]
    fn publish_request_refuses_non_object_data() {
        let req: PublishRequest =
            serde_json::from_str(r#"{"type":"order.created","data":[1]}"#).unwrap();
        assert_eq!(req.into_event(Utc::now()).unwrap_err().field, "data");
    }
}
