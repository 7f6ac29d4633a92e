//! `transmission-unit`: parse flags, set up logging, bind, run until SIGTERM/SIGINT.

use clap::Parser;

use transmission_unit::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _exporting = dnet_common::telemetry::init(&config.edge.observability, "transmission-unit")?;
    config.amqp_credentials.warn_if_password_on_command_line();
    let (listener, metrics_listener) = dnet_edge::server::bind(&config.edge).await?;
    transmission_unit::queue_unit::run(listener, metrics_listener, config, dnet_common::shutdown::signal()).await?;
    Ok(())
}
