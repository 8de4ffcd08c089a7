//! Who is calling. The admin key (the Popup platform) acts for any venue; a venue key, or a
//! portal session's token (the venue's Settings → Webhooks page), only for its own venue, and
//! another venue's resources are a 404 to it. Handlers receive a [`Tenant`]
//! made here, so a venue route cannot run without this check.

use chrono::Utc;
use http::StatusCode;
use shared::model::api_key;
use shared::model::ids::{ApiKeyId, VenueId};
use shared::storage::store::{Store, Tenant};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

pub enum Caller {
    Admin,
    Venue {
        venue: VenueId,
        key_id: ApiKeyId,
    },
    /// A portal session: like a venue key, until it expires or is revoked.
    Portal {
        venue: VenueId,
    },
}

impl Caller {
    /// The venue this caller may act on.
    pub fn tenant(&self, venue: &str) -> Result<Tenant, ApiError> {
        // Ids that start with `_` are the system's (the operational endpoints' venue): no
        // venue has one, whoever asks.
        if shared::pipeline::operational::is_reserved(venue) {
            return Err(ApiError::not_found("venue"));
        }
        let venue = VenueId::parse(venue).map_err(|_| ApiError::not_found("venue"))?;
        match self {
            Caller::Admin => Ok(Tenant::authorized(venue)),
            Caller::Venue { venue: own, .. } | Caller::Portal { venue: own } if *own == venue => {
                Ok(Tenant::authorized(venue))
            }
            // Indistinguishable from a venue with nothing in it that does not exist.
            Caller::Venue { .. } | Caller::Portal { .. } => Err(ApiError::not_found("venue")),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Venue { .. } | Caller::Portal { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the admin key may do this (API keys, portal sessions, operational endpoints, removing a venue)",
            )),
        }
    }
}

#[derive(Clone)]
pub struct Authenticator {
    /// SHA-256 (lowercase hex) of the admin key; the key itself is never deployed.
    admin_key_sha256: String,
    store: Store,
}

impl Authenticator {
    pub fn new(admin_key_sha256: String, store: Store) -> Self {
        Self {
            admin_key_sha256: admin_key_sha256.trim().to_ascii_lowercase(),
            store,
        }
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let presented = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        let presented_hash = api_key::sha256_hex(presented);
        if bool::from(
            presented_hash
                .as_bytes()
                .ct_eq(self.admin_key_sha256.as_bytes()),
        ) {
            return Ok(Caller::Admin);
        }
        if let Some(session) = api_key::claimed_session(presented) {
            return self
                .store
                .get_portal_session(&session, Utc::now())
                .await?
                .filter(|r| api_key::matches(presented, &r.key_sha256))
                .map(|r| Caller::Portal { venue: r.venue_id })
                .ok_or_else(ApiError::session_expired);
        }
        let id = api_key::claimed_id(presented).ok_or_else(ApiError::unauthorized)?;
        let record = self
            .store
            .get_api_key(&id)
            .await?
            .filter(|r| api_key::matches(presented, &r.key_sha256))
            .ok_or_else(ApiError::unauthorized)?;
        if let Err(e) = self.store.touch_api_key(&record, Utc::now()).await {
            tracing::warn!(key_id = %record.key_id, error = %e, "could not note the key's use");
        }
        Ok(Caller::Venue {
            venue: record.venue_id,
            key_id: record.key_id,
        })
    }
}
