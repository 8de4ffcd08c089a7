#![recursion_limit = "256"]
// Release builds abort on panic (see the workspace's release profile): no panicking shortcuts.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
use ingest::Ingest;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::storage::services::Services;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::runtime::logging::init();
    let services = Services::from_env().await?;
    let ingest = Ingest::from_services(&services);
    let ingest = &ingest;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let deadline = shared::runtime::deadline::from_epoch_ms(event.context.deadline);
            let work = ingest.invoke_until(event.payload, deadline);
            shared::runtime::logging::with_request_id(event.context.request_id, work)
                .await
                .map_err(Error::from)
        },
    ))
    .await
}
