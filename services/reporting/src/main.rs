//! `finflow-reporting`: the platform's service `main` around [`finflow_reporting::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    finflow_platform::service::main::<finflow_reporting::Config, _, _>(
        finflow_reporting::SERVICE,
        finflow_reporting::run,
    )
    .await
}
