//! `popup-local`: the whole system on this machine, against the local AWS endpoint.
//!
//! `popup-local dev` provisions the template's tables and queues, serves the API and runs the
//! queue-triggered functions until Ctrl-C. `popup-local env` only provisions and prints the
//! functions' environment (for `cargo lambda watch`).

use std::net::SocketAddr;

use local::iam::{Identity, EVENT_SOURCE};
use local::{Stack, StackOptions, API_FUNCTION};

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,aws_config=warn,aws_smithy_runtime=warn".into()),
        )
        .init();
    let command = std::env::args().nth(1).unwrap_or_else(|| "dev".into());
    if command == "iam-audit" {
        return iam_audit();
    }
    if command == "redrive" {
        return redrive().await;
    }
    let port: u16 = var("API_PORT", "9000").parse()?;
    let admin_key = var("ADMIN_API_KEY", "dev-admin-key");
    let prefix = var("STACK_PREFIX", "popup-dev");
    let aws = aws_config::load_defaults(shared::storage::services::behavior_version()).await;
    let endpoint = var("AWS_ENDPOINT_URL", "(the default AWS endpoints)");
    let mut options = StackOptions::local(
        &prefix,
        SocketAddr::from(([127, 0, 0, 1], port)),
        &admin_key,
    );
    // DynamoDB's capacity per partition key: AWS's figures, times CAPACITY_SCALE (0.01 makes
    // a hot key at this machine's rates; `off`: not metered).
    options.capacity = match var("CAPACITY_SCALE", "1").as_str() {
        "off" => None,
        scale => Some(local::capacity::Budgets::scaled(scale.parse()?)),
    };

    // Stack parameters `make dev` passes through from the environment.
    for (variable, parameter) in [("VENUE_PUBLISH_RATE_LIMIT", "VenuePublishRateLimit")] {
        if let Ok(value) = std::env::var(variable) {
            if !value.is_empty() {
                options.parameters.insert(parameter.to_owned(), value);
            }
        }
    }

    if command == "env" {
        options.run_api = false;
        options.run_ingest = false;
        options.run_deliver = false;
        options.api_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let stack = Stack::start(aws, options).await?;
        let mut env: Vec<_> = stack.provisioned.env_of(API_FUNCTION)?.iter().collect();
        env.sort();
        for (k, v) in env {
            println!("{k}={v}");
        }
        return Ok(());
    }

    let stack = Stack::start(aws, options).await?;
    let credentials_file = var("CREDENTIALS_FILE", ".dev/aws-credentials");
    write_credentials(&stack, &credentials_file)?;
    println!();
    println!("Popup Webhooks is running locally.");
    println!("  API:           {}", stack.api_url);
    println!("  admin key:     {admin_key}   (authorization: Bearer {admin_key})");
    println!("  AWS endpoint:  {endpoint}");
    for (id, physical) in &stack.provisioned.physical {
        println!("  {id:<24} {physical}");
    }
    println!("  AWS credentials: {credentials_file}   (profiles `operator`: everything; `event-source`: send to the ingest queue only)");
    println!("  loopback destinations (http://127.0.0.1:…) are allow-listed.");
    if let Some(meter) = &stack.capacity {
        let b = meter.budgets();
        println!(
            "  DynamoDB capacity per partition key: {} read / {} write units a second (CAPACITY_SCALE)",
            b.key_read, b.key_write
        );
    }
    match demo_portal_link(&stack.api_url, &admin_key).await {
        Ok(link) => println!("  Settings → Webhooks of `demo-venue` (12 h): {link}"),
        Err(e) => println!("  (no portal link for the demo venue: {e})"),
    }
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    println!("stopping…");
    stack.stop().await;
    Ok(())
}

/// An AWS shared-credentials file for the people and event sources of this stack: `operator`
/// (the keys this process was started with, allowed everything) and `event-source` (allowed
/// only to send to the ingest queue).
fn write_credentials(stack: &Stack, path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let operator = Identity {
        user: "operator".into(),
        access_key_id: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
        secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
    };
    let event_source = stack.provisioned.identity_of(EVENT_SOURCE)?;
    let text = format!(
        "# Written by `make dev` for its moto: use with AWS_SHARED_CREDENTIALS_FILE={path}\n{}\n{}",
        operator.profile("operator"),
        event_source.profile(EVENT_SOURCE)
    );
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// `popup-local iam-audit [ACCESS_LOG]`: least privilege both ways (see `local::audit`), for
/// `make test` after the whole suite. The access log defaults to `$MOTO_DIR/access.jsonl`.
fn iam_audit() -> Result<(), Box<dyn std::error::Error>> {
    let log = std::env::args()
        .nth(2)
        .unwrap_or_else(|| format!("{}/access.jsonl", var("MOTO_DIR", ".dev")));
    let binaries = std::env::current_exe()?
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let report = local::audit::audit(
        &local::default_template(),
        &binaries,
        std::path::Path::new(&log),
    )?;
    for line in &report.lines {
        println!("{line}");
    }
    if !report.ok {
        return Err("the functions' policies and what they call differ (see above)".into());
    }
    println!("every function's policy grants exactly what its code calls");
    Ok(())
}

/// `popup-local redrive`: every DLQ of the local stack (`STACK_PREFIX`, `popup-dev` by
/// default) back onto its queue; `popup-local redrive --from DLQ_URL --to QUEUE_URL`: one
/// pair, anywhere (against AWS with the usual credentials).
async fn redrive() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let aws = aws_config::load_defaults(shared::storage::services::behavior_version()).await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let pairs = match (arg("--from"), arg("--to")) {
        (Some(from), Some(to)) => vec![(from, to)],
        (None, None) => {
            let prefix = var("STACK_PREFIX", "popup-dev");
            let mut pairs = Vec::new();
            for (dlq, queue) in local::redrive::dead_letter_pairs(&local::default_template())? {
                let url = |id: &str| {
                    let sqs = sqs.clone();
                    let name = format!("{prefix}-{id}");
                    async move {
                        sqs.get_queue_url()
                            .queue_name(&name)
                            .send()
                            .await
                            .map_err(|e| {
                                format!("{name}: {}", shared::model::error::error_chain(&e))
                            })
                            .map(|o| o.queue_url.unwrap_or_default())
                    }
                };
                pairs.push((url(&dlq).await?, url(&queue).await?));
            }
            pairs
        }
        _ => return Err("give both --from DLQ_URL and --to QUEUE_URL, or neither".into()),
    };
    for (from, to) in pairs {
        let moved = local::redrive::redrive(&sqs, &from, &to).await?;
        println!("{moved} message(s) moved from {from} to {to}");
    }
    Ok(())
}

/// A portal session for `demo-venue`, minted through the API like the platform would:
/// `POST /venues/demo-venue/portal-sessions` with the admin key (plain HTTP/1.1 on loopback).
async fn demo_portal_link(
    api_url: &str,
    admin_key: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = api_url.trim_start_matches("http://");
    let body = r#"{"ttl_seconds":43200}"#;
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let request = format!(
        "POST /venues/demo-venue/portal-sessions HTTP/1.1\r\nhost: {host}\r\n\
         authorization: Bearer {admin_key}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let json = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(json.trim())?;
    value["url"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the API answered {answer}").into())
}
