//! An invocation's deadline: Lambda stops the handler at the function's `Timeout`, and tells
//! it when in its context (`deadline`, milliseconds since the epoch).
//! `main` of each function turns that into an [`Instant`] for its handler.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The moment, on this process's clock, that is `deadline_ms` since the epoch.
pub fn from_epoch_ms(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}
