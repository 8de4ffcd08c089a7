use api::Api;
use lambda_http::{service_fn, Error, Request};
use shared::secret::Secret;
use shared::services::Services;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    let services = Services::from_env().await?;
    let admin_key =
        std::env::var("ADMIN_API_KEY").map_err(|_| "missing environment variable ADMIN_API_KEY")?;
    let api = Api::new(&services, Secret::from_config(admin_key))?;
    let api = &api;
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, Error>(api.handle(request).await)
    }))
    .await
}
