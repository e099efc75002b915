//! `finflow-kyc`: the platform's service `main` around [`finflow_kyc::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    finflow_platform::service::main::<finflow_kyc::Config, _, _>(
        finflow_kyc::SERVICE,
        finflow_kyc::run,
    )
    .await
}
