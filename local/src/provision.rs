//! Creates the tables and queues of `infra/template.yaml` on the local AWS endpoint (moto) and
//! resolves the functions' environment and queue triggers from the same template, so that the
//! code runs against exactly what the template defines.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_yaml::Value;

use crate::iam::{self, Identity};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("reading the template: {0}")]
    Read(#[from] std::io::Error),
    #[error("parsing the template: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("template: {0}")]
    Template(String),
    #[error("AWS: {0}")]
    Aws(String),
}

pub(crate) fn aws_err(e: impl std::error::Error + 'static) -> ProvisionError {
    ProvisionError::Aws(shared::model::error::error_chain(&e))
}

pub(crate) fn bad(message: impl Into<String>) -> ProvisionError {
    ProvisionError::Template(message.into())
}

/// A queue-triggered function, as its `Events: … Type: SQS` entry declares it.
#[derive(Clone, Debug)]
pub struct QueueTrigger {
    pub function: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: i32,
    /// `MaximumBatchingWindowInSeconds`: how long to gather a fuller batch.
    pub batching_window: std::time::Duration,
    pub reports_batch_item_failures: bool,
    /// `ScalingConfig.MaximumConcurrency`: how many batches run at once at most (Lambda's
    /// default without it: as many as the account allows; here 1,000).
    pub max_concurrency: usize,
    /// The function's `Timeout`: Lambda stops an invocation there.
    pub timeout: std::time::Duration,
}

/// A route of the HTTP API, as a function's `Events: … Type: HttpApi` entry declares it, with
/// the throttle API Gateway keeps for it (its own `RouteSettings`, or the API's
/// `DefaultRouteSettings`): requests a second in the steady state, and at once.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    pub function: String,
    /// `GET`, `POST`, … or `ANY`.
    pub method: String,
    /// `/venues/{venue_id}/events`, `/{proxy+}`, …
    pub path: String,
    pub rate: Option<f64>,
    pub burst: Option<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct Provisioned {
    /// Logical id → physical name (tables) or URL (queues).
    pub physical: BTreeMap<String, String>,
    /// Function logical id → its environment variables.
    pub function_env: BTreeMap<String, HashMap<String, String>>,
    pub triggers: Vec<QueueTrigger>,
    /// Functions run on a `Schedule` event, with its rate.
    pub schedules: Vec<(String, std::time::Duration)>,
    /// The HTTP API's routes, with their throttles.
    pub routes: Vec<HttpRoute>,
    /// Each function's `Timeout` (its own, or the template's `Globals`; Lambda's default, 3 s,
    /// without either).
    pub timeouts: BTreeMap<String, std::time::Duration>,
    /// Logical id → ARN (tables, queues, the KMS key).
    pub arns: BTreeMap<String, String>,
    /// The IAM identity of each function (by logical id) and of the event sources
    /// ([`iam::EVENT_SOURCE`]).
    pub identities: BTreeMap<String, Identity>,
    /// The tables' keys and indexes, for the capacity meter ([`crate::capacity`]).
    pub tables: Vec<crate::capacity::TableKeys>,
}

impl Provisioned {
    pub fn env_of(&self, function: &str) -> Result<&HashMap<String, String>, ProvisionError> {
        self.function_env
            .get(function)
            .ok_or_else(|| bad(format!("no function {function}")))
    }

    pub fn identity_of(&self, name: &str) -> Result<&Identity, ProvisionError> {
        self.identities
            .get(name)
            .ok_or_else(|| bad(format!("no identity for {name}")))
    }

    pub fn trigger_of(&self, function: &str) -> Result<&QueueTrigger, ProvisionError> {
        self.triggers
            .iter()
            .find(|t| t.function == function)
            .ok_or_else(|| bad(format!("{function} has no SQS trigger")))
    }
}

pub(crate) fn get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.as_mapping().and_then(|m| m.get(key))
}

pub(crate) fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn str_at(value: &Value, key: &str) -> Result<String, ProvisionError> {
    get(value, key)
        .and_then(scalar)
        .ok_or_else(|| bad(format!("missing {key}")))
}

/// Provisions every `AWS::DynamoDB::Table` and `AWS::SQS::Queue` of the template under
/// `{prefix}-{LogicalId}` names. `parameters` override the template's parameter defaults.
pub async fn provision(
    aws: &SdkConfig,
    template: &Path,
    prefix: &str,
    parameters: &HashMap<String, String>,
    queue_overrides: &HashMap<String, HashMap<String, String>>,
) -> Result<Provisioned, ProvisionError> {
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(template)?)?;
    let resources = get(&doc, "Resources")
        .and_then(Value::as_mapping)
        .ok_or_else(|| bad("no Resources"))?;
    let ddb = aws_sdk_dynamodb::Client::new(aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    let kms = aws_sdk_kms::Client::new(aws);
    let mut out = Provisioned::default();
    let mut arns: HashMap<String, String> = HashMap::new();

    for (id, resource) in resources {
        let id = id.as_str().ok_or_else(|| bad("resource id"))?.to_owned();
        let kind = str_at(resource, "Type")?;
        let props = get(resource, "Properties").cloned().unwrap_or(Value::Null);
        let name = format!("{prefix}-{id}");
        match kind.as_str() {
            "AWS::KMS::Key" => {
                // Found again by alias, so a restarted stack opens what it sealed before.
                let alias = format!("alias/{name}");
                let existing = kms.describe_key().key_id(&alias).send().await;
                let key = match existing {
                    Ok(out) => out.key_metadata.map(|m| (m.key_id, m.arn)),
                    Err(_) => {
                        let created = kms
                            .create_key()
                            .description(format!("{name} (local)"))
                            .send()
                            .await
                            .map_err(aws_err)?
                            .key_metadata
                            .map(|m| (m.key_id, m.arn));
                        if let Some((key_id, _)) = &created {
                            kms.create_alias()
                                .alias_name(&alias)
                                .target_key_id(key_id)
                                .send()
                                .await
                                .map_err(aws_err)?;
                        }
                        created
                    }
                }
                .ok_or_else(|| ProvisionError::Aws("no key id".into()))?;
                let (key_id, arn) = key;
                arns.insert(
                    id.clone(),
                    arn.ok_or_else(|| ProvisionError::Aws("no key ARN".into()))?,
                );
                out.physical.insert(id, key_id);
            }
            "AWS::DynamoDB::Table" => {
                let arn = create_table(&ddb, &name, &props).await?;
                out.tables.push(table_keys(&id, &name, &arn, &props)?);
                arns.insert(id.clone(), arn);
                out.physical.insert(id, name);
            }
            "AWS::SQS::Queue" => {
                let mut attrs = HashMap::new();
                for key in [
                    "VisibilityTimeout",
                    "MessageRetentionPeriod",
                    "DelaySeconds",
                ] {
                    if let Some(v) = get(&props, key).and_then(scalar) {
                        attrs.insert(QueueAttributeName::from(key), v);
                    }
                }
                for (key, value) in queue_overrides.get(&id).into_iter().flatten() {
                    attrs.insert(QueueAttributeName::from(key.as_str()), value.clone());
                }
                let created = sqs
                    .create_queue()
                    .queue_name(&name)
                    .set_attributes(Some(attrs.clone()))
                    .send()
                    .await;
                let url = match created {
                    Ok(out) => out.queue_url,
                    // Already there with other attributes (changed by hand or by a test).
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_queue_name_exists()) =>
                    {
                        let url = sqs
                            .get_queue_url()
                            .queue_name(&name)
                            .send()
                            .await
                            .map_err(aws_err)?
                            .queue_url;
                        sqs.set_queue_attributes()
                            .set_queue_url(url.clone())
                            .set_attributes(Some(attrs))
                            .send()
                            .await
                            .map_err(aws_err)?;
                        url
                    }
                    Err(e) => return Err(aws_err(e)),
                }
                .ok_or_else(|| ProvisionError::Aws("no queue URL".into()))?;
                let arn = sqs
                    .get_queue_attributes()
                    .queue_url(&url)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(aws_err)?
                    .attributes
                    .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
                    .ok_or_else(|| ProvisionError::Aws("no queue ARN".into()))?;
                arns.insert(id.clone(), arn);
                out.physical.insert(id, url);
            }
            _ => {}
        }
    }

    let resolver = Resolver {
        doc: &doc,
        physical: &out.physical,
        arns: &arns,
        parameters,
    };

    // Redrive policies name other queues, so they are set once every queue exists.
    for (id, resource) in resources {
        let Some(policy) = get(resource, "Properties").and_then(|p| get(p, "RedrivePolicy")) else {
            continue;
        };
        let id = id.as_str().unwrap_or_default();
        let target = resolver.resolve(
            get(policy, "deadLetterTargetArn").ok_or_else(|| bad("deadLetterTargetArn"))?,
        )?;
        let max = str_at(policy, "maxReceiveCount")?;
        let redrive = serde_json::json!({"deadLetterTargetArn": target, "maxReceiveCount": max});
        sqs.set_queue_attributes()
            .queue_url(&out.physical[id])
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .send()
            .await
            .map_err(aws_err)?;
    }

    let globals = get(&doc, "Globals")
        .and_then(|g| get(g, "Function"))
        .and_then(|f| get(f, "Environment"))
        .and_then(|e| get(e, "Variables"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    for (id, resource) in resources {
        if get(resource, "Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
            continue;
        }
        let id = id.as_str().unwrap_or_default().to_owned();
        let props = get(resource, "Properties").cloned().unwrap_or(Value::Null);
        let own = get(&props, "Environment")
            .and_then(|e| get(e, "Variables"))
            .and_then(Value::as_mapping)
            .cloned()
            .unwrap_or_default();
        let mut env = HashMap::new();
        for (k, v) in globals.iter().chain(own.iter()) {
            let k = k.as_str().ok_or_else(|| bad("variable name"))?;
            env.insert(k.to_owned(), resolver.resolve(v)?);
        }
        out.function_env.insert(id.clone(), env);
        let timeout = get(&props, "Timeout")
            .or_else(|| {
                get(&doc, "Globals")
                    .and_then(|g| get(g, "Function"))
                    .and_then(|f| get(f, "Timeout"))
            })
            .map(|t| resolver.resolve(t))
            .transpose()?
            .map(|t| t.parse::<u64>().map_err(|_| bad("Timeout is not a number")))
            .transpose()?
            .unwrap_or(3);
        let timeout = std::time::Duration::from_secs(timeout);
        out.timeouts.insert(id.clone(), timeout);
        for (_, event) in get(&props, "Events")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            if get(event, "Type").and_then(Value::as_str) == Some("Schedule") {
                let expression = get(event, "Properties")
                    .and_then(|p| get(p, "Schedule"))
                    .and_then(scalar)
                    .ok_or_else(|| bad("Schedule event without Schedule"))?;
                out.schedules.push((id.clone(), rate(&expression)?));
                continue;
            }
            if get(event, "Type").and_then(Value::as_str) == Some("HttpApi") {
                out.routes
                    .push(http_route(&doc, &resolver, &id, get(event, "Properties"))?);
                continue;
            }
            if get(event, "Type").and_then(Value::as_str) != Some("SQS") {
                continue;
            }
            let p = get(event, "Properties").ok_or_else(|| bad("SQS event properties"))?;
            let queue_arn = resolver.resolve(get(p, "Queue").ok_or_else(|| bad("Queue"))?)?;
            let queue_id = arns
                .iter()
                .find(|(_, arn)| **arn == queue_arn)
                .map(|(qid, _)| qid.clone())
                .ok_or_else(|| bad("SQS event of an unknown queue"))?;
            out.triggers.push(QueueTrigger {
                function: id.clone(),
                queue_url: out.physical[&queue_id].clone(),
                queue_arn,
                batch_size: get(p, "BatchSize")
                    .and_then(scalar)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(10),
                batching_window: std::time::Duration::from_secs(
                    get(p, "MaximumBatchingWindowInSeconds")
                        .and_then(scalar)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                ),
                reports_batch_item_failures: get(p, "FunctionResponseTypes")
                    .and_then(Value::as_sequence)
                    .is_some_and(|s| {
                        s.iter()
                            .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
                    }),
                max_concurrency: match get(p, "ScalingConfig")
                    .and_then(|c| get(c, "MaximumConcurrency"))
                {
                    Some(value) => resolver
                        .resolve(value)?
                        .parse()
                        .map_err(|_| bad("MaximumConcurrency is not a number"))?,
                    None => 1000,
                },
                timeout,
            });
        }
    }

    // Each function under an identity of its own, and the event sources under theirs.
    let iam = aws_sdk_iam::Client::new(aws);
    let functions: Vec<String> = out.function_env.keys().cloned().collect();
    for function in functions {
        let statements = iam::function_statements(&doc, &resolver, &function)?;
        let identity =
            iam::ensure_identity(&iam, &format!("{prefix}-{function}"), &statements).await?;
        out.identities.insert(function, identity);
    }
    let ingest_queues: Vec<String> = out
        .triggers
        .iter()
        .filter(|t| t.function == crate::INGEST_FUNCTION)
        .map(|t| t.queue_arn.clone())
        .collect();
    if !ingest_queues.is_empty() {
        let statements = [iam::Statement {
            actions: vec!["sqs:SendMessage".into()],
            resources: ingest_queues,
            from_event_source: false,
        }];
        let identity = iam::ensure_identity(
            &iam,
            &format!("{prefix}-{}", iam::EVENT_SOURCE),
            &statements,
        )
        .await?;
        out.identities
            .insert(iam::EVENT_SOURCE.to_owned(), identity);
    }
    out.arns = arns.into_iter().collect();
    Ok(out)
}

/// An `HttpApi` event's route and throttle: the event's `RouteSettings` over the API's
/// `DefaultRouteSettings` (the `ApiId` it names).
fn http_route(
    doc: &Value,
    resolver: &Resolver,
    function: &str,
    props: Option<&Value>,
) -> Result<HttpRoute, ProvisionError> {
    let props = props.ok_or_else(|| bad("HttpApi event properties"))?;
    let api_defaults = get(props, "ApiId")
        .and_then(|r| match r {
            Value::Tagged(tagged) if tagged.tag == "Ref" => tagged.value.as_str(),
            _ => get(r, "Ref").and_then(Value::as_str),
        })
        .and_then(|api| get(doc, "Resources").and_then(|r| get(r, api)))
        .and_then(|api| get(api, "Properties"))
        .and_then(|p| get(p, "DefaultRouteSettings"));
    let own = get(props, "RouteSettings");
    let setting = |name: &str| -> Result<Option<String>, ProvisionError> {
        own.and_then(|s| get(s, name))
            .or_else(|| api_defaults.and_then(|s| get(s, name)))
            .map(|v| resolver.resolve(v))
            .transpose()
    };
    let number_of = |name: &str| -> Result<Option<f64>, ProvisionError> {
        setting(name)?
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| bad(format!("{name} is not a number")))
            })
            .transpose()
    };
    Ok(HttpRoute {
        function: function.to_owned(),
        method: str_at(props, "Method")?.to_ascii_uppercase(),
        path: str_at(props, "Path")?,
        rate: number_of("ThrottlingRateLimit")?,
        burst: number_of("ThrottlingBurstLimit")?.map(|b| b as u32),
    })
}

pub struct Resolver<'a> {
    doc: &'a Value,
    physical: &'a BTreeMap<String, String>,
    arns: &'a HashMap<String, String>,
    parameters: &'a HashMap<String, String>,
}

impl<'a> Resolver<'a> {
    pub fn new(
        doc: &'a Value,
        physical: &'a BTreeMap<String, String>,
        arns: &'a HashMap<String, String>,
        parameters: &'a HashMap<String, String>,
    ) -> Self {
        Self {
            doc,
            physical,
            arns,
            parameters,
        }
    }

    /// Resolves the intrinsics the template uses for values the code reads: plain scalars,
    /// `!Ref` (resources and parameters) and `!GetAtt Queue.Arn`.
    pub fn resolve(&self, value: &Value) -> Result<String, ProvisionError> {
        if let Some(s) = scalar(value) {
            return Ok(s);
        }
        let Value::Tagged(tagged) = value else {
            return Err(bad(format!("cannot resolve {value:?}")));
        };
        let target = scalar(&tagged.value).ok_or_else(|| bad("intrinsic argument"))?;
        match tagged.tag.to_string().trim_start_matches('!') {
            "Ref" => {
                if let Some(p) = self.physical.get(&target) {
                    return Ok(p.clone());
                }
                if let Some(v) = self.parameters.get(&target) {
                    return Ok(v.clone());
                }
                get(self.doc, "Parameters")
                    .and_then(|p| get(p, &target))
                    .and_then(|p| get(p, "Default"))
                    .and_then(scalar)
                    .ok_or_else(|| {
                        bad(format!(
                            "!Ref {target}: no such resource, and no value for the parameter"
                        ))
                    })
            }
            "GetAtt" => match target.split_once('.') {
                Some((id, "Arn")) if self.arns.contains_key(id) => Ok(self.arns[id].clone()),
                _ => Err(bad(format!("cannot resolve !GetAtt {target} locally"))),
            },
            "Sub" => self.substitute(&target),
            other => Err(bad(format!("cannot resolve !{other} locally"))),
        }
    }
}

/// Creates a table (unless it exists) and returns its ARN.
impl Resolver<'_> {
    /// `!Sub` with `${Resource.Arn}`, `${Resource}` and `${Parameter}` references.
    fn substitute(&self, template: &str) -> Result<String, ProvisionError> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| bad(format!("!Sub {template}: unclosed ${{")))?;
            let name = &rest[start + 2..start + end];
            let value = match name.split_once('.') {
                Some((id, "Arn")) => self
                    .arns
                    .get(id)
                    .cloned()
                    .ok_or_else(|| bad(format!("!Sub {template}: no ARN for {id}")))?,
                _ => self.resolve(&Value::Tagged(Box::new(serde_yaml::value::TaggedValue {
                    tag: serde_yaml::value::Tag::new("Ref"),
                    value: Value::String(name.to_owned()),
                })))?,
            };
            out.push_str(&value);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

async fn create_table(
    ddb: &aws_sdk_dynamodb::Client,
    name: &str,
    props: &Value,
) -> Result<String, ProvisionError> {
    let attribute_definitions = get(props, "AttributeDefinitions")
        .and_then(Value::as_sequence)
        .ok_or_else(|| bad("AttributeDefinitions"))?
        .iter()
        .map(|a| {
            AttributeDefinition::builder()
                .attribute_name(str_at(a, "AttributeName")?)
                .attribute_type(ScalarAttributeType::from(
                    str_at(a, "AttributeType")?.as_str(),
                ))
                .build()
                .map_err(aws_err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut create = ddb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(attribute_definitions))
        .set_key_schema(Some(key_schema(props)?));
    for gsi in get(props, "GlobalSecondaryIndexes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let projection = get(gsi, "Projection").ok_or_else(|| bad("Projection"))?;
        let non_key = get(projection, "NonKeyAttributes")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(scalar).collect());
        create = create.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(str_at(gsi, "IndexName")?)
                .set_key_schema(Some(key_schema(gsi)?))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::from(
                            str_at(projection, "ProjectionType")?.as_str(),
                        ))
                        .set_non_key_attributes(non_key)
                        .build(),
                )
                .build()
                .map_err(aws_err)?,
        );
    }
    let created = match create.send().await {
        Ok(out) => out.table_description.and_then(|d| d.table_arn),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            // Already provisioned (a restarted `make dev` on a running moto).
            return ddb
                .describe_table()
                .table_name(name)
                .send()
                .await
                .map_err(aws_err)?
                .table
                .and_then(|t| t.table_arn)
                .ok_or_else(|| ProvisionError::Aws("no table ARN".into()));
        }
        Err(e) => return Err(aws_err(e)),
    };
    let arn = created.ok_or_else(|| ProvisionError::Aws("no table ARN".into()))?;
    if let Some(ttl) = get(props, "TimeToLiveSpecification") {
        ddb.update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(str_at(ttl, "AttributeName")?)
                    .enabled(true)
                    .build()
                    .map_err(aws_err)?,
            )
            .send()
            .await
            .map_err(aws_err)?;
    }
    Ok(arn)
}

/// A table's keys and indexes as the template declares them.
fn table_keys(
    logical: &str,
    name: &str,
    arn: &str,
    props: &Value,
) -> Result<crate::capacity::TableKeys, ProvisionError> {
    use crate::capacity::{IndexKeys, Projected, TableKeys};
    let keys = |value: &Value| -> Result<(String, Option<String>), ProvisionError> {
        let mut hash = None;
        let mut range = None;
        for k in get(value, "KeySchema")
            .and_then(Value::as_sequence)
            .ok_or_else(|| bad("KeySchema"))?
        {
            match str_at(k, "KeyType")?.as_str() {
                "HASH" => hash = Some(str_at(k, "AttributeName")?),
                _ => range = Some(str_at(k, "AttributeName")?),
            }
        }
        Ok((hash.ok_or_else(|| bad("KeySchema without HASH"))?, range))
    };
    let (hash, range) = keys(props)?;
    let mut indexes = Vec::new();
    for gsi in get(props, "GlobalSecondaryIndexes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let (index_hash, index_range) = keys(gsi)?;
        let projection = get(gsi, "Projection").ok_or_else(|| bad("Projection"))?;
        let projection = match str_at(projection, "ProjectionType")?.as_str() {
            "ALL" => Projected::All,
            "KEYS_ONLY" => Projected::KeysOnly,
            _ => Projected::Include(
                get(projection, "NonKeyAttributes")
                    .and_then(Value::as_sequence)
                    .map(|s| s.iter().filter_map(scalar).collect())
                    .unwrap_or_default(),
            ),
        };
        indexes.push(IndexKeys {
            name: str_at(gsi, "IndexName")?,
            hash: index_hash,
            range: index_range,
            projection,
        });
    }
    Ok(TableKeys {
        logical: logical.to_owned(),
        name: name.to_owned(),
        arn: arn.to_owned(),
        hash,
        range,
        indexes,
    })
}

fn key_schema(value: &Value) -> Result<Vec<KeySchemaElement>, ProvisionError> {
    get(value, "KeySchema")
        .and_then(Value::as_sequence)
        .ok_or_else(|| bad("KeySchema"))?
        .iter()
        .map(|k| {
            KeySchemaElement::builder()
                .attribute_name(str_at(k, "AttributeName")?)
                .key_type(KeyType::from(str_at(k, "KeyType")?.as_str()))
                .build()
                .map_err(aws_err)
        })
        .collect()
}

/// `rate(1 minute)`, `rate(5 minutes)`, `rate(2 hours)`: the period of a schedule.
fn rate(expression: &str) -> Result<std::time::Duration, ProvisionError> {
    let inner = expression
        .strip_prefix("rate(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            bad(format!(
                "only rate(...) schedules run locally, not {expression}"
            ))
        })?;
    let (n, unit) = inner
        .split_once(' ')
        .ok_or_else(|| bad(format!("schedule {expression}")))?;
    let n: u64 = n
        .parse()
        .map_err(|_| bad(format!("schedule {expression}")))?;
    let unit = match unit.trim_end_matches('s') {
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return Err(bad(format!("schedule {expression}"))),
    };
    Ok(std::time::Duration::from_secs(n * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_is_capped_and_quiet_venues_are_watched() {
        let doc: Value =
            serde_yaml::from_str(&std::fs::read_to_string(crate::default_template()).unwrap())
                .unwrap();
        let resources = get(&doc, "Resources").unwrap();
        // The delivery queue's mapping has a concurrency cap, a parameter below the account's
        // default of 1,000.
        let scaling = get(resources, "DeliverFunction")
            .and_then(|f| get(f, "Properties"))
            .and_then(|p| get(p, "Events"))
            .and_then(|e| get(e, "Queue"))
            .and_then(|q| get(q, "Properties"))
            .and_then(|p| get(p, "ScalingConfig"))
            .and_then(|c| get(c, "MaximumConcurrency"))
            .expect("deliver's SQS event has ScalingConfig.MaximumConcurrency");
        let Value::Tagged(reference) = scaling else {
            panic!("MaximumConcurrency is not a !Ref")
        };
        let parameter = get(&doc, "Parameters")
            .and_then(|p| get(p, reference.value.as_str().unwrap()))
            .unwrap();
        let default: u32 = scalar(get(parameter, "Default").unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!((2..1000).contains(&default), "{default}");
        // An alarm on the age of the quiet venues' oldest job.
        let watched = resources.as_mapping().unwrap().values().any(|r| {
            get(r, "Properties")
                .and_then(|p| get(p, "MetricName"))
                .and_then(Value::as_str)
                == Some("ApproximateAgeOfOldestMessageInQuietGroups")
        });
        assert!(watched);
    }

    #[test]
    fn every_function_logs_to_a_group_of_its_own_with_a_retention() {
        let doc: Value =
            serde_yaml::from_str(&std::fs::read_to_string(crate::default_template()).unwrap())
                .unwrap();
        let resources = get(&doc, "Resources").unwrap().as_mapping().unwrap();
        let retention_default = get(&doc, "Parameters")
            .and_then(|p| get(p, "LogRetentionDays"))
            .and_then(|p| get(p, "Default"))
            .and_then(scalar);
        assert_eq!(retention_default.as_deref(), Some("30"));
        let tag_of = |v: &Value| match v {
            Value::Tagged(t) if t.tag == "Ref" => t.value.as_str().map(str::to_owned),
            _ => None,
        };
        for (id, resource) in resources {
            if get(resource, "Type").and_then(Value::as_str) != Some("AWS::Serverless::Function") {
                continue;
            }
            let config = get(resource, "Properties")
                .and_then(|p| get(p, "LoggingConfig"))
                .unwrap_or_else(|| panic!("{id:?} has no LoggingConfig"));
            assert_eq!(
                get(config, "LogFormat").and_then(scalar).as_deref(),
                Some("JSON")
            );
            let group = get(config, "LogGroup").and_then(tag_of).unwrap();
            let retention = get(resources.get(group.as_str()).unwrap(), "Properties")
                .and_then(|p| get(p, "RetentionInDays"))
                .and_then(tag_of);
            assert_eq!(retention.as_deref(), Some("LogRetentionDays"), "{group}");
        }
    }

    #[test]
    fn schedule_rates_are_read() {
        assert_eq!(super::rate("rate(1 minute)").unwrap().as_secs(), 60);
        assert_eq!(super::rate("rate(2 hours)").unwrap().as_secs(), 7200);
        assert!(super::rate("cron(0 * * * ? *)").is_err());
    }
}
