//! Typed, prefixed identifiers. Generated ids are `prefix_` + a ULID, so they sort by creation
//! time as plain strings; that makes them usable as DynamoDB sort keys and pagination cursors.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

macro_rules! generated_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new id, sortable by creation time.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, ulid::Ulid::new()))
            }

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
    /// One delivery of one event to one endpoint (`dlv_…`).
    DeliveryId,
    "dlv"
);
/// How many deliveries one group holds at most: the low bits of a group's id are zero and its
/// members count up from it, so a member's id names its group and sorts right after it.
pub const GROUP_SIZE: usize = 10;
const GROUP_BITS: u32 = 8;

impl DeliveryId {
    /// A new group id: the first attempts of one event at up to [`GROUP_SIZE`] endpoints
    /// are recorded together under it, their delivery ids are its [`DeliveryId::member`]s.
    pub fn generate_group() -> Self {
        let ulid = ulid::Ulid::new();
        let group = ulid::Ulid(ulid.0 & !((1u128 << GROUP_BITS) - 1));
        Self(format!("{}_{}", Self::PREFIX, group))
    }

    /// The delivery id of the `index`th member of this group (0-based).
    pub fn member(&self, index: usize) -> Self {
        debug_assert!(index < GROUP_SIZE);
        let ulid = self.ulid();
        let group = ulid.0 & !((1u128 << GROUP_BITS) - 1);
        let member = ulid::Ulid(group + index as u128 + 1);
        Self(format!("{}_{}", Self::PREFIX, member))
    }

    /// The group this delivery belongs to, and its place in it; `None` for a delivery
    /// that never was in one (a test send).
    pub fn group(&self) -> Option<(Self, usize)> {
        let ulid = self.ulid();
        let low = (ulid.0 & ((1u128 << GROUP_BITS) - 1)) as usize;
        (1..=GROUP_SIZE).contains(&low).then(|| {
            let group = ulid::Ulid(ulid.0 - low as u128);
            (Self(format!("{}_{}", Self::PREFIX, group)), low - 1)
        })
    }

    fn ulid(&self) -> ulid::Ulid {
        // Every DeliveryId was generated or parsed, so the part after the prefix is a ULID.
        self.0
            .get(Self::PREFIX.len() + 1..)
            .and_then(|rest| ulid::Ulid::from_string(rest).ok())
            .unwrap_or_default()
    }
}

generated_id!(
    /// A venue API key (`key_…`); the key itself is secret, this id is not.
    ApiKeyId,
    "key"
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
    fn generated_ids_are_prefixed_parseable_and_time_sortable() {
        let a = EndpointId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = EndpointId::generate();
        assert!(a.as_str().starts_with("ep_"));
        assert_eq!(EndpointId::parse(a.as_str()).unwrap(), a);
        assert!(a < b, "{a} should sort before {b}");
    }

    #[test]
    fn group_members_name_their_group_and_sort_after_it() {
        let group = DeliveryId::generate_group();
        assert_eq!(group.group(), None, "a group id is no member");
        let members: Vec<_> = (0..GROUP_SIZE).map(|i| group.member(i)).collect();
        for (i, m) in members.iter().enumerate() {
            assert_eq!(DeliveryId::parse(m.as_str()).unwrap(), *m);
            assert_eq!(m.group(), Some((group.clone(), i)));
            assert!(*m > group);
        }
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(sorted, members);
        // A later group sorts after every member of an earlier one.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(DeliveryId::generate_group() > members[GROUP_SIZE - 1]);
    }

    #[test]
    fn ids_of_the_wrong_kind_or_shape_are_refused() {
        let dlv = DeliveryId::generate();
        assert!(EndpointId::parse(dlv.as_str()).is_err());
        assert!(EndpointId::parse("ep_short").is_err());
        assert!(EventId::parse("has.dot").is_err());
        assert!(EventId::parse(&"x".repeat(65)).is_err());
        assert!(EventId::parse("order-123_A").is_ok());
        assert!(VenueId::parse("").is_err());
        assert!(VenueId::parse("venue/1").is_err());
    }
}
