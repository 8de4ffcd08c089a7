//! Least privilege, both ways: for each function, what its code can call against what its
//! policy in the template grants. `popup-local iam-audit` runs it after the whole test suite.
//!
//! - **Actions, from the binary.** The linker keeps only the code a binary can reach, so the
//!   AWS SDK operations linked into `target/debug/<function>` are the operations its code can
//!   call. Each is mapped to its IAM action (a batch operation of SQS needs the single one's
//!   permission) and compared with the actions the function's `Policies` grant.
//! - **Resources, from the run.** moto logs every distinct (identity, action, resource) it
//!   authorised during the tests (`scripts/moto_server.py`). Each function's calls, resources
//!   mapped back to the template's logical ids, are compared with the (action, resource) pairs
//!   its policy grants: a pair never used in the whole suite is reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde_yaml::Value;

use crate::iam::{function_statements, grants, Statement};
use crate::provision::{bad, get, ProvisionError, Resolver};

/// Services whose operations a binary links without calling them: `aws-config`'s credential
/// providers (web identity, assume role) link STS; on Lambda the credentials come from the
/// environment, so they never run.
const LINKED_NOT_CALLED: [&str; 1] = ["sts"];

/// What the audit found: lines to print, and whether everything matched.
pub struct Report {
    pub lines: Vec<String>,
    pub ok: bool,
}

impl Report {
    fn problem(&mut self, line: String) {
        self.ok = false;
        self.lines.push(format!("  MISMATCH {line}"));
    }
}

/// The template's functions: logical id → binary name.
fn functions(doc: &Value) -> Result<BTreeMap<String, String>, ProvisionError> {
    let resources = get(doc, "Resources")
        .and_then(Value::as_mapping)
        .ok_or_else(|| bad("no Resources"))?;
    Ok(resources
        .iter()
        .filter(|(_, r)| {
            get(r, "Type").and_then(Value::as_str) == Some("AWS::Serverless::Function")
        })
        .filter_map(|(id, r)| {
            let binary = get(r, "Metadata")
                .and_then(|m| get(m, "BuildProperties"))
                .and_then(|b| get(b, "Binary"))
                .and_then(Value::as_str)?;
            Some((id.as_str()?.to_owned(), binary.to_owned()))
        })
        .collect())
}

/// Each function's statements with resources as logical ids (`EndpointsTable`,
/// `ApiKeysTable/index/by_venue`, …).
fn logical_statements(doc: &Value) -> Result<BTreeMap<String, Vec<Statement>>, ProvisionError> {
    let resources = get(doc, "Resources")
        .and_then(Value::as_mapping)
        .ok_or_else(|| bad("no Resources"))?;
    let ids: HashMap<String, String> = resources
        .keys()
        .filter_map(|k| k.as_str())
        .map(|k| (k.to_owned(), k.to_owned()))
        .collect();
    let physical = BTreeMap::new();
    let parameters = HashMap::new();
    let resolver = Resolver::new(doc, &physical, &ids, &parameters);
    functions(doc)?
        .into_keys()
        .map(|f| function_statements(doc, &resolver, &f).map(|s| (f, s)))
        .collect()
}

/// `aws_sdk_dynamodb::operation::batch_get_item` → `dynamodb:BatchGetItem`.
pub fn iam_action(service: &str, operation: &str) -> String {
    let pascal: String = operation
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let action = format!("{service}:{pascal}");
    match action.as_str() {
        "sqs:SendMessageBatch" => "sqs:SendMessage".into(),
        "sqs:DeleteMessageBatch" => "sqs:DeleteMessage".into(),
        "sqs:ChangeMessageVisibilityBatch" => "sqs:ChangeMessageVisibility".into(),
        _ => action,
    }
}

/// The IAM actions of the AWS SDK operations linked into a binary (`nm` of its symbols).
pub fn linked_actions(binary: &Path) -> Result<BTreeSet<String>, ProvisionError> {
    let out = std::process::Command::new("nm")
        .arg("--demangle")
        .arg(binary)
        .output()
        .map_err(|e| bad(format!("running nm on {}: {e}", binary.display())))?;
    if !out.status.success() {
        return Err(bad(format!(
            "nm {}: {} (build the functions first: cargo build -p api -p ingest -p deliver)",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut actions = BTreeSet::new();
    for (at, _) in text.match_indices("aws_sdk_") {
        let rest = &text[at + "aws_sdk_".len()..];
        let Some((service, rest)) = rest.split_once("::operation::") else {
            continue;
        };
        if !service.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        let operation: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        if operation.is_empty() || LINKED_NOT_CALLED.contains(&service) {
            continue;
        }
        actions.insert(iam_action(service, &operation));
    }
    Ok(actions)
}

/// One line of moto's access log.
#[derive(serde::Deserialize)]
struct Access {
    principal: String,
    action: String,
    resource: String,
}

/// The calls each function made in a test run, as (action, logical resource).
fn calls_by_function(
    log: &str,
    functions: &BTreeSet<String>,
    kms_keys: &[String],
) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for line in log.lines() {
        let Ok(access) = serde_json::from_str::<Access>(line) else {
            continue;
        };
        let user = access.principal.rsplit('/').next().unwrap_or_default();
        let Some((prefix, function)) = functions
            .iter()
            .find_map(|f| user.strip_suffix(&format!("-{f}")).map(|p| (p, f)))
        else {
            continue;
        };
        let resource = logical_resource(&access.resource, prefix, kms_keys);
        out.entry(function.clone())
            .or_default()
            .insert((access.action, resource));
    }
    out
}

/// `arn:aws:dynamodb:…:table/{prefix}-EndpointsTable` → `EndpointsTable`;
/// `arn:aws:sqs:…:{prefix}-DeliveryQueue` → `DeliveryQueue`; a KMS key → the template's key.
fn logical_resource(arn: &str, prefix: &str, kms_keys: &[String]) -> String {
    if arn.starts_with("arn:aws:kms:") && kms_keys.len() == 1 {
        return kms_keys[0].clone();
    }
    let name = match arn.split_once(":table/") {
        Some((_, table)) => table,
        None => arn.rsplit(':').next().unwrap_or(arn),
    };
    name.strip_prefix(&format!("{prefix}-"))
        .unwrap_or(name)
        .to_owned()
}

/// Compares, for each function of `template`, the actions linked into its binary (under
/// `binaries`) and the calls in moto's `access_log` with what its policy grants.
pub fn audit(
    template: &Path,
    binaries: &Path,
    access_log: &Path,
) -> Result<Report, ProvisionError> {
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(template)?)?;
    let statements = logical_statements(&doc)?;
    let kms_keys: Vec<String> = get(&doc, "Resources")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter(|(_, r)| get(r, "Type").and_then(Value::as_str) == Some("AWS::KMS::Key"))
        .filter_map(|(id, _)| id.as_str().map(str::to_owned))
        .collect();
    let log = std::fs::read_to_string(access_log)?;
    let names: BTreeSet<String> = statements.keys().cloned().collect();
    let calls = calls_by_function(&log, &names, &kms_keys);
    let mut report = Report {
        lines: Vec::new(),
        ok: true,
    };
    for (function, binary) in functions(&doc)? {
        let all = &statements[&function];
        let own: Vec<&Statement> = all.iter().filter(|s| !s.from_event_source).collect();
        let granted_actions: BTreeSet<String> =
            own.iter().flat_map(|s| s.actions.iter().cloned()).collect();
        let linked = linked_actions(&binaries.join(&binary))?;
        report.lines.push(format!(
            "{function} ({binary}): links {} AWS actions, its policy grants {} actions on {} (action, resource) pairs",
            linked.len(),
            granted_actions.len(),
            grants(own.iter().copied()).len()
        ));
        for action in linked.difference(&granted_actions) {
            report.problem(format!(
                "{function}: its code can call {action}; its policy does not grant it"
            ));
        }
        for action in granted_actions.difference(&linked) {
            report.problem(format!(
                "{function}: its policy grants {action}; its code never calls it"
            ));
        }
        let called = calls.get(&function).cloned().unwrap_or_default();
        let granted_all = grants(all.iter());
        for (action, resource) in called.difference(&granted_all) {
            report.problem(format!(
                "{function}: called {action} on {resource} in the tests; not granted"
            ));
        }
        for (action, resource) in grants(own.iter().copied()).difference(&called) {
            report.problem(format!(
                "{function}: grants {action} on {resource}; never called in the whole test run"
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_map_to_their_iam_actions() {
        assert_eq!(
            iam_action("dynamodb", "batch_get_item"),
            "dynamodb:BatchGetItem"
        );
        assert_eq!(iam_action("sqs", "send_message_batch"), "sqs:SendMessage");
        assert_eq!(
            iam_action("sqs", "change_message_visibility_batch"),
            "sqs:ChangeMessageVisibility"
        );
        assert_eq!(
            iam_action("kms", "generate_data_key"),
            "kms:GenerateDataKey"
        );
    }

    #[test]
    fn resources_map_back_to_logical_ids() {
        let keys = vec!["SecretsKey".to_owned()];
        assert_eq!(
            logical_resource(
                "arn:aws:dynamodb:us-east-1:123456789012:table/t1-x-ApiKeysTable/index/by_venue",
                "t1-x",
                &keys
            ),
            "ApiKeysTable/index/by_venue"
        );
        assert_eq!(
            logical_resource(
                "arn:aws:sqs:us-east-1:123456789012:popup-dev-DeliveryQueue",
                "popup-dev",
                &keys
            ),
            "DeliveryQueue"
        );
        assert_eq!(
            logical_resource("arn:aws:kms:us-east-1:123456789012:key/abc", "p", &keys),
            "SecretsKey"
        );
    }

    #[test]
    fn the_template_resolves_to_logical_grants() {
        let doc: Value =
            serde_yaml::from_str(&std::fs::read_to_string(crate::default_template()).unwrap())
                .unwrap();
        let statements = logical_statements(&doc).unwrap();
        let api = grants(statements["ApiFunction"].iter());
        assert!(api.contains(&(
            "dynamodb:Query".to_owned(),
            "ApiKeysTable/index/by_venue".to_owned()
        )));
        let deliver = grants(statements["DeliverFunction"].iter());
        assert!(deliver.contains(&("sqs:ReceiveMessage".to_owned(), "DeliveryQueue".to_owned())));
    }
}

#[cfg(test)]
mod one_generation {
    const RUSTCRYPTO: [&str; 8] = [
        "sha2",
        "hmac",
        "digest",
        "aes-gcm",
        "aead",
        "cipher",
        "crypto-common",
        "block-buffer",
    ];

    /// The versions of `name` a Cargo.lock holds.
    fn versions<'a>(lock: &'a str, name: &str) -> Vec<&'a str> {
        lock.split("[[package]]")
            .filter(|p| p.contains(&format!("\nname = \"{name}\"\n")))
            .filter_map(|p| p.lines().find(|l| l.starts_with("version = ")))
            .collect()
    }

    /// The binaries link one generation of the RustCrypto crates (the AWS SDK's and ours):
    /// two would mean two copies of SHA-256 and HMAC in every binary, and two to keep
    /// patched.
    #[test]
    fn the_lock_has_one_version_of_each_rustcrypto_crate() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        for name in RUSTCRYPTO {
            let found = versions(&lock, name);
            assert_eq!(found.len(), 1, "{name}: {found:?}");
        }
        // Two generations side by side are seen.
        let two = format!("{lock}\n[[package]]\nname = \"sha2\"\nversion = \"0.10.9\"\n");
        assert_eq!(versions(&two, "sha2").len(), 2);
    }
}
