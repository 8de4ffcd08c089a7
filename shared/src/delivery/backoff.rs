//! Jittered exponential backoff ("full jitter": a random wait up to the exponential step),
//! for retries of our own (BatchGetItem's unprocessed keys, SendMessageBatch's failed entries,
//! jobs that failed because AWS did). The SDK's own retries are configured in
//! [`crate::storage::services`].

use std::time::Duration;

/// The exponential step of retry `round` (0 for the first retry): `base` × 2^round, at most
/// `cap`.
pub fn step(round: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(round.min(30)))
        .min(cap)
}

/// A random wait between half the step and the whole step: spread out, never near zero.
pub fn jittered(round: u32, base: Duration, cap: Duration) -> Duration {
    let step = step(round, base, cap);
    step.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// The longest a message waits after failing because AWS did.
pub const OUTAGE_CAP: Duration = Duration::from_secs(1800);

/// How long a message (a delivery job, an ingest event) that failed because AWS did waits
/// before it is received again: doubling with each receive from `base`, at most
/// [`OUTAGE_CAP`], jittered. With the template's base (10 s) the delivery queue's
/// `maxReceiveCount` (30) and the ingest queue's (20) outlast an outage of several hours
/// before anything reaches a DLQ (see the test below).
pub fn outage_wait(receive_count: u32, base: Duration) -> Duration {
    jittered(receive_count.saturating_sub(1), base, OUTAGE_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The least time `receives` failed receives keep a message away (every jitter at its
    /// low end), with the template's base of 10 s.
    fn least_time(receives: u32) -> Duration {
        (1..=receives)
            .map(|r| step(r - 1, Duration::from_secs(10), OUTAGE_CAP) / 2)
            .sum()
    }

    #[test]
    fn outages_of_hours_do_not_reach_the_dlq() {
        let two_hours = Duration::from_secs(2 * 3600);
        // Delivery queue: maxReceiveCount 30, of which up to ~10 may be the job's own
        // retry hops; ingest queue: 20.
        assert!(least_time(20) > two_hours, "{:?}", least_time(20));
        assert!(least_time(30) > 2 * two_hours, "{:?}", least_time(30));
        for receive in 1..40 {
            let wait = outage_wait(receive, Duration::from_secs(10));
            assert!(wait <= OUTAGE_CAP && wait >= Duration::from_secs(5));
        }
    }

    #[test]
    fn steps_double_up_to_the_cap_and_jitter_stays_inside() {
        let ms = Duration::from_millis;
        assert_eq!(step(0, ms(50), ms(1000)), ms(50));
        assert_eq!(step(3, ms(50), ms(1000)), ms(400));
        assert_eq!(step(10, ms(50), ms(1000)), ms(1000));
        assert_eq!(step(u32::MAX, ms(50), ms(1000)), ms(1000));
        for round in 0..8 {
            let j = jittered(round, ms(50), ms(1000));
            let s = step(round, ms(50), ms(1000));
            assert!(j >= s / 2 && j <= s, "{j:?} outside [{:?}, {s:?}]", s / 2);
        }
    }
}
