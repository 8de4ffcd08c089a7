use ingest::Ingest;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::services::Services;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let services = Services::from_env().await?;
    let ingest = Ingest::from_services(&services);
    let ingest = &ingest;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(ingest.handle(event.payload).await)
    }))
    .await
}
