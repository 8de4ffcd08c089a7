//! An endpoint's health over a window: attempts by outcome, success rate, p50/p95 duration,
//! computed on request from the endpoint's own history partition for the window (delivery ids
//! sort by time, so the window is a key range). Nothing is counted while delivering: the
//! figures cost reads when someone asks, never a write per delivery.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{DeliveryFilter, Store, Tenant};
use crate::model::domain::{Attempt, DeliveryStatus};
use crate::model::error::Result;
use crate::model::ids::{DeliveryId, EndpointId};

/// The figures of one endpoint over `[since, until]`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EndpointStats {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub deliveries: DeliveryCounts,
    pub attempts: AttemptCounts,
    /// Succeeded attempts of all attempts (0 to 1); `null` without attempts.
    pub success_rate: Option<f64>,
    /// Of every attempt's duration; `null` without attempts.
    pub duration_ms: Option<Percentiles>,
    /// False when the window held more history than one request reads: the figures then
    /// cover `[since, until]` with `since` moved up to the oldest delivery read.
    pub complete: bool,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DeliveryCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct AttemptCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `succeeded`, or the error class of a failure (`http_5xx`, `timeout`, `connect`…);
    /// `earlier_failure` for attempts only counted (a delivery keeps its last [`super::MAX_KEPT_ATTEMPTS`] in full).
    pub by_outcome: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p95: u64,
}

/// What one stats request reads at most: past it the answer says `complete: false`.
const MAX_PAGES: usize = 40;
/// Items a page reads (DynamoDB stops a page at 1 MB first).
const PAGE_ITEMS: usize = 1000;
const MAX_READ_TIME: Duration = Duration::from_secs(10);

/// Counts as the history holds them, then figures.
#[derive(Default)]
struct Tally {
    deliveries: DeliveryCounts,
    attempts: AttemptCounts,
    durations: Vec<u64>,
}

impl Tally {
    fn attempt(&mut self, attempt: &Attempt) {
        self.attempts.total += 1;
        self.durations.push(attempt.duration_ms);
        let outcome = if attempt.succeeded() {
            self.attempts.succeeded += 1;
            "succeeded".to_owned()
        } else {
            self.attempts.failed += 1;
            attempt
                .error_class
                .clone()
                .unwrap_or_else(|| "other".into())
        };
        *self.attempts.by_outcome.entry(outcome).or_default() += 1;
    }

    fn delivery(&mut self, status: DeliveryStatus, attempts: &[Attempt], count: u32) {
        self.deliveries.total += 1;
        match status {
            DeliveryStatus::Succeeded => self.deliveries.succeeded += 1,
            DeliveryStatus::Failed => self.deliveries.failed += 1,
            DeliveryStatus::Pending => self.deliveries.pending += 1,
        }
        for attempt in attempts {
            self.attempt(attempt);
        }
        // Older attempts than those kept: each was followed by another, so each failed.
        let earlier = u64::from(count).saturating_sub(attempts.len() as u64);
        if earlier > 0 {
            self.attempts.total += earlier;
            self.attempts.failed += earlier;
            *self
                .attempts
                .by_outcome
                .entry("earlier_failure".into())
                .or_default() += earlier;
        }
    }

    fn figures(
        mut self,
        (since, until): (DateTime<Utc>, DateTime<Utc>),
        complete: bool,
    ) -> EndpointStats {
        self.durations.sort_unstable();
        let rank = |p: f64| {
            let n = self.durations.len();
            self.durations[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
        };
        EndpointStats {
            since,
            until,
            success_rate: (self.attempts.total > 0)
                .then(|| self.attempts.succeeded as f64 / self.attempts.total as f64),
            duration_ms: (!self.durations.is_empty()).then(|| Percentiles {
                p50: rank(0.50),
                p95: rank(0.95),
            }),
            deliveries: self.deliveries,
            attempts: self.attempts,
            complete,
        }
    }
}

impl Store {
    /// The endpoint's figures for deliveries created in `[since, until]`, newest first, from
    /// its own partition only (what another endpoint of the venue does is never read).
    pub async fn endpoint_stats(
        &self,
        tenant: &Tenant,
        endpoint: &EndpointId,
        (since, until): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<EndpointStats> {
        let started = Instant::now();
        let since = since.max(until - self.retention);
        let mut tally = Tally::default();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        let mut oldest = until;
        let range = (
            DeliveryId::bound(since, false),
            DeliveryId::bound(until, true),
        );
        for _ in 0..MAX_PAGES {
            // The history's own page read: group items come back as their members.
            let (records, last) = self
                .history_page(
                    tenant,
                    endpoint,
                    &DeliveryFilter::default(),
                    (&range.0, &range.1),
                    PAGE_ITEMS,
                    start,
                )
                .await?;
            for (_, d) in records {
                oldest = oldest.min(d.created_at);
                tally.delivery(d.status, &d.attempts, d.attempt_count);
            }
            start = last;
            if start.is_none() {
                return Ok(tally.figures((since, until), true));
            }
            if started.elapsed() > MAX_READ_TIME {
                break;
            }
        }
        Ok(tally.figures((oldest, until), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::domain::Trigger;

    fn attempt(status: Option<u16>, class: Option<&str>, ms: u64) -> Attempt {
        Attempt {
            attempt: 1,
            at: Utc::now(),
            trigger: Trigger::Scheduled,
            status_code: status,
            duration_ms: ms,
            error: class.map(|c| format!("{c} happened")),
            error_class: class.map(str::to_owned),
            hint: None,
            response_body: None,
        }
    }

    #[test]
    fn figures_count_attempts_by_outcome_with_nearest_rank_percentiles() {
        let mut tally = Tally::default();
        for ms in 1..=18 {
            tally.delivery(
                DeliveryStatus::Succeeded,
                &[attempt(Some(200), None, ms * 10)],
                1,
            );
        }
        tally.delivery(
            DeliveryStatus::Failed,
            &[attempt(Some(503), Some("http_5xx"), 900)],
            // 12 attempts, the last 10 kept: here one, for the test's sake.
            3,
        );
        let now = Utc::now();
        let figures = tally.figures((now, now), true);
        assert_eq!(figures.deliveries.total, 19);
        assert_eq!(
            (figures.deliveries.succeeded, figures.deliveries.failed),
            (18, 1)
        );
        assert_eq!(figures.attempts.total, 21);
        assert_eq!(figures.attempts.failed, 3);
        assert_eq!(figures.attempts.by_outcome["succeeded"], 18);
        assert_eq!(figures.attempts.by_outcome["http_5xx"], 1);
        assert_eq!(figures.attempts.by_outcome["earlier_failure"], 2);
        assert_eq!(figures.success_rate, Some(18.0 / 21.0));
        // 19 durations: 10…180 and 900. p50 = the 10th, p95 = the 19th.
        assert_eq!(
            figures.duration_ms,
            Some(Percentiles { p50: 100, p95: 900 })
        );
    }

    #[test]
    fn no_attempts_no_rates() {
        let now = Utc::now();
        let figures = Tally::default().figures((now, now), true);
        assert_eq!(figures.success_rate, None);
        assert_eq!(figures.duration_ms, None);
    }
}
