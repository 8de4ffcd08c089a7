//! Operational events: what the system tells Popup's platform about the venues' endpoints, so
//! that someone acts (tell a venue its endpoint was disabled, look at a receiver that keeps
//! failing). The platform registers operational endpoints with the admin key
//! (`/operational-endpoints`: endpoints of a venue no one else can name, [`OPS_VENUE`]), and
//! these events go to them through the same pipeline as every other event: stored, signed,
//! retried, in history.
//!
//! Nothing is said about the operational endpoints themselves: a failing operational endpoint
//! must not produce events for itself.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::domain::{rfc3339, Attempt, Endpoint, PublishRequest};
use crate::model::error::Result;
use crate::model::ids::{DeliveryId, EndpointId, VenueId};
use crate::pipeline::ingest::Publisher;
use crate::storage::queue::{OpsMessage, Queues};
use crate::storage::services::Services;
use crate::storage::store::{ExhaustedTally, Store, Tallied, Tenant};

/// The venue the operational endpoints belong to. Venue ids that start with `_` are the
/// system's: the API and the ingest queue refuse them for venues.
pub const OPS_VENUE: &str = "_operational";

/// Whether a venue id is reserved for the system (never a venue of Popup's).
pub fn is_reserved(venue: &str) -> bool {
    venue.starts_with('_')
}

/// How many sample delivery ids a `delivery.exhausted` event lists.
pub const EXHAUSTED_SAMPLES: usize = 10;

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
}

impl OpsEvent<'_> {
    fn endpoint(&self) -> &Endpoint {
        match self {
            OpsEvent::EndpointDisabled { endpoint, .. }
            | OpsEvent::EndpointEnabled { endpoint, .. }
            | OpsEvent::CircuitOpened { endpoint, .. }
            | OpsEvent::CircuitClosed { endpoint, .. } => endpoint,
        }
    }

    /// Its type, its id (the same for the same happening, so that a repeat is one event) and
    /// its data: the venue and endpoint, and what a person needs to act.
    fn parts(&self) -> (&'static str, String, Value) {
        let ep = self.endpoint();
        let base = about(
            &ep.venue_id,
            &ep.endpoint_id,
            &ep.url,
            ep.description.as_deref(),
        );
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
        }
    }
}

/// What every operational event says of its endpoint.
fn about(venue: &VenueId, endpoint: &EndpointId, url: &str, description: Option<&str>) -> Value {
    json!({
        "venue_id": venue,
        "endpoint_id": endpoint,
        "url": url,
        "description": description,
    })
}

fn with(mut base: Value, more: Value) -> Value {
    if let (Some(base), Some(more)) = (base.as_object_mut(), more.as_object()) {
        base.extend(more.clone());
    }
    base
}

/// An operational event on its way, as it travels on the delivery queue: the deliver
/// function publishes it, and a task that fails (a throttled write, say) comes back until it
/// is published. Its event id is derived from what happened, so publishing it twice is one
/// event.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpsTask {
    /// An event ready to publish.
    Publish {
        event_type: String,
        id: String,
        data: Value,
    },
    /// The close of an endpoint's tally of deliveries failed for good in a window
    /// ([`Store::tally_exhausted`]): one `delivery.exhausted` for all of them.
    Exhausted {
        venue_id: VenueId,
        endpoint_id: EndpointId,
        /// The window's start, Unix seconds.
        window: i64,
        /// The window's length, seconds.
        seconds: i64,
    },
}

impl OpsTask {
    /// The id of the event it publishes.
    fn event_id(&self) -> String {
        match self {
            OpsTask::Publish { id, .. } => id.clone(),
            OpsTask::Exhausted {
                endpoint_id,
                window,
                ..
            } => format!("exhausted-{endpoint_id}-{window}"),
        }
    }
}

/// Publishes operational events to the operational endpoints: each goes to the delivery
/// queue as an [`OpsTask`] (in one of [`crate::model::ids::SYSTEM_SHARDS`] fair-queue groups by its
/// id), and the deliver function publishes it ([`Notifier::run`]).
#[derive(Clone)]
pub struct Notifier {
    publisher: Publisher,
    queues: Queues,
    store: Store,
    /// Deliveries failed for good at one endpoint in this window are one event.
    window: Duration,
}

impl Notifier {
    pub fn new(services: &Services) -> Self {
        Self {
            publisher: Publisher::new(services),
            queues: services.queues.clone(),
            store: services.store.clone(),
            window: services.config.exhausted_window,
        }
    }

    /// Queues `event`, unless it is about an operational endpoint. A failure (the queue
    /// refused it through every retry) is logged with the whole event, so that an operator
    /// can send it: the venue's own delivery goes on regardless.
    pub async fn send(&self, event: OpsEvent<'_>) {
        let ep = event.endpoint();
        if is_reserved(ep.venue_id.as_str()) {
            return;
        }
        let (event_type, id, data) = event.parts();
        let task = OpsTask::Publish {
            event_type: event_type.to_owned(),
            id,
            data,
        };
        if let Err(e) = self.queue(&task, Duration::ZERO).await {
            tracing::error!(venue_id = %ep.venue_id, endpoint_id = %ep.endpoint_id, error = %e, task = %serde_json::to_string(&task).unwrap_or_default(), "could not queue an operational event");
        }
    }

    /// Queues a task (the deliver function hands one back this way at its deadline).
    pub async fn queue(&self, task: &OpsTask, delay: Duration) -> Result<()> {
        let group = ops_tenant().venue().spread_by(&task.event_id());
        self.queues
            .send_message(&OpsMessage { ops: task }, delay, group)
            .await
    }

    /// A delivery failed for good (recorded once): counted in its endpoint's tally of the
    /// window, whose close is queued for the window's end by every tally (a repeat of the
    /// same delivery too) until one has noted it queued. Safe to repeat for the same delivery
    /// (a job that comes back, a write retried after its answer was lost): it is counted once,
    /// in one window (remembered per delivery), and its window is closed and told however the
    /// first try ended. An error leaves the
    /// delivery to be tallied again when its job comes back.
    pub async fn exhausted(
        &self,
        endpoint: &Endpoint,
        delivery_id: &DeliveryId,
        last: &Attempt,
    ) -> Result<()> {
        if is_reserved(endpoint.venue_id.as_str()) {
            return Ok(());
        }
        let tenant = Tenant::from_internal_message(endpoint.venue_id.clone());
        let length = self.window.as_secs().max(1) as i64;
        let now = Utc::now();
        let current = now.timestamp().div_euclid(length) * length;
        // The window it was first tallied in, if it was (its job came back).
        let mut window = self
            .store
            .exhausted_window(&tenant, &endpoint.endpoint_id, delivery_id, current)
            .await?;
        // A window closed without it (its end came while this one was recorded, or its first
        // tally stopped before counting it): the current one, or the next.
        for _ in 0..3 {
            match self
                .store
                .tally_exhausted(&tenant, endpoint, window, (delivery_id, last))
                .await?
            {
                Tallied::Closed => {
                    let next = if current > window {
                        current
                    } else {
                        window + length
                    };
                    window = self
                        .store
                        .move_exhausted_window(
                            &tenant,
                            &endpoint.endpoint_id,
                            delivery_id,
                            (window, next),
                        )
                        .await?;
                }
                Tallied::Counted { flush_queued: true }
                | Tallied::Already { flush_queued: true } => return Ok(()),
                Tallied::Counted {
                    flush_queued: false,
                }
                | Tallied::Already {
                    flush_queued: false,
                } => {
                    // Closed a moment after the window ends, so that tallies under way land.
                    let end = window + length + 2;
                    let wait = Duration::from_secs((end - now.timestamp()).clamp(0, 900) as u64);
                    let task = OpsTask::Exhausted {
                        venue_id: endpoint.venue_id.clone(),
                        endpoint_id: endpoint.endpoint_id.clone(),
                        window,
                        seconds: length,
                    };
                    self.queue(&task, wait).await?;
                    return self
                        .store
                        .tally_close_queued(&tenant, &endpoint.endpoint_id, window)
                        .await;
                }
            }
        }
        Err(crate::Error::Conflict(
            "three windows closed while a failed delivery was tallied".into(),
        ))
    }

    /// Publishes what a task carries (the deliver function, for each task it receives). An
    /// error: the task comes back and publishes again (the same event id: one event).
    pub async fn run(&self, task: &OpsTask) -> Result<()> {
        let request = match task {
            OpsTask::Publish {
                event_type,
                id,
                data,
            } => PublishRequest {
                event_type: event_type.clone(),
                data: data.clone(),
                id: Some(id.clone()),
                timestamp: None,
            },
            OpsTask::Exhausted {
                venue_id,
                endpoint_id,
                window,
                seconds,
            } => {
                let tenant = Tenant::from_internal_message(venue_id.clone());
                let Some(tally) = self
                    .store
                    .close_tally(&tenant, endpoint_id, *window)
                    .await?
                else {
                    tracing::info!(%venue_id, %endpoint_id, window, "no tally to close (the venue was removed)");
                    return Ok(());
                };
                PublishRequest {
                    event_type: "delivery.exhausted".into(),
                    data: exhausted_data(venue_id, endpoint_id, (*window, *seconds), &tally),
                    id: Some(task.event_id()),
                    timestamp: None,
                }
            }
        };
        let kind = request.event_type.clone();
        let accepted = self
            .publisher
            .publish(&ops_tenant(), request, Utc::now())
            .await?;
        tracing::info!(event_type = kind, event_id = %accepted.record.event_id, endpoints = accepted.record.targets.len(), duplicate = accepted.duplicate, "operational event published");
        Ok(())
    }
}

/// The data of a window's `delivery.exhausted`.
fn exhausted_data(
    venue: &VenueId,
    endpoint: &EndpointId,
    (window, seconds): (i64, i64),
    tally: &ExhaustedTally,
) -> Value {
    let at = |secs: i64| DateTime::<Utc>::from_timestamp(secs, 0).map(rfc3339);
    let description = Some(tally.description.as_str()).filter(|d| !d.is_empty());
    with(
        about(venue, endpoint, &tally.url, description),
        json!({
            "count": tally.count,
            "delivery_ids": tally.ids.iter().take(EXHAUSTED_SAMPLES).collect::<Vec<_>>(),
            "window_start": at(window),
            "window_end": at(window + seconds),
            "first_failed_at": rfc3339(tally.first_at),
            "last_failed_at": rfc3339(tally.last_at),
            "last_status_code": tally.last.status_code,
            "last_error": tally.last.error,
            "last_error_class": tally.last.error_class,
            "hint": tally.last.hint,
            "message": format!(
                "{} to this endpoint failed for good (every attempt used up, or 410 Gone); the venue can send {} again from its delivery history",
                match tally.count { 1 => "1 delivery".to_owned(), n => format!("{n} deliveries") },
                if tally.count == 1 { "it" } else { "them" },
            ),
        }),
    )
}
