//! Accepting an event: validate, store it once, fan out one delivery job per subscribed
//! endpoint. Used by the ingest function (SQS) and by the API (`POST /venues/{id}/events`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::{Endpoint, Event, PublishRequest, Target};
use crate::error::{Error, Result};
use crate::ids::{DeliveryId, VenueId, GROUP_SIZE};
use crate::queue::{DeliveryJob, Queues, INLINE_EVENT_BYTES};
use crate::services::Services;
use crate::store::{EventRecord, Store, Tenant};

#[derive(Debug)]
pub struct Accepted {
    pub record: EventRecord,
    /// The id had been accepted before, with the same type and data.
    pub duplicate: bool,
    /// The delivery jobs to queue.
    pub jobs: Vec<DeliveryJob>,
    /// The jobs are on the queue; `false`: they could not be queued yet, and the sweeper
    /// will queue them ([`Publisher::sweep_unqueued`]).
    pub queued: bool,
}

/// One venue's enabled endpoints, read once (by whichever event of the batch asks first).
type VenueRead = Arc<tokio::sync::OnceCell<Arc<Vec<Endpoint>>>>;

/// The enabled endpoints of each venue, read at most once for a batch of events.
#[derive(Default)]
pub struct EndpointReads(tokio::sync::Mutex<HashMap<VenueId, VenueRead>>);

impl EndpointReads {
    async fn of(&self, store: &Store, tenant: &Tenant) -> Result<Arc<Vec<Endpoint>>> {
        let cell = self
            .0
            .lock()
            .await
            .entry(tenant.venue().clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async { store.enabled_endpoints(tenant).await.map(Arc::new) })
            .await
            .cloned()
    }
}

#[derive(Clone)]
pub struct Publisher {
    store: Store,
    queues: Queues,
    max_payload_bytes: usize,
    /// How long re-sent jobs of a repeated event wait, so that the original jobs (if they
    /// were sent) are attempted first and the copies find them under way and stop.
    resume_delay: std::time::Duration,
}

impl Publisher {
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            queues: services.queues.clone(),
            max_payload_bytes: services.config.limits.max_payload_bytes,
            resume_delay: services.config.resume_delay,
        }
    }

    /// Refuses a body over the payload limit before anything is parsed or written.
    pub fn check_size(&self, size: usize) -> Result<()> {
        if size > self.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.max_payload_bytes,
            });
        }
        Ok(())
    }

    /// Accepts one event and queues its deliveries. Once the event is stored it is never
    /// left behind: if its jobs cannot be queued, a note for the sweeper is written and the
    /// answer says so (`queued: false`); if even the note cannot be written, the error says
    /// that the event is stored and that publishing it again finishes it.
    pub async fn publish(
        &self,
        tenant: &Tenant,
        request: PublishRequest,
        now: DateTime<Utc>,
    ) -> Result<Accepted> {
        let mut accepted = self
            .accept(tenant, request, (now, &EndpointReads::default()))
            .await?;
        if let Err(e) = self.enqueue(&accepted.jobs).await {
            let event = &accepted.record.event_id;
            tracing::error!(venue_id = %tenant.venue(), event_id = %event, error = %e, "event stored, jobs not queued; noting it for the sweeper");
            self.store
                .note_unqueued(tenant, event)
                .await
                .map_err(|noted| Error::StoredNotQueued(format!("{e}; {noted}")))?;
            accepted.queued = false;
        }
        Ok(accepted)
    }

    /// Queues the jobs of events noted as stored but not queued (up to `limit` of them), then
    /// clears their notes. Their jobs go as resumed copies: a delivery that exists already
    /// is not sent again. Returns how many events were queued.
    pub async fn sweep_unqueued(&self, limit: i32) -> Result<usize> {
        let mut queued = 0;
        for (tenant, event_id) in self.store.unqueued(limit).await? {
            if let Some(record) = self.store.get_event(&tenant, &event_id).await? {
                let jobs = jobs_of(&record, true)?;
                self.enqueue(&jobs).await?;
                tracing::info!(venue_id = %tenant.venue(), %event_id, jobs = jobs.len(), "stored event's jobs queued by the sweeper");
                queued += 1;
            }
            self.store.clear_unqueued(&tenant, &event_id).await?;
        }
        Ok(queued)
    }

    /// Stores one event and returns the jobs to queue, without queueing them, so that a
    /// batch of events can share SendMessageBatch calls ([`Publisher::enqueue`]). The event
    /// counts as published only once its jobs are queued.
    ///
    /// `reads` holds the venues' endpoints as read for this batch of events: events of one
    /// venue in a batch share one read (a fresh one per batch, so an endpoint created a
    /// moment ago is never missed for longer than a batch).
    pub async fn accept(
        &self,
        tenant: &Tenant,
        request: PublishRequest,
        (now, reads): (DateTime<Utc>, &EndpointReads),
    ) -> Result<Accepted> {
        let event = request.into_event(now)?;
        let endpoints = reads.of(&self.store, tenant).await?;
        let subscribed: Vec<_> = endpoints
            .iter()
            .filter(|ep| ep.subscribes_to(&event.event_type))
            .collect();
        // One group per ten endpoints: their first attempts share a job and a history item.
        let targets: Vec<Target> = subscribed
            .chunks(GROUP_SIZE)
            .flat_map(|chunk| {
                let group = DeliveryId::generate_group();
                chunk.iter().enumerate().map(move |(i, ep)| Target {
                    endpoint_id: ep.endpoint_id.clone(),
                    delivery_id: group.member(i),
                })
            })
            .collect();
        let record = EventRecord::accepted(tenant, &event, targets, now, self.store.expiry(now));
        let (stored, is_new) = self.store.put_event(&record).await?;
        if !is_new {
            if stored.event_type != record.event_type || stored.data != record.data {
                return Err(Error::Conflict(format!(
                    "event id `{}` was already used for a different event; use a new id",
                    stored.event_id
                )));
            }
            // Whenever it comes: the first publish may have stored the event and failed to
            // queue its jobs. Resumed copies send only what is not recorded.
            let jobs = jobs_of(&stored, true)?;
            tracing::info!(venue_id = %tenant.venue(), event_id = %stored.event_id, "duplicate event id; not fanned out again");
            return Ok(Accepted {
                record: stored,
                duplicate: true,
                jobs,
                queued: true,
            });
        }
        tracing::info!(
            venue_id = %tenant.venue(),
            event_id = %stored.event_id,
            event_type = %stored.event_type,
            deliveries = stored.targets.len(),
            "event accepted"
        );
        Ok(Accepted {
            jobs: jobs_of(&stored, false)?,
            record: stored,
            duplicate: false,
            queued: true,
        })
    }

    /// Queues jobs in as few calls as possible; re-sent jobs of repeated events wait.
    pub async fn enqueue(&self, jobs: &[DeliveryJob]) -> Result<()> {
        let (resumed, fresh): (Vec<_>, Vec<_>) = jobs.iter().cloned().partition(|j| j.resumed);
        if !fresh.is_empty() {
            self.queues
                .send_jobs(&fresh, std::time::Duration::ZERO)
                .await?;
        }
        if !resumed.is_empty() {
            self.queues.send_jobs(&resumed, self.resume_delay).await?;
        }
        Ok(())
    }
}

/// The jobs of an event: one per group of targets (the first attempts of a fresh fan-out
/// travel together); a resumed fan-out re-sends the same groups, marked as such.
fn jobs_of(record: &EventRecord, resumed: bool) -> Result<Vec<DeliveryJob>> {
    let inline = (record.data.len() <= INLINE_EVENT_BYTES)
        .then(|| record_event(record))
        .transpose()?;
    let mut jobs: Vec<DeliveryJob> = Vec::new();
    let mut group = None;
    for target in &record.targets {
        let this = target.delivery_id.group().map(|(g, _)| g);
        match jobs.last_mut() {
            Some(job) if this.is_some() && this == group => job.targets.push(target.clone()),
            _ => jobs.push(DeliveryJob {
                venue_id: record.venue_id.clone(),
                event_id: record.event_id.clone(),
                event_type: record.event_type.clone(),
                event: inline.clone(),
                targets: vec![target.clone()],
                first: !resumed,
                resumed,
                manual: false,
                held: 0,
            }),
        }
        group = this;
    }
    Ok(jobs)
}

/// The event as deliveries carry it.
pub fn record_event(record: &EventRecord) -> Result<Event> {
    Ok(Event {
        id: record.event_id.clone(),
        event_type: record.event_type.clone(),
        timestamp: record.timestamp.clone(),
        data: serde_json::value::RawValue::from_string(record.data.clone())
            .map_err(|e| Error::Corrupt(format!("event data: {e}")))?,
    })
}
