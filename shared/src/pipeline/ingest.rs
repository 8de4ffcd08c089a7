//! Accepting an event: validate, store it once, fan out one delivery job per subscribed
//! endpoint. Used by the ingest function (SQS) and by the API (`POST /venues/{id}/events`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::domain::{Event, PublishRequest, Target};
use crate::model::error::{Error, Result};
use crate::model::ids::{DeliveryId, VenueId, GROUP_SIZE};
use crate::storage::queue::{DeliveryJob, Queued, Queues, INLINE_EVENT_BYTES};
use crate::storage::services::Services;
use crate::storage::store::{EventRecord, FanoutEndpoint, Store, Tenant, UnqueuedNote};

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

/// What the events of one venue in a batch share: its endpoints, read once (by
/// whichever event asks first), and the groups their deliveries join.
#[derive(Default)]
struct VenueBatch {
    endpoints: tokio::sync::OnceCell<Arc<Vec<FanoutEndpoint>>>,
    /// The batch base of the groups being filled, and how many places it has given.
    places: std::sync::Mutex<Option<(DeliveryId, usize)>>,
}

impl VenueBatch {
    async fn endpoints(&self, store: &Store, tenant: &Tenant) -> Result<Arc<Vec<FanoutEndpoint>>> {
        self.endpoints
            .get_or_try_init(|| async { store.fanout_endpoints(tenant).await.map(Arc::new) })
            .await
            .cloned()
    }

    /// The next place in this venue's groups: the first attempts of up to
    /// [`GROUP_SIZE`] events at one endpoint share a job and a history item.
    fn place(&self) -> (DeliveryId, usize) {
        let mut places = self
            .places
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (base, place) = match places.take() {
            Some((base, given)) if given < GROUP_SIZE => (base, given),
            _ => (DeliveryId::batch_base(), 0),
        };
        *places = Some((base.clone(), place + 1));
        (base, place)
    }
}

/// What a batch of events shares, per venue: one read of its endpoints (a fresh one per
/// batch, so an endpoint created a moment ago is never missed for longer than a batch), and
/// the groups its deliveries join.
#[derive(Default)]
pub struct IngestBatch(tokio::sync::Mutex<HashMap<VenueId, Arc<VenueBatch>>>);

impl IngestBatch {
    async fn of(&self, tenant: &Tenant) -> Arc<VenueBatch> {
        self.0
            .lock()
            .await
            .entry(tenant.venue().clone())
            .or_default()
            .clone()
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
            .accept(tenant, request, (now, &IngestBatch::default()))
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
    pub async fn sweep_unqueued(&self, limit: i32) -> Result<(usize, usize)> {
        let (mut queued, mut set_aside) = (0, 0);
        // Each note on its own: one that cannot be handled never holds up the others.
        for note in self.store.unqueued(limit).await? {
            match self.queue_noted(&note).await {
                Ok(true) => queued += 1,
                Ok(false) => {}
                Err(e) => set_aside += usize::from(self.note_failed(&note, &e.to_string()).await),
            }
        }
        Ok((queued, set_aside))
    }

    /// Queues the jobs of a noted event and clears its note (`false`: the event is gone).
    async fn queue_noted(&self, note: &UnqueuedNote) -> Result<bool> {
        let Some((tenant, event_id)) = &note.event else {
            return Err(Error::Corrupt(format!(
                "the note `{}` does not name a venue and an event",
                note.key
            )));
        };
        let found = match self.store.get_event(tenant, event_id).await? {
            Some(record) => {
                let jobs = jobs_of(&record, true)?;
                self.enqueue(&jobs).await?;
                tracing::info!(venue_id = %tenant.venue(), %event_id, jobs = jobs.len(), "stored event's jobs queued by the sweeper");
                true
            }
            None => false,
        };
        self.store.clear_unqueued(note).await?;
        Ok(found)
    }

    /// A note the sweep failed on: tried again next sweep, set aside after its tries (logged,
    /// counted, kept for operators: [`Store::set_aside_notes`]).
    async fn note_failed(&self, note: &UnqueuedNote, reason: &str) -> bool {
        let spent = match &note.event {
            None => Ok(true),
            Some(_) => self.store.note_failed(note).await,
        };
        match spent {
            Ok(true) => {
                match self.store.set_note_aside(note, reason).await {
                    Ok(()) => {
                        tracing::error!(note = note.key, reason, "an unqueued event's note could not be handled; set aside for operators");
                        return true;
                    }
                    Err(e) => {
                        tracing::error!(note = note.key, error = %e, "could not set a note aside; next sweep")
                    }
                }
            }
            Ok(false) => {
                tracing::warn!(
                    note = note.key,
                    reason,
                    "an unqueued event's note failed; tried again next sweep"
                )
            }
            Err(e) => tracing::error!(note = note.key, error = %e, "could not count a note's try"),
        }
        false
    }

    /// Stores one event and returns the jobs to queue, without queueing them, so that a
    /// batch of events can share SendMessageBatch calls ([`Publisher::enqueue`]). The event
    /// counts as published only once its jobs are queued.
    ///
    /// `batch` is what the events of one batch share ([`IngestBatch`]): events of one venue
    /// share one read of its endpoints, and each event takes a place in the venue's groups, so
    /// that the first attempts of up to ten events at one endpoint travel as one job
    /// ([`Publisher::enqueue`] merges them) and share one history item.
    pub async fn accept(
        &self,
        tenant: &Tenant,
        request: PublishRequest,
        (now, batch): (DateTime<Utc>, &IngestBatch),
    ) -> Result<Accepted> {
        let event = request.into_event(now)?;
        let venue = batch.of(tenant).await;
        let endpoints = venue.endpoints(&self.store, tenant).await?;
        let subscribed: Vec<_> = endpoints
            .iter()
            .filter(|ep| ep.subscribes_to(&event.event_type))
            .collect();
        let targets: Vec<Target> = if subscribed.is_empty() {
            Vec::new()
        } else {
            let (base, place) = venue.place();
            subscribed
                .iter()
                .map(|ep| Target {
                    endpoint_id: ep.endpoint_id.clone(),
                    delivery_id: base.group_at(&ep.endpoint_id).member(place),
                })
                .collect()
        };
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
        // Each event is in the events table; the functions' summary lines count them.
        tracing::debug!(
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

    /// Queues jobs in as few calls as possible, the first attempts of one group as one job;
    /// re-sent jobs of repeated events wait.
    pub async fn enqueue(&self, jobs: &[DeliveryJob]) -> Result<()> {
        let (resumed, fresh): (Vec<_>, Vec<_>) = jobs.iter().cloned().partition(|j| j.resumed);
        let fresh = DeliveryJob::merge_groups(fresh);
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

/// The jobs of an event: one per delivery (the first attempts of one group are merged into
/// one job when queued); a resumed fan-out re-sends them, marked as such.
fn jobs_of(record: &EventRecord, resumed: bool) -> Result<Vec<DeliveryJob>> {
    let inline = (record.data.len() <= INLINE_EVENT_BYTES)
        .then(|| record_event(record))
        .transpose()?;
    Ok(record
        .targets
        .iter()
        .map(|target| DeliveryJob {
            venue_id: record.venue_id.clone(),
            endpoint_id: target.endpoint_id.clone(),
            deliveries: vec![Queued {
                delivery_id: target.delivery_id.clone(),
                event_id: record.event_id.clone(),
                event_type: record.event_type.clone(),
                event: inline.clone(),
            }],
            first: !resumed,
            resumed,
            manual: false,
            held: 0,
            released: false,
            paced_at: None,
        })
        .collect())
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
