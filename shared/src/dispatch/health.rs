//! What one batch's attempts say about each endpoint's health, gathered while they run and
//! written once per endpoint at the end ([`super::Dispatcher::settle`]): a batch of ten jobs
//! at one failing endpoint costs one write, not ten.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::domain::{Attempt, Endpoint};
use crate::ids::{EndpointId, VenueId};

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
}

impl Health {
    /// Adds one attempt at `endpoint`; `probed`: it was the circuit's probe.
    pub fn note(&self, endpoint: &Endpoint, attempt: &Attempt, probed: bool) {
        let says_nothing = matches!(attempt.error_class.as_deref(), Some("template" | "secret"));
        if says_nothing && !probed {
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

    /// Every endpoint's tally, emptying this.
    pub fn take(&self) -> Vec<Tally> {
        self.tallies
            .lock()
            .map(|mut t| t.drain().map(|(_, tally)| tally).collect())
            .unwrap_or_default()
    }
}
