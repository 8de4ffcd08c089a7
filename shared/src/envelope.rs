//! The request body of a delivery, rendered once per attempt and signed exactly as sent.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::domain::{Event, PayloadFormat};

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: &'a str,
    data: &'a RawValue,
}

/// Compact JSON in the endpoint's payload format.
pub fn render(event: &Event, format: PayloadFormat) -> Vec<u8> {
    match format {
        PayloadFormat::Envelope => {
            let envelope = Envelope {
                id: event.id.as_str(),
                event_type: &event.event_type,
                timestamp: &event.timestamp,
                data: &event.data,
            };
            // Serialising borrowed strings and an already-valid RawValue cannot fail.
            serde_json::to_vec(&envelope).unwrap_or_default()
        }
        PayloadFormat::Data => event.data.get().as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EventId;

    fn event() -> Event {
        Event {
            id: EventId::parse("evt_1").unwrap(),
            event_type: "order.created".into(),
            timestamp: "2026-11-27T10:15:00Z".into(),
            data: RawValue::from_string(r#"{"order_id":"o1","total":12.5}"#.into()).unwrap(),
        }
    }

    #[test]
    fn envelope_is_compact_and_ordered() {
        assert_eq!(
            String::from_utf8(render(&event(), PayloadFormat::Envelope)).unwrap(),
            r#"{"id":"evt_1","type":"order.created","timestamp":"2026-11-27T10:15:00Z","data":{"order_id":"o1","total":12.5}}"#
        );
    }

    #[test]
    fn data_format_sends_only_the_data_object() {
        assert_eq!(
            render(&event(), PayloadFormat::Data),
            br#"{"order_id":"o1","total":12.5}"#
        );
    }
}
