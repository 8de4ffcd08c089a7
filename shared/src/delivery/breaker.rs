//! The circuit breaker of an endpoint: after `threshold` failed attempts in a row, or when at
//! least `rate_percent` of at least `rate_min_attempts` attempts failed within `rate_window`
//! (a flaky endpoint whose failures never come in a row), its circuit opens, and its deliveries wait without being attempted (no request, no write: the job is
//! queued again for later) until the cooldown is over. Then one delivery at a time (a probe,
//! under a lease on the endpoint's item) finds out whether the receiver is back: a success
//! closes the circuit, a failure opens it again for twice as long (up to `max_cooldown`).
//!
//! A slow endpoint also gets a cap on its concurrent attempts: once an attempt has run for
//! `slow_after`, the endpoint is marked slow for `slow_for`, and while it is, each attempt
//! first takes one of `max_concurrent` lease slots (an item of the endpoint's own history
//! partition: two one-unit writes an attempt, paid by slow endpoints only; a fast endpoint's
//! attempts cost nothing extra). Deliveries that find every slot taken wait, unattempted,
//! about an attempt's time ([`BreakerPolicy::cap_wait`]) and look again.
//!
//! The state lives on the endpoint's item, so every deliver instance shares it, and it is
//! read with the endpoint at no extra cost. A pure function of (state, now) decides, so it is
//! tested as a table and the scale simulation runs the same code.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::model::domain::Endpoint;

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerPolicy {
    /// Failed attempts in a row that open the circuit.
    pub threshold: u32,
    /// The first cooldown; doubles each time a probe fails.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// How long a probe holds its lease (the request timeout and a margin): a probe whose
    /// deliverer died frees the endpoint after this.
    pub probe_lease: Duration,
    /// The longest a held delivery waits before it looks again (its waits grow with each
    /// hold, so a long outage costs few re-queues). At most SQS's 15-minute delay, so held
    /// deliveries wait on the queue, not in the retries table, and come back within 15
    /// minutes of the circuit closing.
    pub max_hold: Duration,
    /// Concurrent attempts at most at a slow endpoint.
    pub max_concurrent: u32,
    /// An attempt running this long marks its endpoint slow…
    pub slow_after: Duration,
    /// …for this long (renewed while attempts stay slow).
    pub slow_for: Duration,
    /// The failure rate that opens the circuit (a percentage of the attempts in the window)…
    pub rate_percent: u32,
    /// …once the window has this many attempts…
    pub rate_min_attempts: u32,
    /// …within this long of its first failure.
    pub rate_window: Duration,
    /// Different endpoints whose attempts hang (or cannot connect) within one
    /// `host_window` that put their host on the not-answering list
    /// ([`crate::delivery::host_breaker`]); 0: no host breaker.
    pub host_endpoints: u32,
    pub host_window: Duration,
    /// How old the not-answering list a deliverer goes by may be.
    pub host_refresh: Duration,
}

impl Default for BreakerPolicy {
    /// 5 failures in a row, or half of at least 20 attempts in 5 minutes; 30 s, doubling up to
    /// 10 min; holds up to 15 min; 10 attempts at once at an endpoint whose attempts take more
    /// than 2 s; a host whose attempts hang at 5 different endpoints within a minute is not
    /// answering (the list of such hosts read at most once a second).
    fn default() -> Self {
        Self {
            threshold: 5,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(600),
            probe_lease: Duration::from_secs(20),
            max_hold: Duration::from_secs(900),
            max_concurrent: 10,
            slow_after: Duration::from_secs(2),
            slow_for: Duration::from_secs(300),
            rate_percent: 50,
            rate_min_attempts: 20,
            rate_window: Duration::from_secs(300),
            host_endpoints: 5,
            host_window: Duration::from_secs(60),
            host_refresh: Duration::from_secs(1),
        }
    }
}

/// The circuit of an endpoint as stored on its item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Circuit {
    pub failures_in_row: u32,
    pub open_until: Option<DateTime<Utc>>,
    /// How many times in a row it opened (the cooldown doubles with each).
    pub opens: u32,
    pub probe_until: Option<DateTime<Utc>>,
    /// The endpoint's failure clock is running (`failing_since`): a success stops it, with
    /// the same write that closes the circuit.
    pub failing: bool,
    /// Attempts and failures counted for the failure rate.
    pub window: FailureWindow,
}

/// The failure-rate window on the endpoint's item: attempts and failures since `since`. It
/// starts at a batch with a failure and counts every attempt until `rate_window` has passed;
/// an endpoint without failures has none, so counting costs it no write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailureWindow {
    pub since: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub failures: u32,
}

/// What a batch writes of the window, with its [`Change`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowWrite {
    Keep,
    /// A new window from this batch.
    Start {
        since: DateTime<Utc>,
        attempts: u32,
        failures: u32,
    },
    /// This batch's attempts added to the running window.
    Add {
        attempts: u32,
        failures: u32,
    },
    /// No window (the circuit opened, or closed after being open: a fresh count after it).
    Clear,
}

impl Circuit {
    pub fn of(endpoint: &Endpoint) -> Self {
        Self {
            failures_in_row: endpoint.failures_in_row,
            open_until: endpoint.circuit_open_until,
            opens: endpoint.circuit_opens,
            probe_until: endpoint.probe_until,
            failing: endpoint.failing_since.is_some(),
            window: FailureWindow {
                since: endpoint.failure_window_since,
                attempts: endpoint.failure_window_attempts,
                failures: endpoint.failure_window_failures,
            },
        }
    }

    /// `closed`, `open` (waiting out its cooldown) or `half_open` (a probe may go).
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        match self.open_until {
            None => "closed",
            Some(until) if now < until => "open",
            Some(_) => "half_open",
        }
    }
}

/// What a delivery to the endpoint may do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// The circuit is closed: attempt.
    Pass,
    /// The cooldown is over: attempt if the probe lease is won, else hold.
    Probe,
    /// Wait; the circuit may let deliveries through from then on.
    Hold(DateTime<Utc>),
}

/// What the store should write after a batch of attempts to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed that is worth a write.
    None,
    /// Back to closed: failures, cooldown and probe cleared.
    Close,
    /// `n` more failures in a row, circuit still closed; the failure clock starts if it is
    /// not running.
    Count(u32),
    /// `failures` more in a row, and the circuit opens until then (`opens` times in a row).
    Open {
        until: DateTime<Utc>,
        opens: u32,
        failures: u32,
    },
}

impl BreakerPolicy {
    pub fn gate(&self, circuit: &Circuit, now: DateTime<Utc>) -> Gate {
        match circuit.open_until {
            None => Gate::Pass,
            Some(until) if now < until => Gate::Hold(until),
            Some(_) => match circuit.probe_until {
                Some(probe) if now < probe => Gate::Hold(probe),
                _ => Gate::Probe,
            },
        }
    }

    fn cooldown(&self, opens: u32) -> Duration {
        crate::delivery::backoff::step(opens.saturating_sub(1), self.cooldown, self.max_cooldown)
    }

    /// After attempts to one endpoint: `successes` and `failures` of them (a failure is any
    /// attempt that did not succeed, but for those no receiver could change: a template
    /// or secret error), `last_succeeded` whether the last one did; `probed` whether one was
    /// the probe. `draw` (uniform in [0, 1)) spreads the cooldown ±20%, so that endpoints
    /// at one receiver that went down together do not all probe at once.
    pub fn after(
        &self,
        circuit: &Circuit,
        (successes, failures, last_succeeded): (u32, u32, bool),
        (probed, draw): (bool, f64),
        now: DateTime<Utc>,
    ) -> Change {
        if successes + failures == 0 {
            return Change::None;
        }
        if last_succeeded || (successes > 0 && failures == 0) {
            let dirty = circuit.failures_in_row > 0
                || circuit.open_until.is_some()
                || circuit.probe_until.is_some()
                || circuit.failing;
            return if dirty { Change::Close } else { Change::None };
        }
        let in_row = circuit.failures_in_row.saturating_add(failures);
        if probed || (circuit.open_until.is_none() && in_row >= self.threshold) {
            return self.open(circuit, failures, draw, now);
        }
        if circuit.open_until.is_some() {
            // Open already (attempts begun before it opened): nothing to add, but the
            // failure clock, if it is not running.
            return if circuit.failing {
                Change::None
            } else {
                Change::Count(0)
            };
        }
        Change::Count(failures)
    }

    /// Opens the circuit (again): for the cooldown of its `opens`-th opening, spread ±20% by
    /// `draw`.
    fn open(&self, circuit: &Circuit, failures: u32, draw: f64, now: DateTime<Utc>) -> Change {
        let opens = circuit.opens + 1;
        let cooldown = self
            .cooldown(opens)
            .mul_f64(0.8 + 0.4 * draw.clamp(0.0, 1.0));
        let until = now + TimeDelta::from_std(cooldown).unwrap_or(TimeDelta::MAX / 2);
        Change::Open {
            until,
            opens,
            failures,
        }
    }

    /// As [`BreakerPolicy::after`], with the failure rate: the change to write and what to
    /// write of the window. A closed circuit whose window reaches `rate_percent` failed of at
    /// least `rate_min_attempts` opens, whatever came last.
    pub fn after_with_rate(
        &self,
        circuit: &Circuit,
        (successes, failures, last_succeeded): (u32, u32, bool),
        (probed, draw): (bool, f64),
        now: DateTime<Utc>,
    ) -> (Change, WindowWrite) {
        let change = self.after(
            circuit,
            (successes, failures, last_succeeded),
            (probed, draw),
            now,
        );
        let window = &circuit.window;
        let attempts = successes + failures;
        let running = window
            .since
            .is_some_and(|since| (now - since).to_std().unwrap_or_default() < self.rate_window);
        let (write, counted, failed) = if attempts == 0 {
            (WindowWrite::Keep, 0, 0)
        } else if running {
            (
                WindowWrite::Add { attempts, failures },
                window.attempts.saturating_add(attempts),
                window.failures.saturating_add(failures),
            )
        } else if failures > 0 {
            (
                WindowWrite::Start {
                    since: now,
                    attempts,
                    failures,
                },
                attempts,
                failures,
            )
        } else {
            (WindowWrite::Keep, 0, 0)
        };
        match change {
            Change::Open { .. } => (change, WindowWrite::Clear),
            Change::Close if circuit.open_until.is_some() => (change, WindowWrite::Clear),
            _ if circuit.open_until.is_none()
                && counted >= self.rate_min_attempts
                && u64::from(failed) * 100 >= u64::from(self.rate_percent) * u64::from(counted) =>
            {
                (self.open(circuit, failures, draw, now), WindowWrite::Clear)
            }
            _ => (change, write),
        }
    }

    /// How long a delivery held for the `held`-th time waits: until the circuit may let it
    /// through, or longer the more often it was held (at most `max_hold`), spread by `draw`
    /// (uniform in [0, 1)) over a tenth so that held deliveries do not all come back at once.
    pub fn hold_wait(
        &self,
        until: DateTime<Utc>,
        held: u32,
        now: DateTime<Utc>,
        draw: f64,
    ) -> Duration {
        let to_open = (until - now).to_std().unwrap_or_default();
        let grown = crate::delivery::backoff::step(held, self.cooldown, self.max_hold);
        let wait = to_open.max(grown).max(Duration::from_secs(1));
        let spread = wait.mul_f64(0.1 * draw.clamp(0.0, 1.0));
        // Never past the longest hold (unless the circuit opens later than that): at the
        // cap, the spread goes below it.
        let cap = self.max_hold.max(to_open);
        if wait + spread <= cap {
            wait + spread
        } else {
            cap - cap
                .mul_f64(0.1 * draw.clamp(0.0, 1.0))
                .min(cap - to_open.min(cap))
        }
    }
}

impl BreakerPolicy {
    /// How long a delivery that found every lease slot of a slow endpoint taken waits: about
    /// one attempt there (`slow_after`), doubling with each hold up to four times that, spread
    /// by `draw` (uniform in [0, 1)) over half as much again. Slots free as attempts end, so
    /// the waiting deliveries look again within seconds (not the circuit's cooldowns, which
    /// left a slow endpoint's backlog waiting minutes), and a backlog of thousands looks a few
    /// hundred times a second at most, on the endpoint's own key.
    pub fn cap_wait(&self, held: u32, draw: f64) -> Duration {
        let step = crate::delivery::backoff::step(held, self.slow_after, self.slow_after * 4);
        step + step.mul_f64(0.5 * draw.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_held_at_the_cap_looks_again_within_a_few_attempts_time() {
        let policy = BreakerPolicy::default();
        let a = policy.slow_after;
        assert_eq!(policy.cap_wait(0, 0.0), a);
        assert_eq!(policy.cap_wait(1, 0.0), a * 2);
        assert_eq!(policy.cap_wait(0, 0.999), a.mul_f64(1.4995));
        for held in [3, 10, 1000] {
            assert_eq!(policy.cap_wait(held, 0.0), a * 4);
            assert!(policy.cap_wait(held, 0.999) < a * 6);
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(s: i64) -> TimeDelta {
        TimeDelta::seconds(s)
    }

    #[test]
    fn the_gate() {
        let p = BreakerPolicy::default();
        let closed = Circuit::default();
        assert_eq!(p.gate(&closed, now()), Gate::Pass);
        let open = Circuit {
            open_until: Some(now() + secs(10)),
            ..closed.clone()
        };
        assert_eq!(p.gate(&open, now()), Gate::Hold(now() + secs(10)));
        assert_eq!(open.state(now()), "open");
        let cooled = Circuit {
            open_until: Some(now() - secs(1)),
            ..closed.clone()
        };
        assert_eq!(p.gate(&cooled, now()), Gate::Probe);
        assert_eq!(cooled.state(now()), "half_open");
        let probing = Circuit {
            probe_until: Some(now() + secs(5)),
            ..cooled
        };
        assert_eq!(p.gate(&probing, now()), Gate::Hold(now() + secs(5)));
    }

    #[test]
    fn failures_open_and_a_success_closes() {
        let p = BreakerPolicy::default();
        let mut c = Circuit::default();
        assert_eq!(
            p.after(&c, (0, 0, false), (false, 0.5), now()),
            Change::None
        );
        assert_eq!(p.after(&c, (1, 0, true), (false, 0.5), now()), Change::None);
        assert_eq!(
            p.after(&c, (0, 3, false), (false, 0.5), now()),
            Change::Count(3)
        );
        c.failures_in_row = 3;
        assert_eq!(
            p.after(&c, (0, 2, false), (false, 0.5), now()),
            Change::Open {
                until: now() + secs(30),
                opens: 1,
                failures: 2
            }
        );
        // A success last closes it, whatever failed before it in the batch.
        assert_eq!(
            p.after(&c, (1, 4, true), (false, 0.5), now()),
            Change::Close
        );
        // A failed probe opens it again for twice as long, up to the maximum.
        let open = Circuit {
            failures_in_row: 5,
            open_until: Some(now() - secs(1)),
            opens: 1,
            probe_until: Some(now() + secs(20)),
            failing: true,
            window: FailureWindow::default(),
        };
        assert_eq!(
            p.after(&open, (0, 1, false), (true, 0.5), now()),
            Change::Open {
                until: now() + secs(60),
                opens: 2,
                failures: 1
            }
        );
        let many = Circuit {
            opens: 30,
            ..open.clone()
        };
        assert_eq!(
            p.after(&many, (0, 1, false), (true, 0.5), now()),
            Change::Open {
                until: now() + secs(600),
                opens: 31,
                failures: 1
            }
        );
        // Attempts that were under way when it opened add nothing…
        assert_eq!(
            p.after(&open, (0, 3, false), (false, 0.5), now()),
            Change::None
        );
        // …but start the failure clock if it is not running (the venue re-enabled it).
        let unclocked = Circuit {
            failing: false,
            ..open.clone()
        };
        assert_eq!(
            p.after(&unclocked, (0, 3, false), (false, 0.5), now()),
            Change::Count(0)
        );
        // A success stops a running failure clock even with the circuit closed.
        let failing = Circuit {
            failing: true,
            ..Circuit::default()
        };
        assert_eq!(
            p.after(&failing, (1, 0, true), (false, 0.5), now()),
            Change::Close
        );
        assert_eq!(
            p.after(&open, (1, 0, true), (true, 0.5), now()),
            Change::Close
        );
    }

    #[test]
    fn a_failure_rate_over_the_window_opens_a_closed_circuit() {
        let p = BreakerPolicy {
            threshold: 1000,
            ..BreakerPolicy::default()
        };
        let at = |s: i64| now() + secs(s);
        // An endpoint without failures has no window: nothing to write.
        let healthy = Circuit::default();
        assert_eq!(
            p.after_with_rate(&healthy, (10, 0, true), (false, 0.5), now()),
            (Change::None, WindowWrite::Keep)
        );
        // A failure starts the window (and counts the batch's successes with it).
        assert_eq!(
            p.after_with_rate(&healthy, (2, 1, true), (false, 0.5), now())
                .1,
            WindowWrite::Start {
                since: now(),
                attempts: 3,
                failures: 1
            }
        );
        // While it runs, every attempt counts, successes too.
        let windowed = |attempts, failures| Circuit {
            window: FailureWindow {
                since: Some(now()),
                attempts,
                failures,
            },
            ..Circuit::default()
        };
        assert_eq!(
            p.after_with_rate(&windowed(3, 1), (4, 0, true), (false, 0.5), at(60)),
            (
                Change::None,
                WindowWrite::Add {
                    attempts: 4,
                    failures: 0
                }
            )
        );
        // One in three failing: 7 of 21, under half; the circuit stays closed.
        assert_eq!(
            p.after_with_rate(&windowed(18, 6), (2, 1, true), (false, 0.5), at(60)),
            (
                Change::None,
                WindowWrite::Add {
                    attempts: 3,
                    failures: 1
                }
            )
        );
        // Three in four failing: 15 of 20, the last attempt a success: it opens all the same.
        let (change, window) =
            p.after_with_rate(&windowed(16, 12), (1, 3, true), (false, 0.5), at(60));
        assert!(
            matches!(
                change,
                Change::Open {
                    opens: 1,
                    failures: 3,
                    ..
                }
            ),
            "{change:?}"
        );
        assert_eq!(window, WindowWrite::Clear);
        // Half of fewer than 20: not yet.
        let (change, _) = p.after_with_rate(&windowed(10, 9), (0, 1, false), (false, 0.5), at(60));
        assert_eq!(change, Change::Count(1));
        // A window older than `rate_window` is not added to: a failure starts a new one.
        let (change, window) =
            p.after_with_rate(&windowed(19, 19), (0, 1, false), (false, 0.5), at(301));
        assert_eq!(change, Change::Count(1));
        assert_eq!(
            window,
            WindowWrite::Start {
                since: at(301),
                attempts: 1,
                failures: 1
            }
        );
    }

    #[test]
    fn held_deliveries_wait_longer_each_time() {
        let p = BreakerPolicy::default();
        let until = now() + secs(10);
        assert_eq!(p.hold_wait(until, 0, now(), 0.0), Duration::from_secs(30));
        assert_eq!(p.hold_wait(until, 1, now(), 0.0), Duration::from_secs(60));
        assert_eq!(p.hold_wait(until, 20, now(), 0.0), Duration::from_secs(900));
        // At the cap the spread goes below it: never past SQS's 15-minute delay.
        assert_eq!(p.hold_wait(until, 20, now(), 0.5), Duration::from_secs(855));
        assert_eq!(p.hold_wait(until, 4, now(), 0.999).as_secs(), 527);
        let far = now() + secs(500);
        assert_eq!(p.hold_wait(far, 0, now(), 0.0), Duration::from_secs(500));
        assert_eq!(p.hold_wait(far, 0, now(), 0.999).as_secs(), 549);
    }
}
