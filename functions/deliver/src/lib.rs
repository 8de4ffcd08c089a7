//! The deliver function: each record of a batch is one delivery job (the first attempts of
//! up to ten events at one endpoint, or one delivery's retry), all attempted concurrently, or
//! a page of a replay ([`shared::pipeline::replay`]), or a step of an endpoint's backlog loop
//! ([`shared::pipeline::backlog`]).
//! A delivery that must wait for a retry is stored as a job of its own, with its wait
//! (`DelaySeconds` on the queue, or the retries table: [`shared::pipeline::waits`]), before its message
//! leaves the queue: no retry waits in flight. A job that can never be processed goes to the
//! delivery DLQ with its reason. Only a job that failed because AWS did stays on the queue,
//! hidden for a backoff that grows with each receive.

// Release builds abort on panic (see the workspace's release profile): no panicking shortcuts.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::future::join_all;
use shared::delivery::backoff;
use shared::delivery::http_client::{BuildError, DeliveryClient};
use shared::pipeline::backlog::BacklogTask;
use shared::pipeline::dispatch::{is_fresh, Dispatcher, Endpoints, Health, Ran};
use shared::pipeline::operational::OpsTask;
use shared::pipeline::removal::{PurgeTask, Remover};
use shared::pipeline::replay::{ReplayTask, Replayer};
use shared::pipeline::waits::Waits;
use shared::runtime::metrics::Counter;
use shared::storage::queue::{
    self, visibility_secs, BacklogMessage, DeliveryJob, OpsMessage, PurgeMessage, Queues,
    ReplayMessage,
};
use shared::storage::services::Services;
use shared::Error;

/// How long a job handed back at the deadline waits: a write its first run left in flight
/// lands within one AWS call attempt ([`shared::storage::services::CALL_ATTEMPT_TIMEOUT`]), so
/// the copy finds a success recorded instead of sending it again.
const HAND_BACK_DELAY: Duration =
    Duration::from_secs(shared::storage::services::CALL_ATTEMPT_TIMEOUT.as_secs() + 1);

#[derive(Clone)]
pub struct Deliver {
    dispatcher: Dispatcher,
    replayer: Replayer,
    remover: Remover,
    queues: Queues,
    waits: Waits,
    dlq_url: String,
    /// The first wait of a job that failed because AWS did ([`backoff::outage_wait`]).
    outage_backoff: Duration,
    /// What an invocation keeps before its deadline ([`shared::runtime::config::Limits`]).
    deadline_reserve: Duration,
}

impl Deliver {
    pub fn from_services(services: &Services) -> Result<Self, BuildError> {
        let http = DeliveryClient::new(&services.config.client())?;
        Ok(Self {
            dispatcher: Dispatcher::new(services, http),
            replayer: Replayer::new(services),
            remover: Remover::new(services),
            queues: services.queues.clone(),
            waits: Waits::new(services),
            dlq_url: services.config.resources.delivery_dlq_url.clone(),
            outage_backoff: services.config.outage_backoff,
            deadline_reserve: services.config.limits.deadline_reserve,
        })
    }

    /// Hides a received job for `wait` (its entry for one ChangeMessageVisibilityBatch).
    fn hide(delays: &mut Vec<(String, i32)>, record: &SqsMessage, wait: Duration) {
        if let Some(handle) = &record.receipt_handle {
            delays.push((handle.clone(), visibility_secs(wait)));
        }
    }

    /// How long a job waits after failing because AWS did: longer with each receive, so an
    /// outage of hours does not use up the receives that stand between it and the DLQ.
    fn outage_wait(&self, record: &SqsMessage) -> Duration {
        backoff::outage_wait(receive_count(record), self.outage_backoff)
    }

    /// A batch with no deadline of its own (a test calling the handler as a script would):
    /// Lambda's longest, 15 minutes.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        self.handle_until(event, Instant::now() + Duration::from_secs(900))
            .await
    }

    /// A batch that must be answered by `deadline` (Lambda stops the function there and the
    /// whole batch comes back after the visibility timeout, each record a receive nearer the
    /// DLQ). No attempt starts unless it can be sent and recorded in time; what is not done
    /// when the reserve begins is handed back as jobs of its own (sent again, then deleted),
    /// so it neither waits in flight nor spends receives.
    pub async fn handle_until(&self, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        let started = Instant::now();
        // Never more than half the time there is (a function with a short timeout).
        let reserve = self
            .deadline_reserve
            .min(deadline.saturating_duration_since(Instant::now()) / 2);
        let attempts_until = deadline.checked_sub(reserve);
        let hand_back_at = tokio::time::Instant::from_std(
            deadline
                .checked_sub(reserve / 2)
                .unwrap_or_else(Instant::now),
        );
        let jobs: Vec<Result<Message, String>> = event.records.iter().map(parse).collect();
        // The endpoints of every fresh job of the batch, in one read.
        let parsed: Vec<(&DeliveryJob, u32)> = event
            .records
            .iter()
            .zip(&jobs)
            .filter_map(|(r, job)| match job {
                Ok(Message::Job(job)) => Some((job, receive_count(r))),
                _ => None,
            })
            .collect();
        let health = Health::default();
        let results = match tokio::time::timeout_at(
            hand_back_at,
            self.dispatcher.endpoints_of(&parsed),
        )
        .await
        {
            Ok(endpoints) => {
                let endpoints = endpoints.map_err(|e| {
                    tracing::error!(error = %e, "could not read the batch's endpoints; its fresh jobs come back");
                });
                join_all(event.records.iter().zip(jobs).map(|(r, job)| async {
                    let work = self.handle_record(
                        r,
                        job,
                        endpoints.as_ref().ok(),
                        (&health, attempts_until),
                    );
                    tokio::time::timeout_at(hand_back_at, work)
                        .await
                        .unwrap_or(Handled::Unfinished)
                }))
                .await
            }
            Err(_) => event.records.iter().map(|_| Handled::Unfinished).collect(),
        };
        // What is left to write, in what is left of the reserve: the batch's health (one
        // write per endpoint; advisory), the jobs that wait or were handed back, the tasks
        // queued again; together, each given up at `finish_by` rather than outlive the
        // invocation (a job whose wait is not stored is reported failed and comes back).
        let at = |part: u32| {
            tokio::time::Instant::from_std(
                deadline
                    .checked_sub(reserve / part)
                    .unwrap_or_else(Instant::now),
            )
        };
        let (finish_by, answer_by) = (at(8), at(16));
        let mut response = SqsBatchResponse::default();
        let mut delays = Vec::new();
        let mut follow_ups = Vec::new();
        let mut waiting_on_follow_ups = Vec::new();
        let mut again = Vec::new();
        let mut handed_back = 0;
        for (record, result) in event.records.iter().zip(results) {
            let id = record.message_id.clone().unwrap_or_default();
            match result {
                Handled::Done(more) if more.is_empty() => {}
                Handled::Done(more) => {
                    follow_ups.extend(more);
                    waiting_on_follow_ups.push((id, record));
                }
                Handled::Failed => {
                    Self::hide(&mut delays, record, self.outage_wait(record));
                    response.add_failure(id);
                }
                Handled::Unfinished => match parse(record) {
                    // Sent again as a job of its own that checks each delivery's record first.
                    Ok(Message::Job(job)) => {
                        handed_back += 1;
                        tracing::info!(endpoint_id = %job.endpoint_id, "job unfinished at the deadline; handed back");
                        // After the writes it left in flight have landed or died, so that the
                        // copy finds what they recorded.
                        follow_ups.push((
                            DeliveryJob {
                                resumed: true,
                                ..job
                            },
                            HAND_BACK_DELAY,
                        ));
                        waiting_on_follow_ups.push((id, record));
                    }
                    Ok(task) => again.push((id, record, task)),
                    Err(_) => {
                        Self::hide(&mut delays, record, Duration::ZERO);
                        response.add_failure(id);
                    }
                },
            }
        }
        let settle = async {
            if tokio::time::timeout_at(finish_by, self.dispatcher.settle(health))
                .await
                .is_err()
            {
                tracing::warn!("the batch's health writes did not finish before the deadline");
            }
        };
        let schedule = async {
            if follow_ups.is_empty() {
                return Ok(());
            }
            // Together for the whole batch; a job leaves the queue only once its waiting
            // deliveries are stored on their own.
            let now = chrono::Utc::now();
            match tokio::time::timeout_at(finish_by, self.waits.schedule(&follow_ups, now)).await {
                Ok(scheduled) => scheduled.map_err(|e| e.to_string()),
                Err(_) => Err("not stored before the deadline".to_owned()),
            }
        };
        let requeue = join_all(again.iter().map(|(_, _, task)| async {
            tokio::time::timeout_at(finish_by, self.send_again(task))
                .await
                .unwrap_or(false)
        }));
        let ((), scheduled, requeued) = tokio::join!(settle, schedule, requeue);
        match scheduled {
            Ok(()) if !follow_ups.is_empty() => self
                .dispatcher
                .metrics()
                .count(Counter::RetriesScheduled, follow_ups.len() as u64),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not store retries; their jobs come back");
                for (id, record) in waiting_on_follow_ups {
                    Self::hide(&mut delays, record, self.outage_wait(record));
                    response.add_failure(id);
                }
            }
        }
        for ((id, record, _), sent) in again.into_iter().zip(requeued) {
            if !sent {
                Self::hide(&mut delays, record, self.outage_wait(record));
                response.add_failure(id);
            }
        }
        if !delays.is_empty()
            && tokio::time::timeout_at(answer_by, self.queues.delay_received(&delays))
                .await
                .is_err()
        {
            tracing::warn!("the failed jobs' waits were not set before the deadline; they come back after the visibility timeout");
        }
        // One line per invocation: each attempt is in the history, and each failed or
        // repeated one has a line of its own.
        let metrics = self.dispatcher.metrics();
        let (succeeded, failed) = metrics.attempts_so_far();
        tracing::info!(
            records = event.records.len(),
            attempts_succeeded = succeeded,
            attempts_failed = failed,
            retries_scheduled = metrics.counted(Counter::RetriesScheduled),
            held = metrics.counted(Counter::DeliveriesHeld),
            handed_back = handed_back,
            failed_records = response.batch_item_failures.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "deliver batch"
        );
        metrics.flush("deliver");
        response
    }

    async fn handle_record(
        &self,
        record: &SqsMessage,
        job: Result<Message, String>,
        endpoints: Option<&Endpoints>,
        batch: (&Health, Option<Instant>),
    ) -> Handled {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let body = record.body.as_deref().unwrap_or("");
        let job = match job {
            Ok(Message::Job(job)) => job,
            Ok(Message::Replay(task)) => return self.replay(&task).await,
            Ok(Message::Purge(task)) => return self.purge(&task).await,
            Ok(Message::Ops(task)) => return self.ops(&task).await,
            Ok(Message::Backlog(task)) => return self.backlog(&task).await,
            Err(reason) => return self.poison(message_id, body, reason).await,
        };
        let no_endpoints = Endpoints::new();
        let endpoints = match endpoints {
            Some(endpoints) => endpoints,
            // The batch read failed: only jobs that read on their own can go on.
            None if is_fresh(&job, receive_count(record)) => return Handled::Failed,
            None => &no_endpoints,
        };
        match self
            .dispatcher
            .run(&job, receive_count(record), endpoints, batch)
            .await
        {
            Ok(Ran {
                outcome,
                follow_ups,
            }) => {
                tracing::debug!(endpoint_id = %job.endpoint_id, outcome, "job done");
                Handled::Done(follow_ups)
            }
            // Retrying cannot make a missing event or a corrupt item appear.
            Err(e @ (Error::NotFound(_) | Error::Corrupt(_))) => {
                self.poison(message_id, body, format!("cannot be delivered: {e}"))
                    .await
            }
            Err(e) => {
                tracing::error!(endpoint_id = %job.endpoint_id, error = %e, "job failed; it will be retried");
                Handled::Failed
            }
        }
    }
}

impl Deliver {
    /// A replay or purge task unfinished at the deadline, queued again as it came.
    async fn send_again(&self, task: &Message) -> bool {
        let sent = match task {
            Message::Replay(task) => task.queue(&self.queues, Duration::ZERO).await,
            Message::Purge(task) => task.queue(&self.queues, 0).await,
            Message::Ops(task) => self.dispatcher.ops().queue(task, Duration::ZERO).await,
            Message::Backlog(task) => task.queue(&self.queues, Duration::ZERO).await,
            Message::Job(_) => return false,
        };
        sent.map_err(|e| tracing::error!(error = %e, "could not hand back an unfinished task; it comes back"))
            .is_ok()
    }

    /// A page of a replay; the task of the next page is queued before this one leaves.
    async fn replay(&self, task: &ReplayTask) -> Handled {
        let next = match self.replayer.run_page(task).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(replay_id = %task.replay_id, error = %e, "replay page failed; it will be retried");
                return Handled::Failed;
            }
        };
        if let Some((next, after)) = next {
            if let Err(e) = next.queue(&self.queues, after).await {
                tracing::error!(replay_id = %task.replay_id, error = %e, "could not queue the replay's next page; this page comes back");
                return Handled::Failed;
            }
        }
        Handled::Done(Vec::new())
    }

    /// A step of a venue's removal; the task of the next step is queued before this one
    /// leaves.
    async fn purge(&self, task: &PurgeTask) -> Handled {
        let next = match self.remover.step(task).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(venue_id = %task.venue_id, error = %e, "purge step failed; it will be retried");
                return Handled::Failed;
            }
        };
        match next {
            Some(next) => match next.queue(&self.queues, 0).await {
                Ok(()) => Handled::Done(Vec::new()),
                Err(e) => {
                    tracing::error!(venue_id = %task.venue_id, error = %e, "could not queue the next purge step; this one comes back");
                    Handled::Failed
                }
            },
            None => {
                tracing::info!(venue_id = %task.venue_id, "venue's events and history purged");
                Handled::Done(Vec::new())
            }
        }
    }

    /// An operational event to publish; one that cannot be yet comes back (its id makes a
    /// second publish the same event).
    async fn ops(&self, task: &OpsTask) -> Handled {
        match self.dispatcher.ops().run(task).await {
            Ok(()) => Handled::Done(Vec::new()),
            Err(e) => {
                tracing::error!(error = %e, "could not publish an operational event; it will be retried");
                Handled::Failed
            }
        }
    }

    /// A step of an endpoint's backlog loop (it queues the next step itself).
    async fn backlog(&self, task: &BacklogTask) -> Handled {
        match self.dispatcher.backlog().step(task).await {
            Ok(()) => Handled::Done(Vec::new()),
            Err(e) => {
                tracing::warn!(endpoint_id = %task.endpoint_id, step = task.step, error = %e, "backlog step not done; it comes back");
                Handled::Failed
            }
        }
    }

    /// Hands a job that can never succeed to the DLQ with its reason.
    async fn poison(&self, message_id: &str, body: &str, reason: String) -> Handled {
        tracing::error!(message_id, reason, "poison delivery job; sent to the DLQ");
        match self.queues.dead_letter(&self.dlq_url, body, &reason).await {
            Ok(()) => Handled::Done(Vec::new()),
            Err(_) => Handled::Failed,
        }
    }
}

enum Handled {
    /// Finished, once these (a job's deliveries that wait for a retry) are stored.
    Done(Vec<(DeliveryJob, Duration)>),
    /// Something broke (AWS unavailable…): back after the queue's visibility timeout.
    Failed,
    /// Not finished when the deadline's reserve began: handed back.
    Unfinished,
}

/// What a record of the delivery queue carries.
enum Message {
    Job(DeliveryJob),
    Replay(ReplayTask),
    Purge(PurgeTask),
    Ops(OpsTask),
    Backlog(BacklogTask),
}

/// The job (or replay task) of a record, or why it is none.
fn parse(record: &SqsMessage) -> Result<Message, String> {
    let body = record.body.as_deref().unwrap_or("");
    if let Ok(ReplayMessage { replay }) = serde_json::from_str::<ReplayMessage<ReplayTask>>(body) {
        return Ok(Message::Replay(replay));
    }
    if let Ok(PurgeMessage { purge }) = serde_json::from_str::<PurgeMessage<PurgeTask>>(body) {
        return Ok(Message::Purge(purge));
    }
    if let Ok(OpsMessage { ops }) = serde_json::from_str::<OpsMessage<OpsTask>>(body) {
        return Ok(Message::Ops(ops));
    }
    if let Ok(BacklogMessage { backlog }) =
        serde_json::from_str::<BacklogMessage<BacklogTask>>(body)
    {
        return Ok(Message::Backlog(backlog));
    }
    match serde_json::from_str::<DeliveryJob>(body) {
        Ok(job) if !job.deliveries.is_empty() => Ok(Message::Job(job)),
        Ok(_) => Err("a delivery job without deliveries".into()),
        Err(e) => Err(format!("not a delivery job: {e}")),
    }
}

/// SQS's count of how often this message was received, 1 on the first.
fn receive_count(record: &SqsMessage) -> u32 {
    queue::receive_count(&record.attributes)
}
