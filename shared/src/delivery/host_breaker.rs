//! The breaker of a destination host: one receiver (a CRM, a mailing tool, an automation
//! platform) can sit behind thousands of endpoints of different venues, and when it stops
//! answering, each endpoint's own breaker ([`super::breaker`]) learns it only from its own
//! failures, each at the full request timeout. Until then every delivery to it holds a slot
//! of deliver's concurrency, and a few thousand endpoints at one dead host take all of it.
//!
//! So attempts at a host tell on it. An attempt still without an answer after `slow_after`
//! (or one that could not connect) is a strike: the endpoint's id is added to the host's
//! strikes of the current window (one small write, paid only by attempts that hang or fail to
//! connect). When `endpoints` different endpoints have struck within one window, the host is
//! *not answering*: it goes on a short list every deliver instance reads (at most once a
//! second), and from then on:
//!
//! - attempts at it that are still waiting stop waiting (recorded as timeouts and retried as
//!   any timeout), so the invocations they held are free within about a second;
//! - deliveries to any endpoint at it are held (pending, with the reason and the next look)
//!   without a request, and wait in their endpoint's backlog;
//! - once the host's cooldown is over, one delivery (of whichever endpoint) probes it with
//!   the full timeout: an answer of any kind closes the host's breaker, and every endpoint's
//!   backlog goes again, each at the pace of its own breaker; no answer opens it again for
//!   twice as long.
//!
//! One endpoint hanging never trips its host (it takes `endpoints` distinct ones), so a
//! venue's slow endpoint at a shared platform stays that venue's affair. A host whose every
//! request is slow but answered trips once: its probe is answered (slowly), and the host is
//! then kept as *answering slowly* for `slow_for` (renewed while its attempts are answered
//! slowly), during which its slow attempts do not strike it. That costs its venues one
//! cooldown's wait and a retry of the attempts that stopped, once.

use chrono::{DateTime, TimeDelta, Utc};

use super::breaker::{BreakerPolicy, Gate};

/// A host on the not-answering list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostCircuit {
    /// Nothing is sent to it before this; then one probe.
    pub open_until: DateTime<Utc>,
    /// How many times in a row it opened (the cooldown doubles with each).
    pub opens: u32,
    /// A probe is out until then.
    pub probe_until: Option<DateTime<Utc>>,
}

/// The host of an endpoint's address, as its breaker knows it: `host:port`, lower case
/// (`None` for an address that does not parse, which its attempt reports).
pub fn host_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    Some(format!("{host}:{}", url.port_or_known_default()?))
}

impl BreakerPolicy {
    /// Whether a delivery to a host may go: [`Gate::Pass`] when the host is not on the list,
    /// [`Gate::Hold`] until its cooldown or its probe's lease ends, [`Gate::Probe`] after.
    pub fn host_gate(&self, host: Option<&HostCircuit>, now: DateTime<Utc>) -> Gate {
        match host {
            None => Gate::Pass,
            Some(h) if now < h.open_until => Gate::Hold(h.open_until),
            Some(h) => match h.probe_until {
                Some(probe) if now < probe => Gate::Hold(probe),
                _ => Gate::Probe,
            },
        }
    }

    /// Whether strikes from `endpoints` different endpoints in one window trip a host.
    pub fn host_trips(&self, endpoints: usize) -> bool {
        self.host_endpoints > 0 && endpoints >= self.host_endpoints as usize
    }

    /// The host (not answering for the `opens`-th time in a row) until then: the endpoint
    /// breaker's cooldown, spread ±20% by `draw`.
    pub fn host_open(&self, opens: u32, draw: f64, now: DateTime<Utc>) -> HostCircuit {
        let opens = opens.max(1);
        let cooldown = crate::delivery::backoff::step(opens - 1, self.cooldown, self.max_cooldown)
            .mul_f64(0.8 + 0.4 * draw.clamp(0.0, 1.0));
        HostCircuit {
            open_until: now + TimeDelta::from_std(cooldown).unwrap_or(TimeDelta::MAX / 2),
            opens,
            probe_until: None,
        }
    }

    /// The window of strikes `now` falls in (its number): strikes count within one.
    pub fn host_window_of(&self, now: DateTime<Utc>) -> i64 {
        let window = self.host_window.as_millis().max(1) as i64;
        now.timestamp_millis().div_euclid(window)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-05T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_host_is_its_name_and_port() {
        assert_eq!(
            host_of("https://Hooks.Example.com/a/b?c").as_deref(),
            Some("hooks.example.com:443")
        );
        assert_eq!(
            host_of("http://127.0.0.1:8080/x").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            host_of("http://[::1]/x").as_deref(),
            Some("[::1]:80"),
            "an IPv6 host keeps its brackets"
        );
        assert_eq!(host_of("not a url"), None);
    }

    #[test]
    fn the_host_gate() {
        let p = BreakerPolicy::default();
        let s = |n| TimeDelta::seconds(n);
        assert_eq!(p.host_gate(None, now()), Gate::Pass);
        let open = HostCircuit {
            open_until: now() + s(30),
            opens: 1,
            probe_until: None,
        };
        assert_eq!(p.host_gate(Some(&open), now()), Gate::Hold(now() + s(30)));
        let cooled = HostCircuit {
            open_until: now() - s(1),
            ..open
        };
        assert_eq!(p.host_gate(Some(&cooled), now()), Gate::Probe);
        let probing = HostCircuit {
            probe_until: Some(now() + s(5)),
            ..cooled
        };
        assert_eq!(p.host_gate(Some(&probing), now()), Gate::Hold(now() + s(5)));
        let lease_over = HostCircuit {
            probe_until: Some(now() - s(1)),
            ..cooled
        };
        assert_eq!(p.host_gate(Some(&lease_over), now()), Gate::Probe);
    }

    #[test]
    fn distinct_endpoints_trip_a_host_and_its_cooldown_doubles() {
        let p = BreakerPolicy::default();
        assert!(!p.host_trips(p.host_endpoints as usize - 1));
        assert!(p.host_trips(p.host_endpoints as usize));
        let off = BreakerPolicy {
            host_endpoints: 0,
            ..p.clone()
        };
        assert!(!off.host_trips(10_000), "0 turns the host breaker off");
        let first = p.host_open(1, 0.5, now());
        assert_eq!(first.open_until, now() + TimeDelta::seconds(30));
        let third = p.host_open(3, 0.5, now());
        assert_eq!(third.open_until, now() + TimeDelta::seconds(120));
        let capped = p.host_open(30, 0.5, now());
        assert_eq!(capped.open_until, now() + TimeDelta::seconds(600));
        assert!(p.host_open(1, 0.0, now()).open_until >= now() + TimeDelta::seconds(24));
        assert!(p.host_open(1, 0.999, now()).open_until <= now() + TimeDelta::seconds(36));
    }

    #[test]
    fn strikes_count_within_a_window() {
        let p = BreakerPolicy {
            host_window: Duration::from_secs(60),
            ..BreakerPolicy::default()
        };
        let w = p.host_window_of(now());
        assert_eq!(p.host_window_of(now() + TimeDelta::seconds(59)), w);
        assert_eq!(p.host_window_of(now() + TimeDelta::seconds(60)), w + 1);
    }
}
