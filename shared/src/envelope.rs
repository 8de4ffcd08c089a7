//! The request body of a delivery, rendered once per attempt and signed exactly as sent.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::catalog::catalog;
use crate::domain::{pattern_matches, Event, PayloadFormat};
use crate::error::ValidationError;

/// Longest accepted template expression.
pub const MAX_TEMPLATE_LEN: usize = 4096;
/// Largest body a template may produce.
pub const MAX_RENDERED_BYTES: usize = 256 * 1024;

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: &'a str,
    data: &'a RawValue,
}

/// Compact JSON in the endpoint's payload format. Only a template can fail (its output is not
/// a JSON object, or too large); the message says what to fix.
pub fn render(
    event: &Event,
    format: PayloadFormat,
    template: Option<&str>,
) -> Result<Vec<u8>, String> {
    match (format, template) {
        (PayloadFormat::Template, Some(expression)) => apply_template(expression, event),
        (PayloadFormat::Template, None) => Err("the endpoint has no template".into()),
        (format, _) => Ok(render_plain(event, format)),
    }
}

fn render_plain(event: &Event, format: PayloadFormat) -> Vec<u8> {
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

/// Evaluates a JMESPath expression over the envelope. JMESPath has no loops or recursion, so
/// an expression always terminates; its output is bounded by the check below.
fn apply_template(expression: &str, event: &Event) -> Result<Vec<u8>, String> {
    let compiled = jmespath::compile(expression).map_err(|e| format!("template: {e}"))?;
    let envelope: serde_json::Value =
        serde_json::from_slice(&render_plain(event, PayloadFormat::Envelope))
            .map_err(|e| format!("envelope: {e}"))?;
    let result = compiled
        .search(&envelope)
        .map_err(|e| format!("template: {e}"))?;
    let value = serde_json::to_value(&*result).map_err(|e| format!("template: {e}"))?;
    if !value.is_object() {
        return Err(format!(
            "the template must produce a JSON object, not `{}`",
            truncate(&value.to_string(), 80)
        ));
    }
    let body = serde_json::to_vec(&value).map_err(|e| format!("template: {e}"))?;
    if body.len() > MAX_RENDERED_BYTES {
        return Err(format!(
            "the template produced {} bytes; at most {MAX_RENDERED_BYTES} are sent",
            body.len()
        ));
    }
    Ok(body)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
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
    jmespath::compile(expression)
        .map_err(|e| ValidationError::new("template", format!("not a JMESPath expression: {e}")))?;
    let sample = catalog()
        .event_types
        .iter()
        .find(|t| {
            event_types
                .iter()
                .any(|p| pattern_matches(p, &t.event_type))
        })
        .or_else(|| catalog().get("webhook.test"));
    if let Some(sample) = sample {
        let event = Event {
            id: crate::ids::EventId::generate(),
            event_type: sample.event_type.clone(),
            timestamp: "2026-11-27T10:15:00Z".into(),
            data: RawValue::from_string(sample.example.to_string())
                .map_err(|e| ValidationError::new("template", e.to_string()))?,
        };
        apply_template(expression, &event).map_err(|e| {
            ValidationError::new(
                "template",
                format!("on the example `{}` event: {e}", sample.event_type),
            )
        })?;
    }
    Ok(())
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
            String::from_utf8(render(&event(), PayloadFormat::Envelope, None).unwrap()).unwrap(),
            r#"{"id":"evt_1","type":"order.created","timestamp":"2026-11-27T10:15:00Z","data":{"order_id":"o1","total":12.5}}"#
        );
    }

    #[test]
    fn data_format_sends_only_the_data_object() {
        assert_eq!(
            render(&event(), PayloadFormat::Data, None).unwrap(),
            br#"{"order_id":"o1","total":12.5}"#
        );
    }

    const SLACK: &str =
        "{text: join('', ['New order ', data.order_id, ' (', to_string(data.total), ')'])}";

    #[test]
    fn a_template_builds_a_slack_message() {
        let body = render(&event(), PayloadFormat::Template, Some(SLACK)).unwrap();
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

    #[test]
    fn a_template_output_is_bounded() {
        let big = Event {
            data: RawValue::from_string(format!(r#"{{"s":"{}"}}"#, "x".repeat(100_000))).unwrap(),
            ..event()
        };
        let err = render(
            &big,
            PayloadFormat::Template,
            Some("{a: data.s, b: data.s, c: data.s}"),
        )
        .unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }
}
