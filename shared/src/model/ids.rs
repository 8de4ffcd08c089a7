//! Typed, prefixed identifiers. Generated ids are `prefix_` + a ULID, so they sort by creation
//! time as plain strings; that makes them usable as DynamoDB sort keys and pagination cursors.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::error::ValidationError;

macro_rules! generated_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        generated_id!(@id $(#[$doc])* $name, $prefix);

        impl $name {
            /// A new id, sortable by creation time.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, ulid::Ulid::new()))
            }
        }
    };
    (@id $(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Parses an id from a path or a cursor: right prefix, then a ULID.
            pub fn parse(raw: &str) -> Result<Self, ValidationError> {
                let valid = raw
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|rest| ulid::Ulid::from_string(rest).is_ok());
                if valid {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(ValidationError::new(
                        stringify!($name),
                        format!("`{raw}` is not a valid id: expected `{}_` followed by 26 characters", $prefix),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The smallest (or, `high`, the largest) id that could be generated at `at`:
            /// bounds for a key range over ids, which sort by time.
            pub fn bound(at: chrono::DateTime<chrono::Utc>, high: bool) -> String {
                let ms = at.timestamp_millis().max(0) as u64;
                let random = if high { (1u128 << 80) - 1 } else { 0 };
                format!("{}_{}", $prefix, ulid::Ulid::from_parts(ms, random))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

generated_id!(
    /// An endpoint (`ep_…`).
    EndpointId,
    "ep"
);
generated_id!(
    @id
    /// One delivery of one event to one endpoint (`dlv_…`); generated only with its
    /// endpoint's tag (below).
    DeliveryId,
    "dlv"
);
/// How many deliveries one group holds at most.
pub const GROUP_SIZE: usize = 10;
/// The low bits of a delivery id: its place in its group (1 to [`GROUP_SIZE`]), 0 outside one.
const MEMBER_BITS: u32 = 8;
/// Above them, the endpoint's tag ([`EndpointId::tag`]): where the delivery's history lives.
const TAG_BITS: u32 = 40;
const MEMBER_MASK: u128 = (1 << MEMBER_BITS) - 1;
const TAG_MASK: u128 = ((1 << TAG_BITS) - 1) << MEMBER_BITS;

impl EndpointId {
    /// 40 of the id's random bits: delivery ids carry them, so that a delivery's id alone
    /// names the history partition of its endpoint. Unique among a venue's endpoints (creation
    /// makes sure); where two endpoints of a venue once shared one, their histories share a
    /// partition, and each item still names its endpoint.
    pub fn tag(&self) -> u64 {
        (ulid_of(&self.0, Self::PREFIX).0 & ((1 << TAG_BITS) - 1)) as u64
    }
}

/// A delivery id's ULID: 48 bits of time (milliseconds), 32 random, the endpoint's 40-bit tag,
/// 8 bits of place in its group. A group is the first attempts at one endpoint of up to
/// [`GROUP_SIZE`] events accepted together: its id has place 0, its members count up from it,
/// so a member's id names its group and sorts right after it.
impl DeliveryId {
    /// The base of the groups of one batch of accepted events: each endpoint's group is
    /// [`DeliveryId::group_at`] it, so an event's delivery ids follow from the base, its place
    /// in the batch and its endpoints.
    pub fn batch_base() -> Self {
        let ulid = ulid::Ulid::new();
        Self::from_ulid(ulid.0 & !(TAG_MASK | MEMBER_MASK))
    }

    /// The group of this batch base at `endpoint`.
    pub fn group_at(&self, endpoint: &EndpointId) -> Self {
        Self::from_ulid(self.base().ulid().0 | (u128::from(endpoint.tag()) << MEMBER_BITS))
    }

    /// The batch base this delivery's group was made from ([`DeliveryId::group_at`]).
    pub fn base(&self) -> Self {
        Self::from_ulid(self.ulid().0 & !(TAG_MASK | MEMBER_MASK))
    }

    /// A delivery outside any group (a test send), at `endpoint`.
    pub fn single(endpoint: &EndpointId) -> Self {
        Self::batch_base().group_at(endpoint)
    }

    /// The delivery id of the `index`th member of this group (0-based).
    pub fn member(&self, index: usize) -> Self {
        debug_assert!(index < GROUP_SIZE);
        Self::from_ulid((self.ulid().0 & !MEMBER_MASK) + index as u128 + 1)
    }

    /// The group this delivery belongs to, and its place in it; `None` for a delivery
    /// that never was in one (a test send), and for a group's own id.
    pub fn group(&self) -> Option<(Self, usize)> {
        let ulid = self.ulid().0;
        let low = (ulid & MEMBER_MASK) as usize;
        (1..=GROUP_SIZE)
            .contains(&low)
            .then(|| (Self::from_ulid(ulid & !MEMBER_MASK), low - 1))
    }

    /// When the id was made (its batch's acceptance), in unix milliseconds.
    pub fn created_ms(&self) -> u64 {
        self.ulid().timestamp_ms()
    }

    /// The tag of the endpoint this delivery is for ([`EndpointId::tag`]).
    pub fn tag(&self) -> u64 {
        ((self.ulid().0 & TAG_MASK) >> MEMBER_BITS) as u64
    }

    fn from_ulid(bits: u128) -> Self {
        Self(format!("{}_{}", Self::PREFIX, ulid::Ulid(bits)))
    }

    fn ulid(&self) -> ulid::Ulid {
        ulid_of(&self.0, Self::PREFIX)
    }
}

/// The ULID of a generated or parsed id (every one has one after its prefix).
fn ulid_of(id: &str, prefix: &str) -> ulid::Ulid {
    id.get(prefix.len() + 1..)
        .and_then(|rest| ulid::Ulid::from_string(rest).ok())
        .unwrap_or_default()
}

generated_id!(
    /// A venue API key (`key_…`); the key itself is secret, this id is not.
    ApiKeyId,
    "key"
);
generated_id!(
    /// A portal session (`pss_…`): a short-lived link to a venue's Settings → Webhooks page.
    PortalSessionId,
    "pss"
);

/// A venue, as named by the Popup platform: `[A-Za-z0-9_-]`, 1 to 64 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VenueId(String);

impl VenueId {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if is_token(raw, 64) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                "venue_id",
                "must be 1 to 64 characters of A-Z, a-z, 0-9, `_` or `-`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A venue of the system's own (its id starts with `_`: the operational endpoints'),
    /// never one of Popup's venues.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('_')
    }

    /// Where an event of this venue lives and which fair-queue group its messages join: the
    /// venue itself, or, for the system's venue (whose events come from every venue), one of
    /// [`SYSTEM_SHARDS`] keys picked by the event's id, so that no one partition key nor one
    /// message group takes them all. `#` is in no venue id: no venue can have such a key.
    pub fn spread_by(&self, key: &str) -> String {
        if self.is_reserved() {
            format!("{}#{:02}", self.0, shard_of(key, SYSTEM_SHARDS))
        } else {
            self.0.clone()
        }
    }
}

/// How many keys the system venue's events are spread over ([`VenueId::spread_by`]): each
/// takes 1/16 of them, under SQS's ~10% mark of a noisy fair-queue group.
pub const SYSTEM_SHARDS: u32 = 16;

/// A stable shard of `key` in `0..n` (FNV-1a: the same on every machine and build).
pub fn shard_of(key: &str, n: u32) -> u32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(n.max(1))) as u32
}

impl TryFrom<String> for VenueId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<VenueId> for String {
    fn from(value: VenueId) -> Self {
        value.0
    }
}

impl fmt::Display for VenueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event id: producer-supplied idempotency key or generated `evt_` + ULID. It is part of the
/// signed content (`{id}.{timestamp}.{body}`), so a `.` is never allowed in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

impl EventId {
    pub fn generate() -> Self {
        Self(format!("evt_{}", ulid::Ulid::new()))
    }

    /// The id of an event whose producer gave none, made from what the queue gave its
    /// message: the same each time that message is processed (a message comes back after a
    /// throttle, a partial batch, a timeout), so it is stored and fanned out once. The time
    /// part is the message's `SentTimestamp`, so ids still sort by time; the rest is 80 bits
    /// of SHA-256 of the queue's message id.
    pub fn of_message(message_id: &str, sent_ms: u64) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(message_id.as_bytes());
        let random = digest[..10]
            .iter()
            .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
        Self(format!("evt_{}", ulid::Ulid::from_parts(sent_ms, random)))
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if is_token(raw, 64) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValidationError::new(
                "id",
                "an event id must be 1 to 64 characters of A-Z, a-z, 0-9, `_` or `-`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<EventId> for String {
    fn from(value: EventId) -> Self {
        value.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_token(raw: &str, max: usize) -> bool {
    !raw.is_empty()
        && raw.len() <= max
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_venue_is_spread_and_a_venue_is_not() {
        let venue = VenueId::parse("v1").unwrap();
        assert_eq!(venue.spread_by("evt_1"), "v1");
        let system = VenueId::parse("_operational").unwrap();
        assert!(system.is_reserved() && !venue.is_reserved());
        let keys: std::collections::BTreeSet<String> = (0..400)
            .map(|i| system.spread_by(&format!("exhausted-ep_{i}")))
            .collect();
        assert_eq!(keys.len(), SYSTEM_SHARDS as usize, "{keys:?}");
        assert!(keys.iter().all(|k| k.starts_with("_operational#")));
        // Stable: the same key for the same id, whatever the build.
        assert_eq!(shard_of("evt_1", 16), shard_of("evt_1", 16));
        assert_eq!(shard_of("a", 16), 12);
    }

    #[test]
    fn generated_ids_are_prefixed_parseable_and_time_sortable() {
        let a = EndpointId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = EndpointId::generate();
        assert!(a.as_str().starts_with("ep_"));
        assert_eq!(EndpointId::parse(a.as_str()).unwrap(), a);
        assert!(a < b, "{a} should sort before {b}");
    }

    #[test]
    fn group_members_name_their_group_and_endpoint_and_sort_after_it() {
        let (a, b) = (EndpointId::generate(), EndpointId::generate());
        let base = DeliveryId::batch_base();
        let group = base.group_at(&a);
        assert_eq!(group.group(), None, "a group id is no member");
        assert_eq!(group.tag(), a.tag());
        assert_ne!(base.group_at(&b), group, "one group per endpoint");
        let members: Vec<_> = (0..GROUP_SIZE).map(|i| group.member(i)).collect();
        for (i, m) in members.iter().enumerate() {
            assert_eq!(DeliveryId::parse(m.as_str()).unwrap(), *m);
            assert_eq!(m.group(), Some((group.clone(), i)));
            assert_eq!(m.tag(), a.tag(), "a member names its endpoint's partition");
            assert!(*m > group);
        }
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(sorted, members);
        // A later group sorts after every member of an earlier one.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(DeliveryId::batch_base().group_at(&a) > members[GROUP_SIZE - 1]);
        let single = DeliveryId::single(&b);
        assert_eq!((single.group(), single.tag()), (None, b.tag()));
    }

    #[test]
    fn ids_of_the_wrong_kind_or_shape_are_refused() {
        let dlv = DeliveryId::batch_base();
        assert!(EndpointId::parse(dlv.as_str()).is_err());
        assert!(EndpointId::parse("ep_short").is_err());
        assert!(EventId::parse("has.dot").is_err());
        assert!(EventId::parse(&"x".repeat(65)).is_err());
        assert!(EventId::parse("order-123_A").is_ok());
        // A queue message's id: the same each time, different for another message, sorted
        // by the time it was sent.
        let a = EventId::of_message("2f9c7e9e-1b1a-4c1e-9a8e-0b5f3f6f2a11", 1_700_000_000_000);
        assert_eq!(
            a,
            EventId::of_message("2f9c7e9e-1b1a-4c1e-9a8e-0b5f3f6f2a11", 1_700_000_000_000)
        );
        let b = EventId::of_message("5d0e1a7c-0000-4c1e-9a8e-0b5f3f6f2a11", 1_700_000_000_001);
        assert_ne!(a, b);
        assert!(a.as_str() < b.as_str());
        assert!(EventId::parse(a.as_str()).is_ok());
        assert!(VenueId::parse("").is_err());
        assert!(VenueId::parse("venue/1").is_err());
    }
}
