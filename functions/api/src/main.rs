// Release builds abort on panic (see the workspace's release profile): no panicking shortcuts.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
use api::Api;
use lambda_http::{service_fn, Error, Request, RequestExt};
use shared::storage::services::Services;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::runtime::logging::init();
    let services = Services::from_env().await?;
    let admin_key_sha256 = std::env::var("ADMIN_API_KEY_SHA256")
        .map_err(|_| "missing environment variable ADMIN_API_KEY_SHA256")?;
    let api = Api::new(&services, admin_key_sha256)?;
    let api = &api;
    lambda_http::run(service_fn(move |request: Request| async move {
        let context = request.lambda_context_ref();
        let request_id = context.map(|c| c.request_id.clone());
        let deadline = context.map_or_else(
            || std::time::Instant::now() + std::time::Duration::from_secs(30),
            |c| shared::runtime::deadline::from_epoch_ms(c.deadline),
        );
        let work = api.handle_until(request, deadline);
        Ok::<_, Error>(
            shared::runtime::logging::with_request_id(request_id.unwrap_or_default(), work).await,
        )
    }))
    .await
}
