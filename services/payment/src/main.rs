//! `finflow-payment`: the platform's service `main` around [`finflow_payment::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    finflow_platform::service::main::<finflow_payment::Config, _, _>(
        finflow_payment::SERVICE,
        finflow_payment::run,
    )
    .await
}
