//! An endpoint's host around its attempts ([`crate::delivery::host_breaker`]): whether the
//! host lets a delivery through (or this one is its probe), the strikes of attempts that
//! hang there, an attempt that stops waiting once the host is not answering, and what a
//! probe found.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::health::Health;
use super::Dispatcher;
use crate::delivery::breaker::Gate;
use crate::delivery::host_breaker::HostCircuit;
use crate::model::domain::Endpoint;
use crate::model::error::Result;
use crate::storage::store::Tenant;

impl Dispatcher {
    /// The host of an endpoint at `url` and its next look, while it is not answering (by the
    /// list a second old at most).
    pub async fn host_not_answering(&self, url: &str) -> Option<(String, DateTime<Utc>)> {
        let host = self.hosts.host(url)?;
        let circuit = self.hosts.circuit(&host).await?;
        let next_look = circuit
            .probe_until
            .filter(|p| *p > circuit.open_until)
            .unwrap_or(circuit.open_until);
        Some((host, next_look))
    }

    /// Whether the endpoint's host lets a delivery through: `Ok(false)` it answers,
    /// `Ok(true)` this delivery is the probe of a host whose cooldown is over, `Err(until)`
    /// it is not answering (or another delivery probes it) until then.
    pub(super) async fn host_pass(
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
        let stale = self.hosts.stale(&host, now);
        match self.store.open_host(&host, &circuit, &stale).await {
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
        let stale = self.hosts.stale(&host, now);
        match self.store.after_host_probe(&host, outcome, &stale).await {
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
        let stale = self.hosts.stale(&host, now);
        match self.store.host_answers_slowly(&host, until, &stale).await {
            Ok(()) => self.hosts.note_slow(&host, until),
            Err(e) => {
                tracing::warn!(%host, error = %e, "could not keep the host as answering slowly")
            }
        }
    }
}
