//! Where a delivery waits for its retry. Never in flight on the delivery queue: SQS serves
//! about 120,000 in-flight messages per queue, and past that no receive gets anything, for
//! every venue. So a job that must wait leaves the queue once its wait is stored:
//!
//! - a wait up to `max_queue_delay` (SQS's 15 minutes): queued again with `DelaySeconds`
//!   (a delayed message is not in flight);
//! - a longer wait: an item in the retries table under the slot it falls due in (one minute)
//!   and a shard (the writes of one slot spread over `shards` partition keys). Every minute
//!   the sweep ([`Waits::sweep`], run by the ingest function's schedule) queues the jobs of the
//!   slots that have come, each with the `DelaySeconds` left to its due time, then removes
//!   them. A cursor item remembers the last slot swept, so a sweep that missed minutes
//!   catches up.
//!
//! A job queued again and still in its table item (the sweep stopped between the two) is sent
//! twice; the second copy finds its attempt recorded and stands down, as any duplicate does.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::model::error::{Error, Result};
use crate::runtime::config::WaitConfig;
use crate::storage::queue::{DeliveryJob, Queues};
use crate::storage::services::Services;
use crate::storage::store::{Store, Waiting};

/// A job in the table keeps its event inline only up to this size; a larger one leaves it out
/// (the deliver function reads it from the events table): a write unit is 1 KB.
const INLINE_IN_TABLE_BYTES: usize = 1024;
/// Slots a first sweep looks back over (none is older: jobs are written 15 minutes ahead).
const FIRST_LOOKBACK_SLOTS: i64 = 60;
/// Slots one sweep finishes at most; a sweep that fell behind catches up over several runs.
const MAX_SLOTS_PER_SWEEP: usize = 120;
/// Jobs read per query page.
const PAGE: i32 = 100;

#[derive(Clone)]
pub struct Waits {
    store: Store,
    queues: Queues,
    config: WaitConfig,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Slots finished (the cursor moved past them).
    pub slots: usize,
    /// Jobs queued again.
    pub queued: usize,
}

impl Waits {
    pub fn new(services: &Services) -> Self {
        Self {
            store: services.store.clone(),
            queues: services.queues.clone(),
            config: services.config.waits.clone(),
        }
    }

    /// Stores each job's wait: on the queue with a delay, or in the retries table. Either all
    /// are stored or this is an error (and the jobs' messages must stay on the queue).
    pub async fn schedule(
        &self,
        jobs: &[(DeliveryJob, Duration)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (short, long): (Vec<_>, Vec<_>) = jobs
            .iter()
            .partition(|(_, wait)| *wait <= self.config.max_queue_delay);
        let waiting = long
            .iter()
            .map(|(job, wait)| self.waiting(job, now + *wait))
            .collect::<Result<Vec<_>>>()?;
        let delayed: Vec<(&DeliveryJob, Duration)> = short.iter().map(|(j, w)| (j, *w)).collect();
        let (queued, stored) = futures::join!(
            async {
                if delayed.is_empty() {
                    Ok(())
                } else {
                    self.queues.send_delayed(&delayed).await
                }
            },
            async {
                if waiting.is_empty() {
                    Ok(())
                } else {
                    self.store.put_waiting(&waiting).await
                }
            }
        );
        queued.and(stored)
    }

    /// The table item of a job due at `due`.
    fn waiting(&self, job: &DeliveryJob, due: DateTime<Utc>) -> Result<Waiting> {
        let target = job
            .deliveries
            .first()
            .ok_or_else(|| Error::Corrupt("a delivery job without deliveries".into()))?;
        let mut body = serde_json::to_string(job).map_err(|e| Error::Corrupt(e.to_string()))?;
        if body.len() > INLINE_IN_TABLE_BYTES && job.deliveries.iter().any(|d| d.event.is_some()) {
            let mut lean = job.clone();
            for delivery in &mut lean.deliveries {
                delivery.event = None;
            }
            body = serde_json::to_string(&lean).map_err(|e| Error::Corrupt(e.to_string()))?;
        }
        let id = target.delivery_id.to_string();
        Ok(Waiting {
            slot: slot_key(
                slot_start(due.timestamp(), self.slot_secs()),
                shard_of(&id, self.config.shards),
            ),
            id,
            due_ms: due.timestamp_millis(),
            job: body,
        })
    }

    fn slot_secs(&self) -> i64 {
        self.config.slot.as_secs().max(1) as i64
    }

    /// Queues the jobs of every slot that has begun by `now` and not been swept, oldest
    /// first, until `budget` is spent; each with the delay left to its due time.
    pub async fn sweep(&self, now: DateTime<Utc>, budget: Duration) -> Result<Swept> {
        let started = Instant::now();
        let width = self.slot_secs();
        let current = slot_start(now.timestamp(), width);
        let last = match self.store.sweep_cursor().await? {
            Some(last) => last,
            None => current - FIRST_LOOKBACK_SLOTS * width,
        };
        let mut swept = Swept::default();
        let deadline = started + budget;
        let mut slot = last + width;
        while slot <= current && swept.slots < MAX_SLOTS_PER_SWEEP {
            let queued: Vec<(usize, bool)> = stream::iter(0..self.config.shards)
                .map(|shard| self.drain(slot_key(slot, shard), now, deadline))
                .buffer_unordered(self.config.shards.min(16) as usize)
                .try_collect()
                .await?;
            swept.queued += queued.iter().map(|(n, _)| n).sum::<usize>();
            if !queued.iter().all(|(_, drained)| *drained) {
                // Out of time: the rest of this slot goes next run.
                break;
            }
            self.store.advance_sweep_cursor(slot).await?;
            swept.slots += 1;
            slot += width;
        }
        if swept.queued > 0 {
            tracing::info!(
                queued = swept.queued,
                slots = swept.slots,
                "waiting retries queued"
            );
        }
        Ok(swept)
    }

    /// Queues and removes the jobs of one slot's shard, a page at a time, until it is empty
    /// (`true`) or `deadline` passes (`false`).
    async fn drain(
        &self,
        slot: String,
        now: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<(usize, bool)> {
        let mut queued = 0;
        loop {
            if Instant::now() >= deadline {
                return Ok((queued, false));
            }
            let (page, more) = self.store.waiting_in(&slot, PAGE).await?;
            if page.is_empty() {
                return Ok((queued, true));
            }
            let jobs = page
                .iter()
                .map(|w| {
                    let job: DeliveryJob = serde_json::from_str(&w.job)
                        .map_err(|e| Error::Corrupt(format!("a waiting job does not read: {e}")))?;
                    let left = (w.due_ms - now.timestamp_millis()).max(0) as u64;
                    Ok((job, Duration::from_millis(left)))
                })
                .collect::<Result<Vec<_>>>();
            match jobs {
                Ok(jobs) => {
                    let delayed: Vec<(&DeliveryJob, Duration)> =
                        jobs.iter().map(|(j, d)| (j, *d)).collect();
                    self.queues.send_delayed(&delayed).await?;
                    queued += jobs.len();
                }
                Err(e) => {
                    // Nothing can make a damaged item read; it goes, with a trace.
                    tracing::error!(%slot, error = %e, "damaged waiting jobs dropped");
                }
            }
            self.store.remove_waiting(&page).await?;
            if !more {
                return Ok((queued, true));
            }
        }
    }
}

/// The start (unix seconds) of the slot of width `width` that `at` falls in.
pub fn slot_start(at: i64, width: i64) -> i64 {
    at.div_euclid(width) * width
}

fn slot_key(start: i64, shard: u32) -> String {
    format!("{start}#{shard}")
}

/// The shard of a delivery: a stable hash (FNV-1a) of its id, so a job stored twice lands on
/// the same item.
fn shard_of(id: &str, shards: u32) -> u32 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (hash % shards.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_shards() {
        assert_eq!(slot_start(125, 60), 120);
        assert_eq!(slot_start(120, 60), 120);
        assert_eq!(slot_start(-1, 60), -60);
        assert_eq!(slot_key(120, 3), "120#3");
        let shards: std::collections::HashSet<u32> = (0..200)
            .map(|i| shard_of(&format!("dlv_{i}"), 16))
            .collect();
        assert_eq!(shards.len(), 16, "ids spread over every shard");
        assert_eq!(shard_of("dlv_x", 16), shard_of("dlv_x", 16));
        assert_eq!(shard_of("dlv_x", 1), 0);
    }
}
