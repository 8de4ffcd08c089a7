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
use crate::delivery::host_breaker::HostCircuit;
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

    /// Whether the endpoint's host lets a delivery through: `Ok(false)` it answers,
    /// `Ok(true)` this delivery is the probe of a host whose cooldown is over, `Err(until)`
    /// it is not answering (or another delivery probes it) until then.
    async fn host_pass(
        &self,
        endpoint: &Endpoint,
        health: &Health,
        (now, lease): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<std::result::Result<bool, DateTime<Utc>>> {
        let Some(host) = self.hosts.host(&endpoint.url) else {
            return Ok(Ok(false));
        };
        match self.hosts.gate(&host, now).await {
            Gate::Pass => Ok(Ok(false)),
            Gate::Hold(until) => {
                tracing::debug!(endpoint_id = %endpoint.endpoint_id, %host, %until, "not attempted: the host is not answering");
                Ok(Err(until))
            }
            Gate::Probe => {
                if !health.first_host_probe_try(&host)
                    || !self.store.take_host_probe(&host, now, lease).await?
                {
                    return Ok(Err(lease));
                }
                if let Some(c) = self.hosts.circuit(&host).await {
                    self.hosts.note(
                        &host,
                        Some(HostCircuit {
                            probe_until: Some(lease),
                            ..c
                        }),
                        None,
                    );
                }
                tracing::info!(endpoint_id = %endpoint.endpoint_id, %host, "host not answering, cooldown over: this delivery is its probe");
                Ok(Ok(true))
            }
        }
    }

    /// An attempt at `endpoint` has no answer after `slow_after` (or could not connect):
    /// a strike at its host, once a batch per endpoint. `true`: the host is not answering
    /// (it was on the list, or this strike put it there), and an attempt still waiting there
    /// may stop.
    pub(super) async fn strike(&self, endpoint: &Endpoint, health: &Health) -> bool {
        let Some(host) = self.hosts.host(&endpoint.url) else {
            return false;
        };
        if self.hosts.circuit(&host).await.is_some() {
            return true;
        }
        let now = Utc::now();
        // Its probe was answered, slowly: slow attempts there are no news.
        if self.hosts.answering_slowly(&host, now).await.is_some() || !health.first_strike(endpoint)
        {
            return false;
        }
        let window = self.breaker.host_window_of(now);
        let cap = self.breaker.host_endpoints;
        let struck = match self
            .store
            .strike_host(&host, endpoint.endpoint_id.as_str(), (window, cap), now)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%host, error = %e, "could not strike the host");
                return false;
            }
        };
        if !self.breaker.host_trips(struck) {
            return false;
        }
        let circuit = self.breaker.host_open(1, rand::random::<f64>(), now);
        match self.store.open_host(&host, &circuit).await {
            Ok(opened) => {
                if opened {
                    tracing::warn!(%host, endpoints = struck, until = %circuit.open_until, "host not answering: attempts at it stop waiting, and deliveries to its endpoints are held until a probe gets an answer");
                    self.hosts.note(&host, Some(circuit), None);
                }
                true
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, "could not put the host on the not-answering list");
                false
            }
        }
    }

    /// Waits for an attempt's answer (`send`), and meanwhile: once it has run `slow_after`,
    /// marks the endpoint slow and strikes its host; `None` as soon as the host is not
    /// answering (this strike put it on the list, or the list says so, a second old at most):
    /// the attempt stops waiting. A host's probe (`host_probe`) waits its full time: an answer
    /// of any kind is news.
    pub(super) async fn watched<F: std::future::Future>(
        &self,
        send: &mut std::pin::Pin<&mut F>,
        tenant: &Tenant,
        endpoint: &Endpoint,
        (health, host_probe): (&Health, bool),
    ) -> Option<F::Output> {
        let host = if host_probe {
            None
        } else {
            self.hosts.host(&endpoint.url)
        };
        let slow = tokio::time::sleep(self.breaker.slow_after);
        tokio::pin!(slow);
        let mut slow_seen = false;
        let look = (self.breaker.host_refresh / 4).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                sent = send.as_mut() => return Some(sent),
                () = &mut slow, if !slow_seen => {
                    slow_seen = true;
                    self.mark_slow(tenant, endpoint, health).await;
                    if host.is_some() && self.strike(endpoint, health).await {
                        return None;
                    }
                    continue;
                }
                () = tokio::time::sleep(look), if host.is_some() => {}
                () = self.hosts.listed(), if host.is_some() => {}
            }
            if let Some(host) = &host {
                if self.hosts.circuit(host).await.is_some() {
                    return None;
                }
            }
        }
    }

    /// After a host's probe: an answer of any kind takes it off the list (one that took
    /// longer than `slow_after` keeps it as answering slowly for `slow_for`, so its slow
    /// attempts do not strike it again); none opens it again for twice as long.
    pub(super) async fn host_probed(&self, endpoint: &Endpoint, answered: bool, took: Duration) {
        let Some(host) = self.hosts.host(&endpoint.url) else {
            return;
        };
        let now = Utc::now();
        let slow = (answered && took >= self.breaker.slow_after)
            .then(|| now + chrono::TimeDelta::from_std(self.breaker.slow_for).unwrap_or_default());
        let again = match (answered, self.hosts.circuit(&host).await) {
            (false, Some(c)) => Some(self.breaker.host_open(
                c.opens + 1,
                rand::random::<f64>(),
                now,
            )),
            (false, None) => Some(self.breaker.host_open(1, rand::random::<f64>(), now)),
            (true, _) => None,
        };
        let outcome = match &again {
            Some(c) => Err(c),
            None => Ok(slow),
        };
        match self.store.after_host_probe(&host, outcome).await {
            Ok(()) => {
                if answered {
                    tracing::warn!(%host, slowly = slow.is_some(), "host answers again: its endpoints' deliveries go");
                } else {
                    tracing::info!(%host, "host probe got no answer; not answering for longer");
                }
                self.hosts.note(&host, again, slow);
            }
            Err(e) => {
                tracing::warn!(%host, error = %e, "could not record the host's probe");
            }
        }
    }

    /// An attempt answered after `slow_after` at a host answering slowly: keeps it so for
    /// `slow_for` from now, written when less than half of that is left (once a batch).
    pub(super) async fn answered_slowly(&self, endpoint: &Endpoint, health: &Health) {
        let Some(host) = self.hosts.host(&endpoint.url) else {
            return;
        };
        let now = Utc::now();
        let Some(until) = self.hosts.answering_slowly(&host, now).await else {
            return;
        };
        let slow_for = chrono::TimeDelta::from_std(self.breaker.slow_for).unwrap_or_default();
        if until - now > slow_for / 2 || !health.first_slow_answer(&host) {
            return;
        }
        let until = now + slow_for;
        match self.store.host_answers_slowly(&host, until).await {
            Ok(()) => self.hosts.note_slow(&host, until),
            Err(e) => {
                tracing::warn!(%host, error = %e, "could not keep the host as answering slowly")
            }
        }
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
