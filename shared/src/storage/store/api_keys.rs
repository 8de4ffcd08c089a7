//! The API keys table: a venue's keys, by their hash only; and its portal sessions (short-lived
//! tokens for the venue's Settings → Webhooks page), the same way.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{from_item, is_conditional_failure, s, to_attr, to_item, written, Store, Tenant};
use crate::model::error::{Error, Result};
use crate::model::ids::{ApiKeyId, PortalSessionId, VenueId};

/// A venue API key as stored: its hash, never the key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub key_id: ApiKeyId,
    pub venue_id: VenueId,
    pub key_sha256: String,
    pub hint: String,
    #[serde(default)]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
}

const BY_VENUE: &str = "by_venue";
/// `last_used_at` is written at most this often per key, not on every request.
const LAST_USED_RESOLUTION_SECONDS: i64 = 60;

impl Store {
    /// A Query of the venue's items of one kind (ids with this prefix: keys or portal
    /// sessions).
    fn of_venue(
        &self,
        tenant: &Tenant,
        prefix: &str,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.ddb
            .query()
            .table_name(&self.api_keys)
            .index_name(BY_VENUE)
            .key_condition_expression("venue_id = :v AND begins_with(key_id, :kind)")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .expression_attribute_values(":kind", s(format!("{prefix}_")))
    }

    pub async fn create_api_key(&self, record: &ApiKeyRecord) -> Result<()> {
        self.put_generated(&self.api_keys, to_item(record)?, "key_id")
            .await
    }

    /// For authentication: the record a presented key names, whatever its venue.
    pub async fn get_api_key(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        self.by_key_id(id.as_str()).await
    }

    /// The item of this `key_id` (a key's or a portal session's), read strongly consistent.
    async fn by_key_id<T: serde::de::DeserializeOwned>(&self, key_id: &str) -> Result<Option<T>> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.api_keys)
            .key("key_id", s(key_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        out.item.map(from_item).transpose()
    }

    pub async fn list_api_keys(&self, tenant: &Tenant) -> Result<Vec<ApiKeyRecord>> {
        // Keys only: the venue's portal sessions share the table (`pss_…`).
        let mut pages = self
            .of_venue(tenant, ApiKeyId::PREFIX)
            .into_paginator()
            .items()
            .send();
        let mut found = Vec::new();
        while let Some(item) = pages.next().await {
            found.push(from_item(item.map_err(|e| Error::aws("dynamodb", e))?)?);
        }
        Ok(found)
    }

    /// Revokes a key at once: the record is gone, so the next request with it is a 401.
    pub async fn delete_api_key(&self, tenant: &Tenant, id: &ApiKeyId) -> Result<()> {
        let result = self
            .ddb
            .delete_item()
            .table_name(&self.api_keys)
            .key("key_id", s(id.as_str()))
            .condition_expression("venue_id = :v")
            .expression_attribute_values(":v", s(tenant.venue().as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Err(Error::NotFound("api key")),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Notes that a key was used, at most once a minute per key.
    pub async fn touch_api_key(&self, record: &ApiKeyRecord, now: DateTime<Utc>) -> Result<()> {
        let fresh = record
            .last_used_at
            .is_some_and(|at| (now - at).num_seconds() < LAST_USED_RESOLUTION_SECONDS);
        if fresh {
            return Ok(());
        }
        let result = self
            .ddb
            .update_item()
            .table_name(&self.api_keys)
            .key("key_id", s(record.key_id.as_str()))
            .update_expression("SET last_used_at = :now")
            .condition_expression("attribute_exists(key_id)")
            .expression_attribute_values(":now", to_attr(&now)?)
            .send()
            .await;
        written(result).map(|_| ())
    }
}

/// A portal session as stored: its token's hash, never the token, and when it ends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortalSessionRecord {
    /// The table's key (`pss_…`).
    pub key_id: PortalSessionId,
    pub venue_id: VenueId,
    pub key_sha256: String,
    pub created_at: DateTime<Utc>,
    /// Unix seconds; also the table's TTL attribute.
    pub expires_at: i64,
}

impl Store {
    pub async fn create_portal_session(&self, record: &PortalSessionRecord) -> Result<()> {
        self.put_generated(&self.api_keys, to_item(record)?, "key_id")
            .await
    }

    /// For authentication: the session a presented token names, whatever its venue, if it has
    /// not expired.
    pub async fn get_portal_session(
        &self,
        id: &PortalSessionId,
        now: DateTime<Utc>,
    ) -> Result<Option<PortalSessionRecord>> {
        Ok(self
            .by_key_id::<PortalSessionRecord>(id.as_str())
            .await?
            // TTL deletion is lazy: an expired session is gone.
            .filter(|r| r.expires_at > now.timestamp()))
    }

    /// Ends every portal session of the venue at once; how many there were.
    pub async fn revoke_portal_sessions(&self, tenant: &Tenant) -> Result<usize> {
        let mut pages = self
            .of_venue(tenant, PortalSessionId::PREFIX)
            .into_paginator()
            .items()
            .send();
        let mut revoked = 0;
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| Error::aws("dynamodb", e))?;
            let Some(id) = item.get("key_id").and_then(|v| v.as_s().ok()) else {
                continue;
            };
            self.ddb
                .delete_item()
                .table_name(&self.api_keys)
                .key("key_id", s(id.as_str()))
                .send()
                .await
                .map_err(|e| Error::aws("dynamodb", e))?;
            revoked += 1;
        }
        Ok(revoked)
    }
}
