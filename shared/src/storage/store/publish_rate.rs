//! Each venue's publishing rate over the API: one counter per venue and second, an item of
//! the API keys table (`key_id` = `pub#{venue}#{unix second}`, no `venue_id`, so the table's
//! `by_venue` index never holds it; it expires a minute later). A new second is a new
//! partition key: a venue's counting never shares a key with another's, nor with its own
//! events.

use super::{is_conditional_failure, n, s, Store};
use crate::model::error::{Error, Result};
use crate::model::ids::VenueId;

/// How long a second's counter is kept (TTL) after its second.
const KEPT_SECONDS: i64 = 60;

/// The keys of `venue`'s counters that may still be stored at `now` (unix seconds): a
/// removal deletes them with the venue's keys (they would go by TTL within a minute anyway).
pub(super) fn publish_counter_keys(venue: &VenueId, now: i64) -> Vec<String> {
    (now - KEPT_SECONDS - 1..=now + 1)
        .map(|second| format!("pub#{}#{second}", venue.as_str()))
        .collect()
}

impl Store {
    /// Counts one event published by `venue` in the second `second` (unix seconds) if fewer
    /// than `limit` were counted in it: `true`; otherwise `false` and nothing is counted. One
    /// conditional write of a tiny item either way.
    pub async fn take_publish_allowance(
        &self,
        venue: &VenueId,
        second: i64,
        limit: u32,
    ) -> Result<bool> {
        let key = format!("pub#{}#{second}", venue.as_str());
        let counted = self
            .ddb
            .update_item()
            .table_name(&self.api_keys)
            .key("key_id", s(key))
            .update_expression("ADD published :one SET expires_at = :exp")
            .condition_expression("attribute_not_exists(published) OR published < :limit")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(i64::from(limit)))
            .expression_attribute_values(":exp", n(second + KEPT_SECONDS))
            .send()
            .await;
        match counted {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }
}
