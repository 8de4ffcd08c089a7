use deliver::Deliver;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use shared::services::Services;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let services = Services::from_env().await?;
    let deliver = Deliver::from_services(&services)?;
    let deliver = &deliver;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        Ok::<_, Error>(deliver.handle(event.payload).await)
    }))
    .await
}
