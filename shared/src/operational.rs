//! Operational events: what the system tells Popup's platform about the venues' endpoints, so
//! that someone acts (tell a venue its endpoint was disabled, look at a receiver that keeps
//! failing). The platform registers operational endpoints with the admin key
//! (`/operational-endpoints`: endpoints of a venue no one else can name, [`OPS_VENUE`]), and
//! these events go to them through the same pipeline as every other event: stored, signed,
//! retried, in history.
//!
//! Nothing is said about the operational endpoints themselves: a failing operational endpoint
//! must not produce events for itself.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::domain::{rfc3339, Endpoint, PublishRequest};
use crate::error::Result;
use crate::ids::{DeliveryId, EventId, VenueId};
use crate::ingest::Publisher;
use crate::services::Services;
use crate::store::Tenant;

/// The venue the operational endpoints belong to. Venue ids that start with `_` are the
/// system's: the API and the ingest queue refuse them for venues.
pub const OPS_VENUE: &str = "_operational";

/// Whether a venue id is reserved for the system (never a venue of Popup's).
pub fn is_reserved(venue: &str) -> bool {
    venue.starts_with('_')
}

pub fn ops_tenant() -> Tenant {
    // A constant of the right shape.
    #[allow(clippy::expect_used)]
    Tenant::authorized(VenueId::parse(OPS_VENUE).expect("a valid venue id"))
}

/// Why an endpoint was disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisabledBy {
    /// Every delivery failed for longer than `DisableAfterSeconds` (5 days).
    Failing,
    /// The receiver answered 410 Gone.
    Gone,
    /// The venue (or the platform) disabled it.
    Hand,
}

impl DisabledBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledBy::Failing => "failing",
            DisabledBy::Gone => "gone",
            DisabledBy::Hand => "by_hand",
        }
    }
}

/// One operational event, about an endpoint of a venue.
pub enum OpsEvent<'a> {
    EndpointDisabled {
        endpoint: &'a Endpoint,
        by: DisabledBy,
        reason: &'a str,
        at: DateTime<Utc>,
    },
    EndpointEnabled {
        endpoint: &'a Endpoint,
        at: DateTime<Utc>,
    },
    CircuitOpened {
        endpoint: &'a Endpoint,
        failures_in_row: u32,
        until: DateTime<Utc>,
    },
    CircuitClosed {
        endpoint: &'a Endpoint,
        at: DateTime<Utc>,
    },
    DeliveryExhausted {
        endpoint: &'a Endpoint,
        delivery_id: &'a DeliveryId,
        event_id: &'a EventId,
        event_type: &'a str,
        attempts: u32,
        last: &'a crate::domain::Attempt,
    },
}

impl OpsEvent<'_> {
    fn endpoint(&self) -> &Endpoint {
        match self {
            OpsEvent::EndpointDisabled { endpoint, .. }
            | OpsEvent::EndpointEnabled { endpoint, .. }
            | OpsEvent::CircuitOpened { endpoint, .. }
            | OpsEvent::CircuitClosed { endpoint, .. }
            | OpsEvent::DeliveryExhausted { endpoint, .. } => endpoint,
        }
    }

    /// Its type, its id (the same for the same happening, so that a repeat is one event) and
    /// its data: the venue and endpoint, and what a person needs to act.
    fn parts(&self) -> (&'static str, String, Value) {
        let ep = self.endpoint();
        let base = json!({
            "venue_id": ep.venue_id,
            "endpoint_id": ep.endpoint_id,
            "url": ep.url,
            "description": ep.description,
        });
        let with = |mut base: Value, more: Value| {
            if let (Some(base), Some(more)) = (base.as_object_mut(), more.as_object()) {
                base.extend(more.clone());
            }
            base
        };
        let id = |kind: &str, at: DateTime<Utc>| {
            format!("{kind}-{}-{}", ep.endpoint_id, at.timestamp_millis())
        };
        match self {
            OpsEvent::EndpointDisabled { by, reason, at, .. } => (
                "endpoint.disabled",
                id("disabled", *at),
                with(
                    base,
                    json!({
                        "reason": by.as_str(),
                        "message": reason,
                        "disabled_at": rfc3339(*at),
                        "action": match by {
                            DisabledBy::Hand => "none needed unless it was a mistake: enable it again in Settings → Webhooks",
                            _ => "tell the venue: its endpoint receives nothing until it fixes the receiver and enables the endpoint in Settings → Webhooks",
                        },
                    }),
                ),
            ),
            OpsEvent::EndpointEnabled { at, .. } => (
                "endpoint.enabled",
                id("enabled", *at),
                with(base, json!({"enabled_at": rfc3339(*at)})),
            ),
            OpsEvent::CircuitOpened {
                failures_in_row,
                until,
                ..
            } => (
                "endpoint.circuit_opened",
                id("circuit-opened", *until),
                with(
                    base,
                    json!({
                        "failures_in_row": failures_in_row,
                        "open_until": rfc3339(*until),
                        "message": "the receiver keeps failing: deliveries wait, unattempted, until a probe succeeds",
                    }),
                ),
            ),
            OpsEvent::CircuitClosed { at, .. } => (
                "endpoint.circuit_closed",
                id("circuit-closed", *at),
                with(base, json!({"closed_at": rfc3339(*at)})),
            ),
            OpsEvent::DeliveryExhausted {
                delivery_id,
                event_id,
                event_type,
                attempts,
                last,
                ..
            } => (
                "delivery.exhausted",
                format!("exhausted-{delivery_id}"),
                with(
                    base,
                    json!({
                        "delivery_id": delivery_id,
                        "event_id": event_id,
                        "event_type": event_type,
                        "attempts": attempts,
                        "last_attempt_at": rfc3339(last.at),
                        "last_status_code": last.status_code,
                        "last_error": last.error,
                        "last_error_class": last.error_class,
                        "hint": last.hint,
                    }),
                ),
            ),
        }
    }
}

/// Publishes operational events to the operational endpoints.
#[derive(Clone)]
pub struct Notifier {
    publisher: Publisher,
}

impl Notifier {
    pub fn new(services: &Services) -> Self {
        Self {
            publisher: Publisher::new(services),
        }
    }

    /// Publishes `event`, unless it is about an operational endpoint. A failure is logged:
    /// the venue's own delivery goes on regardless.
    pub async fn send(&self, event: OpsEvent<'_>) {
        if let Err(e) = self.try_send(&event).await {
            let ep = event.endpoint();
            tracing::error!(venue_id = %ep.venue_id, endpoint_id = %ep.endpoint_id, error = %e, "could not publish an operational event");
        }
    }

    async fn try_send(&self, event: &OpsEvent<'_>) -> Result<()> {
        if is_reserved(event.endpoint().venue_id.as_str()) {
            return Ok(());
        }
        let (kind, id, data) = event.parts();
        let request = PublishRequest {
            event_type: kind.to_owned(),
            data,
            id: Some(id),
            timestamp: None,
        };
        let accepted = self
            .publisher
            .publish(&ops_tenant(), request, Utc::now())
            .await?;
        tracing::info!(event_type = kind, event_id = %accepted.record.event_id, endpoints = accepted.record.targets.len(), "operational event published");
        Ok(())
    }
}
