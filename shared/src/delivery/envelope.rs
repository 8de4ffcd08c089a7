//! The request body of a delivery, rendered once per attempt and signed exactly as sent.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::delivery::template;
use crate::model::catalog::catalog;
use crate::model::domain::{pattern_matches, Event, PayloadFormat};
use crate::model::error::ValidationError;

pub use crate::delivery::template::{MAX_RENDERED_BYTES, MAX_TEMPLATE_LEN};

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: &'a str,
    data: &'a RawValue,
}

/// Compact JSON in the endpoint's payload format. Only a template can fail (its output is not
/// a JSON object, too large, or it would take too much to compute; see [`crate::delivery::template`]);
/// the message says what to fix.
pub async fn render(
    event: &Event,
    format: PayloadFormat,
    template: Option<&str>,
) -> Result<Vec<u8>, String> {
    match (format, template) {
        (PayloadFormat::Template, Some(expression)) => {
            template::render_bounded(expression, render_plain(event, PayloadFormat::Envelope)).await
        }
        (PayloadFormat::Template, None) => Err("the endpoint has no template".into()),
        (format, _) => Ok(render_plain(event, format)),
    }
}

/// The envelope or the data alone (a template renders from the envelope).
pub fn render_plain(event: &Event, format: PayloadFormat) -> Vec<u8> {
    match format {
        PayloadFormat::Envelope => {
            let envelope = Envelope {
                id: event.id.as_str(),
                event_type: &event.event_type,
                timestamp: &event.timestamp,
                data: &event.data,
            };
            // Sized once for the whole envelope (no regrowing on the hot path). Serialising
            // borrowed strings and an already-valid RawValue cannot fail.
            let mut out = Vec::with_capacity(
                event.data.get().len()
                    + event.id.as_str().len()
                    + event.event_type.len()
                    + event.timestamp.len()
                    + 64,
            );
            match serde_json::to_writer(&mut out, &envelope) {
                Ok(()) => out,
                Err(_) => Vec::new(),
            }
        }
        PayloadFormat::Data | PayloadFormat::Template => event.data.get().as_bytes().to_vec(),
    }
}

/// The catalog's example of an event type as an event (`evt_example`, a fixed time): what
/// previews and template checks render.
pub fn example_event(info: &crate::model::catalog::EventTypeInfo) -> Result<Event, String> {
    Ok(Event {
        id: crate::model::ids::EventId::parse("evt_example").map_err(|e| e.to_string())?,
        event_type: info.event_type.clone(),
        timestamp: "2026-11-27T10:15:00Z".into(),
        data: RawValue::from_string(info.example.to_string()).map_err(|e| e.to_string())?,
    })
}

/// Checks a template when it is saved: it parses, and it turns the catalog's example of the
/// first event type the endpoint subscribes to into a JSON object.
pub fn check_template(expression: &str, event_types: &[String]) -> Result<(), ValidationError> {
    if expression.len() > MAX_TEMPLATE_LEN {
        return Err(ValidationError::new(
            "template",
            format!("at most {MAX_TEMPLATE_LEN} characters"),
        ));
    }
    let sample = catalog()
        .event_types
        .iter()
        .find(|t| {
            event_types
                .iter()
                .any(|p| pattern_matches(p, &t.event_type))
        })
        .or_else(|| catalog().get("webhook.test"));
    let event = match sample {
        Some(sample) => example_event(sample),
        None => example_event(&crate::model::catalog::EventTypeInfo {
            event_type: "webhook.test".into(),
            description: String::new(),
            example: serde_json::json!({}),
            operational: false,
        }),
    }
    .map_err(|e| ValidationError::new("template", e))?;
    let event_type = &event.event_type;
    // Parsed, bounded (depth, growth) and run on the example, off this thread.
    template::render_blocking(expression, render_plain(&event, PayloadFormat::Envelope)).map_err(
        |e| {
            ValidationError::new(
                "template",
                format!("on the example `{event_type}` event: {e}"),
            )
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::EventId;

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
            String::from_utf8(render_plain(&event(), PayloadFormat::Envelope)).unwrap(),
            r#"{"id":"evt_1","type":"order.created","timestamp":"2026-11-27T10:15:00Z","data":{"order_id":"o1","total":12.5}}"#
        );
    }

    #[test]
    fn data_format_sends_only_the_data_object() {
        assert_eq!(
            render_plain(&event(), PayloadFormat::Data),
            br#"{"order_id":"o1","total":12.5}"#
        );
    }

    const SLACK: &str =
        "{text: join('', ['New order ', data.order_id, ' (', to_string(data.total), ')'])}";

    #[tokio::test]
    async fn a_template_builds_a_slack_message() {
        let body = render(&event(), PayloadFormat::Template, Some(SLACK))
            .await
            .unwrap();
        assert_eq!(body, br#"{"text":"New order o1 (12.5)"}"#);
    }

    #[test]
    fn templates_are_checked_when_saved() {
        let types = vec!["order.*".to_owned()];
        assert!(check_template(
            SLACK.replace("data.total", "data.total_cents").as_str(),
            &types
        )
        .is_ok());
        assert!(check_template("{text: ", &types)
            .unwrap_err()
            .message
            .contains("JMESPath"));
        assert!(check_template("data.order_id", &types)
            .unwrap_err()
            .message
            .contains("JSON object"));
        assert!(check_template(&"a".repeat(5000), &types).is_err());
        // `join` of a missing field fails on the example: caught on save, not at send.
        assert!(check_template("{t: join('', [data.nope])}", &types).is_err());
    }

    #[tokio::test]
    async fn a_template_output_is_bounded() {
        let big = Event {
            data: RawValue::from_string(format!(r#"{{"s":"{}"}}"#, "x".repeat(100_000))).unwrap(),
            ..event()
        };
        let err = render(
            &big,
            PayloadFormat::Template,
            Some("{a: data.s, b: data.s, c: data.s}"),
        )
        .await
        .unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }
}
