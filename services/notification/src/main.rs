//! `finflow-notification`: the platform's service `main` around [`finflow_notification::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    finflow_platform::service::main::<finflow_notification::Config, _, _>(
        finflow_notification::SERVICE,
        finflow_notification::run,
    )
    .await
}
