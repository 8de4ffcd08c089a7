//! An endpoint's health around its attempts: whether a delivery may go now (the circuit
//! breaker and, at a slow endpoint, a lease slot: [`crate::delivery::breaker`]), and what one batch's
//! attempts say about each endpoint, gathered while they run and written once per endpoint at
//! the end ([`Dispatcher::settle`]): a batch of ten jobs at one failing endpoint costs one
//! write, not ten.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Dispatcher;
use crate::delivery::breaker::{Change, Circuit, Gate};
use crate::model::domain::{rfc3339, Attempt, Endpoint};
use crate::model::error::Result;
use crate::model::ids::{EndpointId, VenueId};
use crate::pipeline::operational::{DisabledBy, OpsEvent};
use crate::storage::store::{HoldReason, Tenant};

/// The attempts of a batch at one endpoint.
#[derive(Debug)]
pub struct Tally {
    /// The endpoint as the batch read it (its failure clock and circuit before the batch).
    pub endpoint: Endpoint,
    pub successes: u32,
    /// Attempts that failed in a way the receiver could change (not a template or secret
    /// error, which says nothing about the receiver).
    pub failures: u32,
    /// Whether the latest attempt (by its start) succeeded.
    pub last_succeeded: bool,
    last_at: Option<DateTime<Utc>>,
    /// One of them was the probe of a half-open circuit.
    pub probed: bool,
}

#[derive(Debug, Default)]
pub struct Health {
    tallies: Mutex<HashMap<(VenueId, EndpointId), Tally>>,
    /// Endpoints this batch marked slow already.
    slow: Mutex<HashSet<(VenueId, EndpointId)>>,
    /// Endpoints whose backlog loop this batch made sure of already.
    looked: Mutex<HashSet<(VenueId, EndpointId)>>,
    /// Endpoints whose half-open circuit's probe a delivery of this batch tried to take.
    probing: Mutex<HashSet<(VenueId, EndpointId)>>,
    /// Hosts whose probe a delivery of this batch tried to take.
    host_probing: Mutex<HashSet<String>>,
    /// Hosts answering slowly that this batch kept so already.
    slow_answers: Mutex<HashSet<String>>,
    /// Endpoints whose hanging attempt struck their host in this batch already.
    struck: Mutex<HashSet<(VenueId, EndpointId)>>,
}

impl Health {
    /// Adds one attempt at `endpoint`; `probed`: it was the circuit's probe.
    pub fn note(&self, endpoint: &Endpoint, attempt: &Attempt, probed: bool) {
        // A template or secret error says nothing about the receiver (a probe that ends so
        // leaves its lease to run out, and another delivery probes).
        if matches!(attempt.error_class.as_deref(), Some("template" | "secret")) {
            return;
        }
        let Ok(mut tallies) = self.tallies.lock() else {
            return;
        };
        let tally = tallies
            .entry((endpoint.venue_id.clone(), endpoint.endpoint_id.clone()))
            .or_insert_with(|| Tally {
                endpoint: endpoint.clone(),
                successes: 0,
                failures: 0,
                last_succeeded: false,
                last_at: None,
                probed: false,
            });
        let succeeded = attempt.succeeded();
        if succeeded {
            tally.successes += 1;
        } else {
            tally.failures += 1;
        }
        if tally.last_at.is_none_or(|at| attempt.at >= at) {
            tally.last_at = Some(attempt.at);
            tally.last_succeeded = succeeded;
        }
        tally.probed |= probed;
    }

    /// `true` the first time this batch finds `endpoint` slow: the one time to say so.
    pub fn first_slow(&self, endpoint: &Endpoint) -> bool {
        self.slow.lock().is_ok_and(|mut slow| {
            slow.insert((endpoint.venue_id.clone(), endpoint.endpoint_id.clone()))
        })
    }

    /// `true` the first time this batch holds a delivery at `endpoint`'s open circuit: the
    /// one time to make sure a loop looks at its backlog.
    pub fn first_hold(&self, endpoint: &Endpoint) -> bool {
        self.looked.lock().is_ok_and(|mut looked| {
            looked.insert((endpoint.venue_id.clone(), endpoint.endpoint_id.clone()))
        })
    }

    /// `true` the first time a delivery of this batch tries to take `endpoint`'s probe: the
    /// others meet the circuit as open without a write (ten of a released group trying at
    /// once paid for nine refused writes of the endpoint's item).
    pub fn first_probe_try(&self, endpoint: &Endpoint) -> bool {
        self.probing.lock().is_ok_and(|mut probing| {
            probing.insert((endpoint.venue_id.clone(), endpoint.endpoint_id.clone()))
        })
    }

    /// `true` the first time a delivery of this batch tries to take `host`'s probe.
    pub fn first_host_probe_try(&self, host: &str) -> bool {
        self.host_probing
            .lock()
            .is_ok_and(|mut probing| probing.insert(host.to_owned()))
    }

    /// `true` the first time an attempt of this batch answered slowly at `host`.
    pub fn first_slow_answer(&self, host: &str) -> bool {
        self.slow_answers
            .lock()
            .is_ok_and(|mut hosts| hosts.insert(host.to_owned()))
    }

    /// `true` the first time an attempt of this batch at `endpoint` strikes its host.
    pub fn first_strike(&self, endpoint: &Endpoint) -> bool {
        self.struck.lock().is_ok_and(|mut struck| {
            struck.insert((endpoint.venue_id.clone(), endpoint.endpoint_id.clone()))
        })
    }

    /// Every endpoint's tally, emptying this.
    pub fn take(&self) -> Vec<Tally> {
        self.tallies
            .lock()
            .map(|mut t| t.drain().map(|(_, tally)| tally).collect())
            .unwrap_or_default()
    }
}

/// Why a delivery may not be attempted now.
#[derive(Clone, Copy, Debug)]
pub(super) enum NotNow {
    /// The endpoint's circuit is open (or its probe is out) until then.
    Circuit(DateTime<Utc>),
    /// A slow endpoint at its cap: look again after this long.
    Cap(Duration),
    /// The endpoint's host is not answering (or its probe is out) until then.
    Host(DateTime<Utc>),
}

impl NotNow {
    /// Why a delivery held so waits.
    pub(super) fn reason(self) -> HoldReason {
        match self {
            NotNow::Host(_) => HoldReason::HostNotAnswering,
            NotNow::Circuit(_) | NotNow::Cap(_) => HoldReason::CircuitOpen,
        }
    }
}

/// A delivery let through to its attempt: whether it is the circuit's probe, whether it is
/// its host's probe, and the lease slot it holds at a slow endpoint (slot, lease end in unix
/// ms).
#[derive(Clone, Copy, Debug)]
pub(super) struct Admitted {
    pub(super) probed: bool,
    pub(super) host_probe: bool,
    pub(super) slot: Option<(u32, i64)>,
}

impl Dispatcher {
    /// Whether a delivery to `endpoint` may be attempted now: by its circuit breaker (the
    /// one probe of an endpoint whose cooldown is over goes), and, if it is slow, by a free
    /// lease slot. `Err`: not now, and why.
    pub(super) async fn pass(
        &self,
        tenant: &Tenant,
        endpoint: &Endpoint,
        (held, health): (u32, &Health),
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<Admitted, NotNow>> {
        let hold = |until| {
            tracing::debug!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, %until, "not attempted: the circuit is open");
            Ok(Err(NotNow::Circuit(until)))
        };
        let lease = now
            + chrono::TimeDelta::from_std(self.breaker.probe_lease)
                .unwrap_or(chrono::TimeDelta::MAX / 2);
        let probed = match self.breaker.gate(&Circuit::of(endpoint), now) {
            Gate::Pass => false,
            Gate::Hold(until) => return hold(until),
            Gate::Probe => {
                if !health.first_probe_try(endpoint)
                    || !self
                        .store
                        .take_probe(tenant, &endpoint.endpoint_id, now, lease)
                        .await?
                {
                    return hold(lease);
                }
                tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, "circuit half open: this delivery is the probe");
                true
            }
        };
        let host_probe = match self.host_pass(endpoint, health, (now, lease)).await? {
            Ok(host_probe) => host_probe,
            Err(until) => return Ok(Err(NotNow::Host(until))),
        };
        let slow = endpoint.slow_until.is_some_and(|until| until > now);
        if !slow {
            return Ok(Ok(Admitted {
                probed,
                host_probe,
                slot: None,
            }));
        }
        // The slots free by one read; a try at up to two of them (another deliverer may take
        // one first); all taken: wait while the others finish, having written nothing.
        let slots = self.breaker.max_concurrent.max(1);
        let mut free = self
            .store
            .free_slots(tenant, &endpoint.endpoint_id, slots, now.timestamp_millis())
            .await?;
        for _ in 0..free.len().min(2) {
            let slot = free.swap_remove((rand::random::<u32>() as usize) % free.len());
            if self
                .store
                .take_slot(
                    tenant,
                    &endpoint.endpoint_id,
                    slot,
                    now.timestamp_millis(),
                    lease.timestamp_millis(),
                )
                .await?
            {
                return Ok(Ok(Admitted {
                    probed,
                    host_probe,
                    slot: Some((slot, lease.timestamp_millis())),
                }));
            }
        }
        let wait = self.breaker.cap_wait(held, rand::random::<f64>());
        tracing::info!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, slots, wait_ms = wait.as_millis() as u64, "slow endpoint at its concurrency cap; held");
        Ok(Err(NotNow::Cap(wait)))
    }

    /// Marks a slow endpoint as such (once a batch, and not again while the mark stands),
    /// so that attempts from then on take lease slots.
    pub(super) async fn mark_slow(&self, tenant: &Tenant, endpoint: &Endpoint, health: &Health) {
        let now = Utc::now();
        let marked = endpoint.slow_until.is_some_and(|until| until > now);
        if marked || !health.first_slow(endpoint) {
            return;
        }
        let until = now + chrono::TimeDelta::from_std(self.breaker.slow_for).unwrap_or_default();
        tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %endpoint.endpoint_id, "slow endpoint: its attempts now take lease slots");
        if let Err(e) = self
            .store
            .mark_slow(tenant, &endpoint.endpoint_id, now, until)
            .await
        {
            tracing::warn!(endpoint_id = %endpoint.endpoint_id, error = %e, "could not mark the endpoint slow");
        }
    }

    /// Writes what a batch's attempts said about each endpoint's health, one write per
    /// endpoint at most: the failure clock (started by a failure, stopped by a success; the
    /// endpoint disabled when it has run too long) and the circuit breaker. A write that
    /// fails is logged and dropped: the next batch writes the endpoint's health again.
    pub async fn settle(&self, health: Health) {
        let now = Utc::now();
        for tally in health.take() {
            let tenant = Tenant::from_internal_message(tally.endpoint.venue_id.clone());
            let endpoint = &tally.endpoint;
            let id = &endpoint.endpoint_id;
            let failed_last = !tally.last_succeeded && tally.failures > 0;
            let result = match endpoint.failing_since {
                Some(since) if failed_last && self.policy.should_disable(since, now) => {
                    tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %id, %since, "failing too long; endpoint disabled");
                    let reason = format!("every delivery failed since {}", rfc3339(since));
                    match self.store.disable_endpoint(&tenant, id, &reason).await {
                        Ok(true) => {
                            self.ops
                                .send(OpsEvent::EndpointDisabled {
                                    endpoint,
                                    by: DisabledBy::Failing,
                                    reason: &reason,
                                    at: now,
                                })
                                .await;
                            Ok(())
                        }
                        Ok(false) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                _ => {
                    let circuit = Circuit::of(endpoint);
                    let (change, window) = self.breaker.after_with_rate(
                        &circuit,
                        (tally.successes, tally.failures, tally.last_succeeded),
                        (tally.probed, rand::random::<f64>()),
                        now,
                    );
                    if let Change::Open { until, opens, .. } = &change {
                        tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %id, %until, opens, failures_in_row = circuit.failures_in_row + tally.failures, window_attempts = circuit.window.attempts + tally.successes + tally.failures, window_failures = circuit.window.failures + tally.failures, "circuit opened: deliveries wait unattempted until a probe succeeds");
                    }
                    // Said when this write opened a closed circuit, or closed an open one
                    // (not at each re-opening after a failed probe, nor twice when two
                    // batches conclude the same at once).
                    match self
                        .store
                        .record_health(&tenant, id, (&change, &window), now)
                        .await
                    {
                        Ok(true) => {
                            let event = match &change {
                                Change::Open {
                                    until, failures, ..
                                } => OpsEvent::CircuitOpened {
                                    endpoint,
                                    failures_in_row: endpoint.failures_in_row + failures,
                                    until: *until,
                                },
                                _ => OpsEvent::CircuitClosed { endpoint, at: now },
                            };
                            self.ops.send(event).await;
                            Ok(())
                        }
                        Ok(false) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = result {
                tracing::warn!(venue_id = %tenant.venue(), endpoint_id = %id, error = %e, "could not record the endpoint's health");
            }
        }
    }
}
