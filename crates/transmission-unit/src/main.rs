//! `transmission-unit`: parse flags, set up logging, bind, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

use transmission_unit::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    dnet_common::telemetry::init(config.observability.log_format);
    let listener = TcpListener::bind(&config.listen_address)
        .await
        .with_context(|| format!("cannot listen on {} (--listen-address)", config.listen_address))?;
    let metrics_listener = match &config.observability.metrics_address {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (--metrics-address)"))?,
        ),
        None => None,
    };
    transmission_unit::server::run(listener, metrics_listener, config, dnet_common::shutdown::signal()).await?;
    Ok(())
}
