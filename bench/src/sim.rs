//! `popup-sim`: the worst day of docs/SCALE.md, simulated in discrete time (one step a
//! second) with the project's own retry policy ([`shared::delivery::retry`]), circuit breaker and
//! concurrency cap ([`shared::delivery::breaker`]) and waiting rule ([`shared::runtime::config::WaitConfig`]),
//! not the AWS services: 10,000 deliveries a second from 10,000 venues (one endpoint each);
//! 3,000 of the endpoints are at one receiver (a CRM) that goes down for 10 hours, hanging
//! every request until the 15 s timeout. What it reports: SQS in-flight messages, retries
//! pending (delayed on the queue, or in the retries table), requests sent to the dead
//! receiver, the other venues' publish-to-attempt time, and when everything is delivered
//! after the receiver is back. The same day is run twice: as built, and as it was before
//! (no breaker, every waiting retry in flight) for comparison.
//!
//! ```sh
//! cargo run --release -p bench --bin popup-sim            # the day of SCALE.md
//! cargo run --release -p bench --bin popup-sim -- --quick # a smaller day, for `make test`
//! ```
//!
//! Model, and where it is pessimistic:
//! - The 3,000 endpoints at the receiver behave alike; `SAMPLE` of them are simulated one by
//!   one (their own circuit, jitter and retries) and scaled up.
//! - Deliver runs `concurrency` invocations of 10 jobs. A job at the dead receiver that is
//!   attempted holds its whole invocation for the 15 s timeout (as if each shared a batch
//!   with healthy jobs: the worst mix); healthy attempts take 0.3 s a batch; a job held by an
//!   open circuit costs nothing to speak of (no request).
//! - SQS fair queues serve the venues with little backlog first: healthy venues' jobs go
//!   before the receiver's backlog. Their publish-to-attempt time is the 1 s batching window
//!   plus the time to serve the healthy backlog ahead of them.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use shared::delivery::breaker::{BreakerPolicy, Change, Circuit, Gate};
use shared::delivery::retry::{Decision, Outcome, RetryPolicy};

/// SQS's in-flight limit per standard queue.
const IN_FLIGHT_LIMIT: f64 = 120_000.0;
const SAMPLE: usize = 30;

#[derive(Clone, Debug)]
struct Day {
    deliveries_per_sec: f64,
    venues: f64,
    shared_endpoints: f64,
    outage_start: u64,
    outage_secs: u64,
    /// Seconds simulated after the receiver is back, at most.
    after_secs: u64,
    concurrency: f64,
    timeout_secs: u64,
    healthy_batch_secs: f64,
    max_queue_delay: u64,
    /// As built (`true`), or before: no breaker, waits in flight.
    built: bool,
}

impl Day {
    fn worst() -> Self {
        Day {
            deliveries_per_sec: 10_000.0,
            venues: 10_000.0,
            shared_endpoints: 3_000.0,
            outage_start: 600,
            outage_secs: 10 * 3600,
            after_secs: 12 * 3600,
            concurrency: 1_000.0,
            timeout_secs: 15,
            healthy_batch_secs: 0.3,
            max_queue_delay: 900,
            built: true,
        }
    }

    fn quick() -> Self {
        Day {
            outage_secs: 1800,
            after_secs: 3 * 3600,
            ..Self::worst()
        }
    }

    fn down(&self, t: u64) -> bool {
        t >= self.outage_start && t < self.outage_start + self.outage_secs
    }
}

/// Deliveries of one endpoint due at the same second with the same history: attempts made,
/// times held.
#[derive(Clone, Copy, Debug)]
struct Cohort {
    attempts: u32,
    held: u32,
    count: f64,
}

/// One endpoint at the receiver.
struct Endpoint {
    circuit: Circuit,
    slow_until: Option<u64>,
    due: BTreeMap<u64, Vec<Cohort>>,
    /// Attempts under way: (second they end, how many, failed?, one of them the probe?).
    running: VecDeque<(u64, f64, bool, bool)>,
}

#[derive(Default, Debug)]
struct Figures {
    peak_in_flight: f64,
    stalled_at: Option<u64>,
    peak_pending: f64,
    peak_in_table: f64,
    peak_delayed: f64,
    requests_to_dead: f64,
    held_passes: f64,
    /// Per minute of the outage: the other venues' publish-to-attempt time (s).
    worst_other_latency: f64,
    p99_other_latency: f64,
    caught_up_after: Option<u64>,
    failed_for_good: f64,
    peak_table_writes_per_sec: f64,
}

/// A deterministic draw in [0, 1) (the jitter), so that runs repeat.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn at(t: u64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(t as i64 + 1_800_000_000)
}

fn secs_until(from: u64, to: DateTime<Utc>) -> u64 {
    ((to - at(from)).num_milliseconds().max(0) as u64).div_ceil(1000)
}

fn run(day: &Day) -> Figures {
    let retry = RetryPolicy::default();
    let breaker = if day.built {
        BreakerPolicy::default()
    } else {
        BreakerPolicy {
            threshold: u32::MAX,
            max_concurrent: u32::MAX,
            ..BreakerPolicy::default()
        }
    };
    let scale = day.shared_endpoints / SAMPLE as f64;
    let per_endpoint = day.deliveries_per_sec / day.venues;
    let healthy_rate = day.deliveries_per_sec * (1.0 - day.shared_endpoints / day.venues);
    let mut endpoints: Vec<Endpoint> = (0..SAMPLE)
        .map(|_| Endpoint {
            circuit: Circuit::default(),
            slow_until: None,
            due: BTreeMap::new(),
            running: VecDeque::new(),
        })
        .collect();
    let mut draws = Draws(7);
    let mut f = Figures::default();
    // The other venues' jobs waiting for deliver: (second published, how many); and how
    // many were served after how long (seconds, publish to attempt).
    let mut healthy_queue: VecDeque<(u64, f64)> = VecDeque::new();
    let mut healthy_backlog = 0.0f64;
    let mut served: BTreeMap<u64, f64> = BTreeMap::new();
    // What deliver can give the receiver's deliveries each second, once the other venues'
    // are served (fair queues serve those first): from the second before.
    let mut spare_per_endpoint = f64::INFINITY;
    let end = day.outage_start + day.outage_secs + day.after_secs;
    for t in 0..end {
        let now = at(t);
        let down = day.down(t);
        // The waiting deliveries are counted once a minute (counting is the costly part).
        let count_now = t % 60 == 0 || t + 1 == end;
        let (mut in_table, mut delayed, mut pending) = (0.0, 0.0, 0.0);
        let mut table_writes = 0.0;
        let mut attempts_running = 0.0;
        for ep in &mut endpoints {
            // Attempts that end now tell the breaker what happened.
            while ep.running.front().is_some_and(|r| r.0 <= t) {
                let (_, n, failed, probed) = ep.running.pop_front().unwrap_or_default();
                let counts = if failed {
                    (0, n.ceil() as u32, false)
                } else {
                    (n.ceil() as u32, 0, true)
                };
                match breaker.after(&ep.circuit, counts, (probed, draws.next()), now) {
                    Change::None => {}
                    Change::Close => ep.circuit = Circuit::default(),
                    Change::Count(k) => ep.circuit.failures_in_row += k,
                    Change::Open {
                        until,
                        opens,
                        failures,
                    } => {
                        ep.circuit.open_until = Some(until);
                        ep.circuit.opens = opens;
                        ep.circuit.failures_in_row += failures;
                        ep.circuit.probe_until = None;
                    }
                }
            }
            ep.due.entry(t).or_default().push(Cohort {
                attempts: 0,
                held: 0,
                count: per_endpoint,
            });
            let due: Vec<Cohort> = ep.due.remove(&t).unwrap_or_default();
            let in_flight_here: f64 = ep.running.iter().map(|r| r.1).sum();
            let mut free_slots = if ep.slow_until.is_some_and(|s| s > t) {
                (breaker.max_concurrent as f64 - in_flight_here).max(0.0)
            } else {
                f64::INFINITY
            };
            for cohort in due {
                let mut count = cohort.count;
                let mut probed = false;
                match breaker.gate(&ep.circuit, now) {
                    Gate::Pass => {}
                    Gate::Hold(until) => {
                        hold(
                            ep,
                            &breaker,
                            t,
                            until,
                            cohort,
                            count,
                            (&mut draws, &mut table_writes),
                        );
                        f.held_passes += count * scale;
                        continue;
                    }
                    Gate::Probe => {
                        // One of them probes; the others wait out the probe's lease.
                        let lease =
                            now + TimeDelta::from_std(breaker.probe_lease).unwrap_or_default();
                        ep.circuit.probe_until = Some(lease);
                        probed = true;
                        let rest = count - 1.0_f64.min(count);
                        if rest > 0.0 {
                            hold(
                                ep,
                                &breaker,
                                t,
                                lease,
                                cohort,
                                rest,
                                (&mut draws, &mut table_writes),
                            );
                            f.held_passes += rest * scale;
                        }
                        count = 1.0_f64.min(count);
                    }
                }
                // Deliver's spare capacity, once the receiver is back: the rest next second.
                if !down && count > spare_per_endpoint {
                    let rest = count - spare_per_endpoint;
                    ep.due.entry(t + 1).or_default().push(Cohort {
                        count: rest,
                        ..cohort
                    });
                    count = spare_per_endpoint;
                }
                // A slow endpoint's cap.
                let admitted = count.min(free_slots);
                if admitted < count {
                    let until = now + TimeDelta::from_std(breaker.slow_after).unwrap_or_default();
                    hold(
                        ep,
                        &breaker,
                        t,
                        until,
                        cohort,
                        count - admitted,
                        (&mut draws, &mut table_writes),
                    );
                    f.held_passes += (count - admitted) * scale;
                }
                free_slots -= admitted;
                if admitted <= 0.0 {
                    continue;
                }
                if !down {
                    ep.running.push_back((t, admitted, false, probed));
                    continue;
                }
                f.requests_to_dead += admitted * scale;
                let ends = t + day.timeout_secs;
                ep.running.push_back((ends, admitted, true, probed));
                if t + breaker.slow_after.as_secs() < ends {
                    ep.slow_until =
                        Some(t + breaker.slow_after.as_secs() + breaker.slow_for.as_secs());
                }
                // Each failed attempt is retried on the schedule (a timeout: overloaded).
                let n = cohort.attempts + 1;
                match retry.decide(
                    n,
                    &Outcome::Overloaded { retry_after: None },
                    at(ends),
                    draws.next(),
                ) {
                    Decision::RetryAt(when) => {
                        let wait = secs_until(ends, when);
                        if wait > day.max_queue_delay {
                            table_writes += admitted;
                        }
                        ep.due.entry(ends + wait.max(1)).or_default().push(Cohort {
                            attempts: n,
                            held: cohort.held,
                            count: admitted,
                        });
                    }
                    _ => f.failed_for_good += admitted * scale,
                }
            }
            attempts_running += ep.running.iter().filter(|r| r.2).map(|r| r.1).sum::<f64>();
            if count_now {
                for (due_at, cohorts) in &ep.due {
                    let n: f64 = cohorts.iter().map(|c| c.count).sum();
                    pending += n;
                    if due_at - t > day.max_queue_delay {
                        in_table += n;
                    } else {
                        delayed += n;
                    }
                }
            }
        }
        // Deliver's invocations: each attempt at the dead receiver holds one for the timeout.
        let busy_dead = (attempts_running * scale).min(day.concurrency);
        let free = day.concurrency - busy_dead;
        let service = free * 10.0 / day.healthy_batch_secs;
        healthy_queue.push_back((t, healthy_rate));
        healthy_backlog += healthy_rate;
        let mut capacity = service;
        let mut worst_now = 0u64;
        while capacity > 1e-9 {
            let Some(front) = healthy_queue.front_mut() else {
                break;
            };
            let n = front.1.min(capacity);
            // Published during second `front.0`, attempted during `t`, after the 1 s
            // batching window.
            let latency = t - front.0 + 1;
            *served.entry(latency).or_default() += n;
            worst_now = worst_now.max(latency);
            front.1 -= n;
            capacity -= n;
            healthy_backlog -= n;
            if front.1 <= 1e-9 {
                healthy_queue.pop_front();
            }
        }
        spare_per_endpoint = capacity.max(0.0) / day.shared_endpoints;
        let mut in_flight = busy_dead * 10.0 + (service - capacity) * day.healthy_batch_secs;
        if !day.built {
            // Before: every waiting retry was a message in flight.
            in_flight += pending * scale;
            if in_flight > IN_FLIGHT_LIMIT && f.stalled_at.is_none() {
                f.stalled_at = Some(t - day.outage_start);
            }
        }
        f.peak_in_flight = f.peak_in_flight.max(in_flight);
        if count_now {
            f.peak_pending = f.peak_pending.max(pending * scale);
            f.peak_in_table = f.peak_in_table.max(in_table * scale);
            f.peak_delayed = f.peak_delayed.max(delayed * scale);
        }
        f.peak_table_writes_per_sec = f.peak_table_writes_per_sec.max(table_writes * scale);
        f.worst_other_latency = f.worst_other_latency.max(worst_now as f64);
        if count_now && t >= day.outage_start + day.outage_secs && f.caught_up_after.is_none() {
            // Caught up: nothing of the receiver's is waiting but what is due this second.
            let waiting: f64 = endpoints
                .iter()
                .flat_map(|ep| ep.due.range(t + 1..).flat_map(|(_, c)| c.iter()))
                .map(|c| c.count)
                .sum();
            if waiting <= 1e-6 && healthy_backlog <= 1e-6 {
                f.caught_up_after = Some(t - day.outage_start - day.outage_secs);
                break;
            }
        }
    }
    let total: f64 = served.values().sum();
    let mut seen = 0.0;
    for (latency, n) in &served {
        seen += n;
        if seen >= 0.99 * total {
            f.p99_other_latency = *latency as f64;
            break;
        }
    }
    f
}

/// Puts `count` deliveries of `cohort` back, held, to look again after
/// [`BreakerPolicy::hold_wait`].
fn hold(
    ep: &mut Endpoint,
    breaker: &BreakerPolicy,
    t: u64,
    until: DateTime<Utc>,
    cohort: Cohort,
    count: f64,
    (draws, table_writes): (&mut Draws, &mut f64),
) {
    let wait: Duration = breaker.hold_wait(until, cohort.held, at(t), draws.next());
    let back = t + wait.as_secs().max(1);
    if wait.as_secs() > 900 {
        *table_writes += count;
    }
    let list = ep.due.entry(back).or_default();
    let held = cohort.held + 1;
    match list
        .iter_mut()
        .find(|c| c.attempts == cohort.attempts && c.held == held)
    {
        Some(c) => c.count += count,
        None => list.push(Cohort {
            attempts: cohort.attempts,
            held,
            count,
        }),
    }
}

fn hours(secs: u64) -> String {
    format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let day = if quick { Day::quick() } else { Day::worst() };
    println!(
        "{} deliveries/s from {} venues; {} endpoints at one receiver, down {} hanging every request until the {} s timeout; deliver concurrency {}",
        day.deliveries_per_sec, day.venues, day.shared_endpoints, hours(day.outage_secs), day.timeout_secs, day.concurrency
    );
    for built in [true, false] {
        let f = run(&Day {
            built,
            ..day.clone()
        });
        println!();
        println!(
            "{}",
            if built {
                "as built (breaker, cap, no retry in flight):"
            } else {
                "before (no breaker, every waiting retry in flight):"
            }
        );
        println!("  peak SQS in-flight messages: {:.0}", f.peak_in_flight);
        match f.stalled_at {
            Some(s) => println!(
                "  in flight passes 120,000 {s} s into the outage: receives get nothing, every venue stalls"
            ),
            None => println!("  in flight stays under 120,000"),
        }
        if built {
            println!(
                "  peak retries pending: {:.0} ({:.0} delayed on the queue, {:.0} in the retries table); peak retries-table writes {:.0}/s",
                f.peak_pending, f.peak_delayed, f.peak_in_table, f.peak_table_writes_per_sec
            );
        } else {
            println!(
                "  peak retries pending: {:.0}, all in flight",
                f.peak_pending
            );
        }
        println!(
            "  requests sent to the dead receiver: {:.0}; holds (re-queued unattempted): {:.0}",
            f.requests_to_dead, f.held_passes
        );
        println!(
            "  other venues' publish-to-attempt: worst {:.1} s during the outage, p99 over the day {:.1} s",
            f.worst_other_latency, f.p99_other_latency
        );
        match f.caught_up_after {
            Some(s) => println!(
                "  everything delivered {} after the receiver is back",
                hours(s)
            ),
            None => println!(
                "  not caught up within {} after the receiver is back",
                hours(day.after_secs)
            ),
        }
        println!("  deliveries failed for good: {:.0}", f.failed_for_good);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short outage: as built, nothing stalls and everything is delivered soon after; the
    /// design before stalls the queue within minutes.
    #[test]
    fn a_short_outage_as_built_and_before() {
        let day = Day {
            outage_secs: 600,
            after_secs: 2 * 3600,
            ..Day::worst()
        };
        let built = run(&day);
        assert!(built.peak_in_flight <= 10_000.0, "{built:?}");
        assert_eq!(built.stalled_at, None);
        assert!(built.caught_up_after.is_some(), "{built:?}");
        assert_eq!(built.failed_for_good, 0.0);
        let before = run(&Day {
            built: false,
            ..day
        });
        assert!(before.stalled_at.is_some_and(|s| s < 300), "{before:?}");
        assert!(
            before.requests_to_dead > 10.0 * built.requests_to_dead,
            "{before:?} {built:?}"
        );
    }
}
