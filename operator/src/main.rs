//! The operator binary; everything it does is described in `finflow_operator::app`.

use clap::Parser;
use finflow_operator::{app, config::Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    app::init_logging(config.log_format);
    app::run(config).await
}
