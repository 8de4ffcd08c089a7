// Release builds abort on panic (see the workspace's release profile): no panicking shortcuts.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
// The batch handler's future nests deeply (jobs, attempts, records under deadlines).
#![recursion_limit = "256"]
use deliver::Deliver;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::storage::services::Services;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::runtime::logging::init();
    let services = Services::from_env().await?;
    let deliver = Deliver::from_services(&services)?;
    let deliver = &deliver;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        let deadline = shared::runtime::deadline::from_epoch_ms(event.context.deadline);
        let work = deliver.handle_until(event.payload, deadline);
        Ok::<_, Error>(
            shared::runtime::logging::with_request_id(event.context.request_id, work).await,
        )
    }))
    .await
}
