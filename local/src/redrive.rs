//! Puts the messages of a dead-letter queue back on the queue they came from, after the cause
//! is fixed (an outage that outlasted the receives, a bug): `make redrive` locally,
//! `popup-local redrive --from DLQ_URL --to QUEUE_URL` against AWS (with the usual AWS
//! credentials; the console's "Start DLQ redrive" does the same). A message is deleted from the
//! DLQ only once it is on its queue, so a failure midway loses nothing (at worst a message is
//! there twice, which the functions de-duplicate).

use std::collections::HashSet;
use std::path::Path;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use serde_yaml::Value;

use crate::provision::{aws_err, bad, get, ProvisionError};

/// Pairs of (dead-letter queue, its source queue) by logical id, from the template's
/// `RedrivePolicy`s.
pub fn dead_letter_pairs(template: &Path) -> Result<Vec<(String, String)>, ProvisionError> {
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(template)?)?;
    let resources = get(&doc, "Resources")
        .and_then(Value::as_mapping)
        .ok_or_else(|| bad("no Resources"))?;
    let mut pairs = Vec::new();
    for (id, resource) in resources {
        let Some(target) = get(resource, "Properties")
            .and_then(|p| get(p, "RedrivePolicy"))
            .and_then(|r| get(r, "deadLetterTargetArn"))
        else {
            continue;
        };
        let Value::Tagged(tagged) = target else {
            return Err(bad("deadLetterTargetArn is not !GetAtt X.Arn"));
        };
        let dlq = tagged
            .value
            .as_str()
            .and_then(|t| t.strip_suffix(".Arn"))
            .ok_or_else(|| bad("deadLetterTargetArn is not !GetAtt X.Arn"))?;
        pairs.push((dlq.to_owned(), id.as_str().unwrap_or_default().to_owned()));
    }
    Ok(pairs)
}

/// Moves every message of `dlq_url` to `queue_url`, ten at a time, keeping bodies and
/// message attributes. Returns how many moved.
pub async fn redrive(
    sqs: &aws_sdk_sqs::Client,
    dlq_url: &str,
    queue_url: &str,
) -> Result<usize, ProvisionError> {
    let mut moved = 0;
    loop {
        let received = sqs
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .map_err(aws_err)?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(moved);
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_message_body(m.body.clone())
                    .set_message_attributes(m.message_attributes.clone())
                    // The venue's fair-queue group goes back with it.
                    .set_message_group_id(
                        m.attributes
                            .as_ref()
                            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                            .cloned(),
                    )
                    .build()
                    .map_err(aws_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sent = sqs
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(aws_err)?;
        let ok: HashSet<String> = sent.successful.into_iter().map(|s| s.id).collect();
        let done: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter(|(i, _)| ok.contains(&i.to_string()))
            .filter_map(|(i, m)| crate::esm::delete_entry(i, m))
            .collect();
        if done.is_empty() {
            return Err(ProvisionError::Aws(format!(
                "SQS refused every message sent back to {queue_url}"
            )));
        }
        moved += done.len();
        sqs.delete_message_batch()
            .queue_url(dlq_url)
            .set_entries(Some(done))
            .send()
            .await
            .map_err(aws_err)?;
    }
}
