//! SQS's allowed characters, which moto does not check: the meter ([`super`]) refuses a
//! message body with others as SQS does.

use serde_json::{json, Value};

pub(super) const SQS_INVALID_CHARACTERS: &str = "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF";

/// Whether SQS allows `c` in a message.
fn sqs_allows(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

pub(super) enum SqsCheck {
    Fine,
    /// A SendMessage whose body SQS refuses.
    Refuse,
    /// A batch with refused entries: the rest to send, and the refused ones' `Failed` entries.
    Entries {
        rest: Value,
        failed: Vec<Value>,
    },
}

/// SendMessage and SendMessageBatch (SQS's JSON protocol) against SQS's allowed characters.
pub(super) fn sqs_characters(target: &str, body: &[u8]) -> SqsCheck {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return SqsCheck::Fine;
    };
    let bad = |v: &Value| v.as_str().is_some_and(|b| !b.chars().all(sqs_allows));
    if target == "AmazonSQS.SendMessage" {
        return if bad(&request["MessageBody"]) {
            SqsCheck::Refuse
        } else {
            SqsCheck::Fine
        };
    }
    let Some(entries) = request["Entries"].as_array().cloned() else {
        return SqsCheck::Fine;
    };
    let (refused, kept): (Vec<Value>, Vec<Value>) =
        entries.into_iter().partition(|e| bad(&e["MessageBody"]));
    if refused.is_empty() {
        return SqsCheck::Fine;
    }
    request["Entries"] = Value::Array(kept);
    SqsCheck::Entries {
        rest: request,
        failed: refused
            .iter()
            .map(|e| json!({"Id": e["Id"], "SenderFault": true, "Code": "InvalidMessageContents", "Message": SQS_INVALID_CHARACTERS}))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_refuses_what_it_does_not_allow() {
        let one = |body: &str| {
            json!({"QueueUrl": "q", "MessageBody": body})
                .to_string()
                .into_bytes()
        };
        assert!(matches!(
            sqs_characters("AmazonSQS.SendMessage", &one("a\u{FFFE}")),
            SqsCheck::Refuse
        ));
        assert!(matches!(
            sqs_characters("AmazonSQS.SendMessage", &one("a\\ufffe \u{1F600} \t")),
            SqsCheck::Fine
        ));
        let batch = json!({"QueueUrl": "q", "Entries": [
            {"Id": "0", "MessageBody": "fine"}, {"Id": "1", "MessageBody": "bad\u{FFFF}"}]});
        match sqs_characters("AmazonSQS.SendMessageBatch", batch.to_string().as_bytes()) {
            SqsCheck::Entries { rest, failed } => {
                assert_eq!(rest["Entries"], json!([{"Id": "0", "MessageBody": "fine"}]));
                assert_eq!(failed[0]["Id"], "1");
                assert_eq!(failed[0]["Code"], "InvalidMessageContents");
            }
            _ => panic!("not split"),
        }
    }
}
