//! Each venue's publishing limit: at most `VENUE_PUBLISH_RATE_LIMIT` events a second over the
//! API, counted across every instance of the function in DynamoDB (one conditional write per
//! event, [`Store::take_publish_allowance`]); past it, `429` with `Retry-After`, nothing
//! stored. An instance that was refused in a second refuses that venue's later events of the
//! same second itself, without a write: a venue publishing far past its limit costs about one
//! write a second per instance beyond what it is allowed.
//!
//! The window is the calendar second: a venue can publish up to twice its limit across the
//! boundary of two seconds, never more.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use http::StatusCode;
use shared::model::ids::VenueId;
use shared::storage::store::Store;

use crate::error::ApiError;

/// Venues remembered as full before the memory is pruned of past seconds.
const REMEMBERED: usize = 1024;

pub struct PublishLimit {
    limit: u32,
    /// Venue → the second this instance last found its count full.
    full: Mutex<HashMap<VenueId, i64>>,
}

impl PublishLimit {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            full: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event of `venue`, or refuses it (429) when its second is full.
    pub async fn take(&self, store: &Store, venue: &VenueId) -> Result<(), ApiError> {
        let second = Utc::now().timestamp();
        let known_full = self.lock().get(venue) == Some(&second);
        if !known_full
            && store
                .take_publish_allowance(venue, second, self.limit)
                .await?
        {
            return Ok(());
        }
        let mut full = self.lock();
        if full.len() >= REMEMBERED {
            full.retain(|_, s| *s >= second);
        }
        full.insert(venue.clone(), second);
        Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this venue publishes at most {} events a second; nothing was stored: send it again after Retry-After (publishing the same id is one event)",
                    self.limit
                ),
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VenueId, i64>> {
        self.full.lock().unwrap_or_else(|p| p.into_inner())
    }
}
