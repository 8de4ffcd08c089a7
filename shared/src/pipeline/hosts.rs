//! A deliverer's view of the not-answering hosts ([`crate::delivery::host_breaker`]): the
//! list as last read, read again when it is older than `host_refresh` (one read a second
//! at most, however many deliveries ask), and kept up to date with this deliverer's own
//! writes at once. A read that fails leaves the list as it was (the host breaker is a
//! guard; it never stops a delivery on its own failure).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::delivery::breaker::{BreakerPolicy, Gate};
use crate::delivery::host_breaker::{host_of, HostCircuit};
use crate::storage::store::{HostList, Store};

type List = Arc<HostList>;

pub struct HostWatch {
    store: Store,
    policy: BreakerPolicy,
    /// The list, and when it was read.
    list: Mutex<Option<(Instant, List)>>,
    /// One read at a time.
    reading: tokio::sync::Mutex<()>,
    /// Woken when this deliverer puts a host on the list: its attempts waiting there stop
    /// at once, not at their next look.
    listed: tokio::sync::Notify,
}

impl HostWatch {
    pub fn new(store: Store, policy: BreakerPolicy) -> Arc<Self> {
        Arc::new(Self {
            store,
            policy,
            list: Mutex::new(None),
            reading: tokio::sync::Mutex::new(()),
            listed: tokio::sync::Notify::new(),
        })
    }

    /// The host of an endpoint's address, if host breakers are on.
    pub fn host(&self, url: &str) -> Option<String> {
        (self.policy.host_endpoints > 0)
            .then(|| host_of(url))
            .flatten()
    }

    fn fresh(&self) -> Option<List> {
        let list = self.list.lock().ok()?;
        let (at, list) = list.as_ref()?;
        (at.elapsed() < self.policy.host_refresh).then(|| list.clone())
    }

    async fn current(&self) -> List {
        if let Some(list) = self.fresh() {
            return list;
        }
        let _reading = self.reading.lock().await;
        if let Some(list) = self.fresh() {
            return list;
        }
        let list = match self.store.hosts_not_answering().await {
            Ok(read) => Arc::new(read),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the not-answering hosts; going by the last list");
                self.cached_list().unwrap_or_default()
            }
        };
        if let Ok(mut slot) = self.list.lock() {
            *slot = Some((Instant::now(), list.clone()));
        }
        list
    }

    fn cached_list(&self) -> Option<List> {
        self.list.lock().ok()?.as_ref().map(|(_, l)| l.clone())
    }

    /// The host's circuit, by a list at most `host_refresh` old (`None`: answering).
    pub async fn circuit(&self, host: &str) -> Option<HostCircuit> {
        self.current().await.not_answering.get(host).copied()
    }

    /// Until when the host answers slowly (its probe was answered, slowly), if it does now.
    pub async fn answering_slowly(&self, host: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.current()
            .await
            .slow
            .get(host)
            .copied()
            .filter(|until| *until > now)
    }

    /// The list's entries gone stale, to remove with this deliverer's next write of it
    /// ([`HostList::stale`]).
    pub fn stale(&self, host: &str, now: DateTime<Utc>) -> Vec<String> {
        self.cached_list()
            .map(|list| list.stale(host, now))
            .unwrap_or_default()
    }

    /// The host's gate now.
    pub async fn gate(&self, host: &str, now: DateTime<Utc>) -> Gate {
        self.policy
            .host_gate(self.circuit(host).await.as_ref(), now)
    }

    /// What this deliverer just wrote of a host: on the list so, or off it (`None`), and
    /// answering slowly until `slow`.
    pub fn note(&self, host: &str, circuit: Option<HostCircuit>, slow: Option<DateTime<Utc>>) {
        self.change(|list| match circuit {
            Some(c) => {
                list.not_answering.insert(host.to_owned(), c);
            }
            None => {
                list.not_answering.remove(host);
            }
        });
        if let Some(until) = slow {
            self.note_slow(host, until);
        }
        if circuit.is_some() {
            self.listed.notify_waiters();
        }
    }

    /// That this deliverer just kept a host as answering slowly until `until`.
    pub fn note_slow(&self, host: &str, until: DateTime<Utc>) {
        self.change(|list| {
            list.slow.insert(host.to_owned(), until);
        });
    }

    fn change(&self, f: impl FnOnce(&mut HostList)) {
        let Ok(mut slot) = self.list.lock() else {
            return;
        };
        let (at, list) = slot
            .take()
            .unwrap_or_else(|| (Instant::now(), List::default()));
        let mut list = (*list).clone();
        f(&mut list);
        *slot = Some((at, Arc::new(list)));
    }

    /// Resolves when this deliverer next puts a host on the list.
    pub async fn listed(&self) {
        self.listed.notified().await;
    }
}
