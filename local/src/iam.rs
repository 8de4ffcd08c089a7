//! IAM identities for the local stack, made from the template: each function runs under a user
//! of its own whose policy is the function's `Policies` statements plus what SAM adds for its
//! SQS event source, with every resource resolved to the local ARN. moto enforces them (see
//! `scripts/moto_server.py`), so a call the template does not grant fails here as on AWS.
//!
//! Also the identities of people and event sources: `event-source` may only send to the
//! ingest queue.

use std::collections::BTreeSet;

use aws_config::SdkConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use serde_yaml::Value;

use crate::provision::{aws_err, bad, get, scalar, ProvisionError, Resolver};

/// What SAM grants a function for an `SQS` event (the poller runs under the function's role).
pub const SQS_EVENT_SOURCE_ACTIONS: [&str; 4] = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
];

/// The user name of the event sources' identity (after the stack's prefix).
pub const EVENT_SOURCE: &str = "event-source";

/// One `Allow` statement of a function's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    /// Added by SAM for an event source, not written in the function's `Policies`.
    pub from_event_source: bool,
}

/// An IAM user with its access key.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Identity {
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "popup-local",
        )
    }

    /// `base` (endpoint, region, retry and timeout settings) signed with this identity's keys.
    pub fn sdk_config(&self, base: &SdkConfig) -> SdkConfig {
        base.to_builder()
            .credentials_provider(SharedCredentialsProvider::new(self.credentials()))
            .build()
    }

    /// A profile of an AWS shared-credentials file.
    pub fn profile(&self, name: &str) -> String {
        format!(
            "[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            self.access_key_id, self.secret_access_key
        )
    }
}

fn strings(value: &Value, resolver: &Resolver<'_>) -> Result<Vec<String>, ProvisionError> {
    match value {
        Value::Sequence(items) => items.iter().map(|v| resolver.resolve(v)).collect(),
        other => Ok(vec![resolver.resolve(other)?]),
    }
}

/// The statements of `function`'s role, resources resolved by `resolver`.
pub fn function_statements(
    doc: &Value,
    resolver: &Resolver<'_>,
    function: &str,
) -> Result<Vec<Statement>, ProvisionError> {
    let props = get(doc, "Resources")
        .and_then(|r| get(r, function))
        .and_then(|f| get(f, "Properties"))
        .ok_or_else(|| bad(format!("no function {function}")))?;
    let mut out = Vec::new();
    for policy in get(props, "Policies")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let statements = get(policy, "Statement")
            .and_then(Value::as_sequence)
            .ok_or_else(|| {
                bad(format!(
                    "{function}: only `- Statement: [...]` policies are supported locally"
                ))
            })?;
        for statement in statements {
            if get(statement, "Effect").and_then(scalar).as_deref() != Some("Allow") {
                return Err(bad(format!(
                    "{function}: only Allow statements are supported"
                )));
            }
            out.push(Statement {
                actions: strings(
                    get(statement, "Action").ok_or_else(|| bad("statement without Action"))?,
                    resolver,
                )?,
                resources: strings(
                    get(statement, "Resource").ok_or_else(|| bad("statement without Resource"))?,
                    resolver,
                )?,
                from_event_source: false,
            });
        }
    }
    for (_, event) in get(props, "Events")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        if get(event, "Type").and_then(Value::as_str) != Some("SQS") {
            continue;
        }
        let queue = get(event, "Properties")
            .and_then(|p| get(p, "Queue"))
            .ok_or_else(|| bad("SQS event without Queue"))?;
        out.push(Statement {
            actions: SQS_EVENT_SOURCE_ACTIONS.map(str::to_owned).to_vec(),
            resources: vec![resolver.resolve(queue)?],
            from_event_source: true,
        });
    }
    Ok(out)
}

/// `(action, resource)` pairs of some statements.
pub fn grants<'a>(
    statements: impl IntoIterator<Item = &'a Statement>,
) -> BTreeSet<(String, String)> {
    statements
        .into_iter()
        .flat_map(|s| {
            s.actions
                .iter()
                .flat_map(move |a| s.resources.iter().map(move |r| (a.clone(), r.clone())))
        })
        .collect()
}

/// The policy document of some statements.
pub fn policy_document(statements: &[Statement]) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": statements.iter().map(|s| serde_json::json!({
            "Effect": "Allow",
            "Action": s.actions,
            "Resource": s.resources,
        })).collect::<Vec<_>>(),
    })
}

/// Makes (or remakes) the user `name` with exactly `statements` as its policy and a fresh
/// access key; older keys of the user are deleted.
pub async fn ensure_identity(
    iam: &aws_sdk_iam::Client,
    name: &str,
    statements: &[Statement],
) -> Result<Identity, ProvisionError> {
    match iam.create_user().user_name(name).send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_entity_already_exists_exception()) =>
        {
            let keys = iam
                .list_access_keys()
                .user_name(name)
                .send()
                .await
                .map_err(aws_err)?;
            for key in keys.access_key_metadata {
                if let Some(id) = key.access_key_id {
                    iam.delete_access_key()
                        .user_name(name)
                        .access_key_id(id)
                        .send()
                        .await
                        .map_err(aws_err)?;
                }
            }
        }
        Err(e) => return Err(aws_err(e)),
    }
    iam.put_user_policy()
        .user_name(name)
        .policy_name("template")
        .policy_document(policy_document(statements).to_string())
        .send()
        .await
        .map_err(aws_err)?;
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .map_err(aws_err)?
        .access_key
        .ok_or_else(|| ProvisionError::Aws("no access key".into()))?;
    Ok(Identity {
        user: name.to_owned(),
        access_key_id: key.access_key_id,
        secret_access_key: key.secret_access_key,
    })
}
