//! `popup-sim`: the worst day of docs/SCALE.md, simulated in discrete time (one step a
//! second) with the project's own retry policy ([`shared::delivery::retry`]), circuit breaker and
//! concurrency cap ([`shared::delivery::breaker`]) and waiting rule ([`shared::runtime::config::WaitConfig`]),
//! not the AWS services: 10,000 deliveries a second from 10,000 venues (one endpoint each);
//! 3,000 of the endpoints are at one receiver (a CRM) that goes down for 10 hours, hanging
//! every request until the 15 s timeout. What it reports: SQS in-flight messages, retries
//! pending (delayed on the queue, or in the retries table), requests sent to the dead
//! receiver, the other venues' publish-to-attempt time, and when everything is delivered
//! after the receiver is back, and what the day costs beyond a normal one. The same day is
//! run three times: as built; with per-endpoint breakers alone (held deliveries re-queued,
//! as built until 2026-12-05); and as it was before any breaker (every waiting retry in
//! flight).
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
//! - The host breaker ([`shared::delivery::host_breaker`]): it trips once attempts at one
//!   sampled endpoint (a hundred real ones, past the 5 it takes) have hung `slow_after`, and
//!   every deliverer knows `host_refresh` later (the one that tripped it knows at once):
//!   attempts still waiting there stop then; from then on deliveries to its endpoints are
//!   held once in their endpoint's backlog, and one probe per host cooldown (with the full
//!   timeout) looks. Once one is answered, each endpoint's loop releases its backlog in pages
//!   (its breaker's threshold, doubling to 1,000 a second), as deliver's spare capacity
//!   allows.
//! - The day's cost beyond a normal day counts held deliveries, loop steps, failed attempts
//!   and the invocation time the dead receiver holds, in units each ([`HELD`], measured;
//!   [`LOOP_STEP`], [`FAILED`], derived from the write path), at `popup-bench`'s prices,
//!   against a normal day at `make bench`'s fan-out 1 cost.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use shared::delivery::breaker::{BreakerPolicy, Change, Circuit, Gate};
use shared::delivery::retry::{Decision, Outcome, RetryPolicy};

/// The prices of `popup-bench`'s cost model.
#[allow(dead_code)]
#[path = "cost.rs"]
mod cost;

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
    /// With the host breaker and backlog loops (`false`: per-endpoint breakers only, held
    /// deliveries re-queued, as built until 2026-12-05).
    host_breaker: bool,
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
            host_breaker: true,
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
    /// Attempts under way: (second they end, how many, failed?, one of them the probe?,
    /// second they started).
    running: VecDeque<(u64, f64, bool, bool, u64)>,
    /// Deliveries held (recorded once) waiting for the endpoint's backlog loop.
    backlog: f64,
    /// The loop's last page.
    page: f64,
}

/// The receiver's host breaker (as built): when it tripped, when deliverers know, its
/// cooldown, a probe under way (second it ends, answered?), and when it answered again.
#[derive(Default, Debug)]
struct Host {
    known_at: Option<u64>,
    open_until: u64,
    opens: u32,
    probe: Option<(u64, bool)>,
    closed_at: Option<u64>,
}

impl Host {
    fn listed(&self, t: u64) -> bool {
        self.known_at.is_some_and(|k| k <= t) && self.closed_at.is_none()
    }
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
    /// The other venues' worst publish-to-attempt in the outage's first minute (s).
    worst_first_minute: f64,
    /// Deliveries held (recorded once, waiting in their endpoint's backlog).
    held_once: f64,
    /// Steps of backlog loops (a task on the queue each).
    loop_steps: f64,
    /// Attempts at the dead receiver, failed (each recorded with its retry).
    failed_attempts: f64,
    /// Invocation-seconds held by attempts at the dead receiver.
    dead_invocation_secs: f64,
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
            backlog: 0.0,
            page: 0.0,
        })
        .collect();
    let mut host = Host::default();
    let host_breaker = day.built && day.host_breaker && breaker.host_endpoints > 0;
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
        if host_breaker {
            step_host(
                &mut host,
                &mut endpoints,
                &breaker,
                day,
                t,
                &mut draws,
                &mut f,
            );
        }
        let listed = host.listed(t);
        for ep in &mut endpoints {
            // Attempts that end now tell the breaker what happened.
            while ep.running.front().is_some_and(|r| r.0 <= t) {
                let (_, n, failed, probed, _) = ep.running.pop_front().unwrap_or_default();
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
            if host_breaker && !listed && ep.backlog > 0.0 {
                release(ep, &breaker, (t, now), scale, &mut f);
            }
            let mut due: Vec<Cohort> = ep.due.remove(&t).unwrap_or_default();
            if listed {
                // The host is not answering: held once, in the endpoint's backlog.
                let n: f64 = due.drain(..).map(|c| c.count).sum();
                ep.backlog += n;
                f.held_once += n * scale;
            }
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
                    Gate::Hold(_) if host_breaker => {
                        ep.backlog += count;
                        f.held_once += count * scale;
                        continue;
                    }
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
                    ep.running.push_back((t, admitted, false, probed, t));
                    continue;
                }
                f.requests_to_dead += admitted * scale;
                f.failed_attempts += admitted * scale;
                let ends = t + day.timeout_secs;
                ep.running.push_back((ends, admitted, true, probed, t));
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
                pending += ep.backlog;
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
        f.dead_invocation_secs += busy_dead;
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
        // Those still waiting count too (none served in a second is not a fast second).
        if let Some(front) = healthy_queue.front() {
            worst_now = worst_now.max(t - front.0 + 1);
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
        if down && t < day.outage_start + 60 {
            f.worst_first_minute = f.worst_first_minute.max(worst_now as f64);
        }
        if count_now && t >= day.outage_start + day.outage_secs && f.caught_up_after.is_none() {
            // Caught up: nothing of the receiver's is waiting but what is due this second.
            let waiting: f64 = endpoints
                .iter()
                .flat_map(|ep| ep.due.range(t + 1..).flat_map(|(_, c)| c.iter()))
                .map(|c| c.count)
                .sum::<f64>()
                + endpoints.iter().map(|ep| ep.backlog).sum::<f64>();
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

/// The host breaker's second `t`: a strike trips it once attempts at a sampled endpoint
/// (a hundred real ones, past the 5 it takes) have hung `slow_after`; deliverers know a
/// second later, and their attempts still waiting there stop; then one probe per cooldown
/// (doubling), with the full timeout, until one is answered.
fn step_host(
    host: &mut Host,
    endpoints: &mut [Endpoint],
    breaker: &BreakerPolicy,
    day: &Day,
    t: u64,
    draws: &mut Draws,
    f: &mut Figures,
) {
    let slow = breaker.slow_after.as_secs();
    let refresh = breaker.host_refresh.as_secs().max(1);
    if host.known_at.is_none() {
        let struck = endpoints
            .iter()
            .any(|ep| ep.running.iter().any(|r| r.2 && r.4 + slow <= t));
        if struck {
            host.known_at = Some(t + refresh);
        }
        return;
    }
    if host.known_at == Some(t) {
        // Known everywhere: the attempts still waiting there stop now.
        for ep in endpoints.iter_mut() {
            for r in ep.running.iter_mut().filter(|r| r.2 && r.0 > t) {
                r.0 = t;
            }
            ep.running.make_contiguous().sort_by_key(|r| r.0);
        }
        host.opens = 1;
        let open = breaker.host_open(1, draws.next(), at(t));
        host.open_until = t + secs_until(t, open.open_until);
        f.loop_steps += day.shared_endpoints;
        return;
    }
    if host.closed_at.is_some() {
        return;
    }
    match host.probe {
        Some((ends, answered)) if ends <= t => {
            host.probe = None;
            if answered {
                host.closed_at = Some(t);
            } else {
                host.opens += 1;
                let open = breaker.host_open(host.opens, draws.next(), at(t));
                host.open_until = t + secs_until(t, open.open_until);
                // Each backlog loop waits again, a step each.
                f.loop_steps += day.shared_endpoints;
            }
        }
        None if t >= host.open_until => {
            let down = day.down(t);
            if down {
                f.requests_to_dead += 1.0;
                f.failed_attempts += 1.0;
            }
            let ends = if down { t + day.timeout_secs } else { t + 1 };
            host.probe = Some((ends, !down));
        }
        _ => {}
    }
}

/// An endpoint's backlog loop at second `t` (its host answering): by its own circuit, the
/// probe, or a page (the breaker's threshold, doubling up to 1,000 a second); the released
/// deliveries are due next second.
fn release(
    ep: &mut Endpoint,
    breaker: &BreakerPolicy,
    (t, now): (u64, DateTime<Utc>),
    scale: f64,
    f: &mut Figures,
) {
    let size = match breaker.gate(&ep.circuit, now) {
        Gate::Hold(_) => return,
        Gate::Probe => 1.0,
        Gate::Pass => {
            if ep.page == 0.0 {
                breaker.threshold as f64
            } else {
                (ep.page * 2.0).min(1_000.0)
            }
        }
    };
    let n = size.min(ep.backlog);
    ep.backlog -= n;
    ep.page = size;
    f.loop_steps += scale;
    ep.due.entry(t + 1).or_default().push(Cohort {
        attempts: 0,
        held: 1,
        count: n,
    });
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
    let runs = [
        ("as built (host breaker, endpoint breakers and cap, backlog loops, no retry in flight):", true, true),
        ("per-endpoint breakers only (held deliveries re-queued; as built until 2026-12-05):", true, false),
        ("before (no breaker, every waiting retry in flight):", false, false),
    ];
    for (title, built, host_breaker) in runs {
        let f = run(&Day {
            built,
            host_breaker,
            ..day.clone()
        });
        println!();
        println!("{title}");
        println!("  peak SQS in-flight messages: {:.0}", f.peak_in_flight);
        match f.stalled_at {
            Some(s) => println!(
                "  in flight passes 120,000 {s} s into the outage: receives get nothing, every venue stalls"
            ),
            None => println!("  in flight stays under 120,000"),
        }
        if built {
            println!(
                "  peak deliveries pending: {:.0} ({:.0} on the queue, {:.0} in the retries table, the rest held in backlogs); peak retries-table writes {:.0}/s",
                f.peak_pending, f.peak_delayed, f.peak_in_table, f.peak_table_writes_per_sec
            );
        } else {
            println!(
                "  peak retries pending: {:.0}, all in flight",
                f.peak_pending
            );
        }
        println!(
            "  requests sent to the dead receiver: {:.0}; holds re-queued unattempted: {:.0}; held once in backlogs: {:.0}",
            f.requests_to_dead, f.held_passes, f.held_once
        );
        println!(
            "  other venues' publish-to-attempt: worst {:.1} s in the outage's first minute, {:.1} s during the outage, p99 over the day {:.1} s",
            f.worst_first_minute, f.worst_other_latency, f.p99_other_latency
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
        if built && host_breaker {
            let c = day_cost(&day, &f);
            println!(
                "  the day's cost beyond a normal day: ${:.0} (held ${:.0}, backlog loops ${:.0}, failed attempts ${:.0}, invocations held by the dead receiver ${:.2}): {:.1}% of a normal day (${:.0})",
                c.extra(), c.held, c.loops, c.failed, c.invocations, 100.0 * c.extra() / c.normal, c.normal
            );
        }
    }
}

/// Units (write, read, SQS requests) of the day's extra work, each.
///
/// A held delivery alone at its endpoint in its ingest batch (as on this day: one event a
/// second per venue), beyond a normal delivery: measured by `popup-bench --held-alone`
/// (2026-12-05: 20 held, each alone; its pending item and `by_status` entry written when
/// held, both again when it is released and delivered). `make bench` measures 0.47, 0.79,
/// 0.25 for deliveries that came ten at a time, whose held members share one item.
const HELD: [f64; 3] = [2.30, 0.92, 0.45];
/// A backlog loop's step: its task sent, received, deleted; its item claimed and finished;
/// the endpoint's and the loop's items read.
const LOOP_STEP: [f64; 3] = [2.0, 2.0, 3.0];
/// A failed attempt: its delivery's item with the attempt and the retry, and its `by_status`
/// entry; its retry through the queue.
const FAILED: [f64; 3] = [3.0, 0.0, 3.0];
/// A normal day's delivery, at fan-out 1 as on this day, logs included: dollars per
/// million (`make bench`, 2026-12-05, docs/PERFORMANCE.md).
const NORMAL_PER_MILLION: f64 = 1.172;
/// Deliver's memory (GB), as the template sets it.
const DELIVER_GB: f64 = 0.25;

struct DayCost {
    held: f64,
    loops: f64,
    failed: f64,
    invocations: f64,
    normal: f64,
}

impl DayCost {
    fn extra(&self) -> f64 {
        self.held + self.loops + self.failed + self.invocations
    }
}

fn day_cost(day: &Day, f: &Figures) -> DayCost {
    let p = &cost::PRICES;
    let dollars = |[w, r, q]: [f64; 3], n: f64| {
        n * (w * p.ddb_write_unit + r * p.ddb_read_unit + q * p.sqs_request)
    };
    DayCost {
        held: dollars(HELD, f.held_once),
        loops: dollars(LOOP_STEP, f.loop_steps),
        failed: dollars(FAILED, f.failed_attempts),
        invocations: f.dead_invocation_secs * DELIVER_GB * p.lambda_gb_second,
        normal: day.deliveries_per_sec * 86_400.0 / 1e6 * NORMAL_PER_MILLION,
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
        // The host breaker: the other venues wait 5 s at most in the outage's first minute
        // (34 s with per-endpoint breakers alone), and the dead receiver gets the first
        // seconds' attempts and probes.
        assert!(built.worst_first_minute <= 5.0, "{built:?}");
        assert!(built.requests_to_dead < 10_000.0, "{built:?}");
        let endpoint_only = run(&Day {
            host_breaker: false,
            ..day.clone()
        });
        assert!(endpoint_only.worst_first_minute > 20.0, "{endpoint_only:?}");
        assert!(
            endpoint_only.requests_to_dead > 2.0 * built.requests_to_dead,
            "{endpoint_only:?} {built:?}"
        );
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
