//! The catalog of Popup's event types (`shared/catalog/event-types.json`, versioned with the
//! code): what endpoints may subscribe to, with a description and an example payload each.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::model::domain::pattern_matches;
use crate::model::error::ValidationError;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventTypeInfo {
    #[serde(rename = "type")]
    pub event_type: String,
    pub description: String,
    pub example: serde_json::Value,
    /// An operational event: sent to the platform's operational endpoints, never to a venue's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operational: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Catalog {
    pub version: String,
    pub event_types: Vec<EventTypeInfo>,
}

const SOURCE: &str = include_str!("../../catalog/event-types.json");

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    // A file of this repository, checked by the unit test below: not input.
    #[allow(clippy::expect_used)]
    serde_json::from_str(SOURCE).expect("shared/catalog/event-types.json parses")
});

pub fn catalog() -> &'static Catalog {
    &CATALOG
}

impl Catalog {
    pub fn get(&self, event_type: &str) -> Option<&EventTypeInfo> {
        self.event_types.iter().find(|t| t.event_type == event_type)
    }

    /// Every subscription pattern of an endpoint of a venue (`operational` false) or of an
    /// operational endpoint must name a catalog type of its kind or, as a wildcard, match one
    /// (`webhook.test` is both kinds').
    pub fn check_patterns(
        &self,
        patterns: &[String],
        operational: bool,
    ) -> Result<(), ValidationError> {
        for pattern in patterns {
            let known = self.event_types.iter().any(|t| {
                (t.operational == operational || t.event_type == "webhook.test")
                    && pattern_matches(pattern, &t.event_type)
            });
            if !known {
                let other_kind = self
                    .event_types
                    .iter()
                    .any(|t| pattern_matches(pattern, &t.event_type));
                let message = match (other_kind, operational) {
                    (true, false) => format!(
                        "`{pattern}` is an operational event type: the platform subscribes to it at /operational-endpoints"
                    ),
                    (true, true) => format!(
                        "`{pattern}` is a venue's event type; operational endpoints take the operational ones (see GET /event-types)"
                    ),
                    _ => format!(
                        "`{pattern}` matches no event type of the catalog; see GET /event-types"
                    ),
                };
                return Err(ValidationError::new("event_types", message));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::domain::validate_event_type;

    #[test]
    fn the_catalog_parses_and_its_entries_are_valid() {
        let c = catalog();
        assert!(!c.event_types.is_empty());
        for t in &c.event_types {
            validate_event_type("type", &t.event_type).unwrap();
            assert!(t.example.is_object(), "{}", t.event_type);
            assert!(!t.description.is_empty());
        }
        assert!(c.get("webhook.test").is_some());
    }

    #[test]
    fn patterns_must_match_the_catalog() {
        let c = catalog();
        let ok = |p: &[&str]| {
            c.check_patterns(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), false)
        };
        assert!(ok(&["order.created", "registration.*", "*"]).is_ok());
        assert!(ok(&["order.exploded"]).is_err());
        assert!(ok(&["nothing.*"]).is_err());
        // Operational types are the platform's, not a venue's; and the other way round.
        assert!(ok(&["endpoint.disabled"]).is_err());
        assert!(ok(&["endpoint.*"]).is_err());
        let ops = |p: &[&str]| {
            c.check_patterns(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), true)
        };
        assert!(ops(&["endpoint.*", "delivery.exhausted", "webhook.test", "*"]).is_ok());
        assert!(ops(&["order.created"]).is_err());
    }
}
