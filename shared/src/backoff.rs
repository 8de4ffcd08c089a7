//! Jittered exponential backoff ("full jitter": a random wait up to the exponential step),
//! for retries of our own (BatchGetItem's unprocessed keys, SendMessageBatch's failed entries,
//! jobs that failed because AWS did). The SDK's own retries are configured in
//! [`crate::services`].

use std::time::Duration;

/// The exponential step of retry `round` (0 for the first retry): `base` × 2^round, at most
/// `cap`.
pub fn step(round: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(round.min(30))).min(cap)
}

/// A random wait between half the step and the whole step: spread out, never near zero.
pub fn jittered(round: u32, base: Duration, cap: Duration) -> Duration {
    let step = step(round, base, cap);
    step.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

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
