//! `popup-local`: the whole system on this machine, against the local AWS endpoint.
//!
//! `popup-local dev` provisions the template's tables and queues, serves the API and runs the
//! queue-triggered functions until Ctrl-C. `popup-local env` only provisions and prints the
//! functions' environment (for `cargo lambda watch`).

use std::net::SocketAddr;

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
    let port: u16 = var("API_PORT", "9000").parse()?;
    let admin_key = var("ADMIN_API_KEY", "dev-admin-key");
    let prefix = var("STACK_PREFIX", "popup-dev");
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let endpoint = var("AWS_ENDPOINT_URL", "(the default AWS endpoints)");
    let mut options = StackOptions::local(
        &prefix,
        SocketAddr::from(([127, 0, 0, 1], port)),
        &admin_key,
    );

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
    println!();
    println!("Popup Webhooks is running locally.");
    println!("  API:           {}", stack.api_url);
    println!("  admin key:     {admin_key}   (authorization: Bearer {admin_key})");
    println!("  AWS endpoint:  {endpoint}");
    for (id, physical) in &stack.provisioned.physical {
        println!("  {id:<24} {physical}");
    }
    println!("  loopback destinations (http://127.0.0.1:…) are allow-listed.");
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    println!("stopping…");
    stack.stop().await;
    Ok(())
}
