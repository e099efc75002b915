//! `finflow-wallet`: the platform's service `main` around [`finflow_wallet::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    finflow_platform::service::main::<finflow_wallet::Config, _, _>(
        finflow_wallet::SERVICE,
        finflow_wallet::run,
    )
    .await
}
