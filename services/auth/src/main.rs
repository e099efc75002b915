//! `finflow-auth`: the platform's service `main` around [`finflow_auth::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    finflow_platform::service::main::<finflow_auth::Config, _, _>(
        finflow_auth::SERVICE,
        finflow_auth::run,
    )
    .await
}
