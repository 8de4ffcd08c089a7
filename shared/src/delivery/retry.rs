//! The retry policy: a pure function of (attempt, outcome, now) that says what happens next.
//! No I/O, no clock, no randomness of its own (the jitter draw is an argument), so it is
//! tested as a table.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::delivery::http_client::{ErrorClass, Response};

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Waits after attempt 1, 2, …; one attempt more than entries in all.
    pub schedule: Vec<Duration>,
    /// ± this fraction of each wait, drawn per attempt.
    pub jitter: f64,
    /// The least wait after 429, 503 or a timeout: the receiver is overloaded.
    pub overload_wait: Duration,
    /// An endpoint failing without a success for this long is disabled.
    pub disable_after: Duration,
}

impl Default for RetryPolicy {
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; ±20%; 60 s after overload; disable after 5 days.
    fn default() -> Self {
        let mins = |m: u64| Duration::from_secs(m * 60);
        Self {
            schedule: vec![
                Duration::from_secs(5),
                mins(5),
                mins(30),
                mins(120),
                mins(300),
                mins(600),
                mins(600),
            ],
            jitter: 0.2,
            overload_wait: Duration::from_secs(60),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// What an attempt's response means for the policy.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Success,
    /// `410 Gone`: the receiver says the endpoint no longer exists.
    Gone,
    /// 429, 503 or a timeout; `retry_after` is the receiver's wish, if any.
    Overloaded {
        retry_after: Option<Duration>,
    },
    /// Any other failure; a 5xx may still carry `Retry-After`.
    Failed {
        retry_after: Option<Duration>,
    },
    /// Nothing a retry can change (the endpoint's template fails on this event).
    Permanent,
}

impl Outcome {
    pub fn of(response: &Response, now: DateTime<Utc>) -> Self {
        let retry_after = response
            .retry_after
            .as_deref()
            .and_then(|raw| parse_retry_after(raw, now));
        match (response.status_code, response.error.as_ref()) {
            (_, None) => Outcome::Success,
            (Some(410), _) => Outcome::Gone,
            (_, Some((ErrorClass::Template | ErrorClass::Secret, _))) => Outcome::Permanent,
            (Some(429 | 503), _) => Outcome::Overloaded { retry_after },
            (_, Some((ErrorClass::Timeout, _))) => Outcome::Overloaded { retry_after: None },
            _ => Outcome::Failed { retry_after },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// No more attempts: the delivery failed for good.
    GiveUp,
    /// Failed for good, and the endpoint is to be disabled.
    DisableEndpoint,
}

impl RetryPolicy {
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32 + 1
    }

    /// After scheduled attempt number `attempt` (1-based) ended in `outcome` at `now`.
    /// `draw` is uniform in [0, 1) and picks the jitter.
    pub fn decide(
        &self,
        attempt: u32,
        outcome: &Outcome,
        now: DateTime<Utc>,
        draw: f64,
    ) -> Decision {
        let retry_after = match outcome {
            Outcome::Success => return Decision::Delivered,
            Outcome::Gone => return Decision::DisableEndpoint,
            Outcome::Permanent => return Decision::GiveUp,
            Outcome::Overloaded { retry_after } | Outcome::Failed { retry_after } => *retry_after,
        };
        let Some(base) = self.schedule.get(attempt.saturating_sub(1) as usize) else {
            return Decision::GiveUp;
        };
        let factor = 1.0 + self.jitter * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        let mut wait = base.mul_f64(factor.max(0.0));
        if matches!(outcome, Outcome::Overloaded { .. }) {
            wait = wait.max(self.overload_wait);
        }
        if let Some(asked) = retry_after {
            // Honoured, but never sooner than planned nor later than twice the plan.
            wait = asked.clamp(wait, wait * 2);
        }
        let wait = TimeDelta::from_std(wait).unwrap_or(TimeDelta::MAX);
        Decision::RetryAt(
            now.checked_add_signed(wait)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// Is an endpoint that has been failing since `since` due to be disabled at `now`?
    pub fn should_disable(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        TimeDelta::from_std(self.disable_after).is_ok_and(|limit| now - since >= limit)
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(raw: &str, now: DateTime<Utc>) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(raw).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn wait(decision: Decision) -> Duration {
        match decision {
            Decision::RetryAt(at) => (at - now()).to_std().unwrap(),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    const MID: f64 = 0.5; // no jitter

    #[test]
    fn the_default_schedule_without_jitter() {
        let p = RetryPolicy::default();
        let failed = Outcome::Failed { retry_after: None };
        let expected = [5, 300, 1800, 7200, 18000, 36000, 36000];
        for (i, secs) in expected.iter().enumerate() {
            assert_eq!(
                wait(p.decide(i as u32 + 1, &failed, now(), MID)),
                Duration::from_secs(*secs)
            );
        }
        assert_eq!(p.max_attempts(), 8);
        assert_eq!(p.decide(8, &failed, now(), MID), Decision::GiveUp);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = RetryPolicy::default();
        let failed = Outcome::Failed { retry_after: None };
        assert_eq!(
            wait(p.decide(2, &failed, now(), 0.0)),
            Duration::from_secs(240)
        );
        assert_eq!(wait(p.decide(2, &failed, now(), 0.999_999)).as_secs(), 359);
        assert_eq!(
            wait(p.decide(2, &failed, now(), 0.25)),
            Duration::from_secs(270)
        );
    }

    #[test]
    fn overload_waits_at_least_a_minute() {
        let p = RetryPolicy::default();
        let overloaded = Outcome::Overloaded { retry_after: None };
        assert_eq!(
            wait(p.decide(1, &overloaded, now(), MID)),
            Duration::from_secs(60)
        );
        assert_eq!(
            wait(p.decide(2, &overloaded, now(), MID)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn retry_after_is_honoured_between_the_plan_and_twice_the_plan() {
        let p = RetryPolicy::default();
        let asked = |s| Outcome::Failed {
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(
            wait(p.decide(2, &asked(400), now(), MID)),
            Duration::from_secs(400)
        );
        assert_eq!(
            wait(p.decide(2, &asked(10), now(), MID)),
            Duration::from_secs(300)
        );
        assert_eq!(
            wait(p.decide(2, &asked(99_999), now(), MID)),
            Duration::from_secs(600)
        );
        let overloaded = Outcome::Overloaded {
            retry_after: Some(Duration::from_secs(90)),
        };
        assert_eq!(
            wait(p.decide(1, &overloaded, now(), MID)),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn success_gone_and_the_last_attempt() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(1, &Outcome::Success, now(), MID),
            Decision::Delivered
        );
        assert_eq!(
            p.decide(1, &Outcome::Gone, now(), MID),
            Decision::DisableEndpoint
        );
        assert_eq!(
            p.decide(8, &Outcome::Overloaded { retry_after: None }, now(), MID),
            Decision::GiveUp
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 10:02:00 GMT", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 09:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now()), None);
    }

    #[test]
    fn endpoints_are_disabled_after_five_days_of_failure() {
        let p = RetryPolicy::default();
        let since = now() - TimeDelta::days(5);
        assert!(p.should_disable(since, now()));
        assert!(!p.should_disable(since + TimeDelta::seconds(1), now()));
    }
}
