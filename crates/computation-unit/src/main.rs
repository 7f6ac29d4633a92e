//! `computation-unit`: the queue worker, `serve` (a direct unit, no broker),
//! or `infer` for offline runs.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use computation_unit::config::{Cli, Command, ServeArgs, WorkerArgs};
use computation_unit::direct::EngineBackend;
use computation_unit::metrics::WorkerMetrics;
use computation_unit::thresholds_file;
use computation_unit::worker::{self, WorkerSettings};
use dnet_model::engine::Engine;
use dnet_model::metrics::EngineMetrics;
use dnet_model::options::engine_settings;
use transmission_unit::server::Edge;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Infer(args)) => {
            let summary = computation_unit::infer::run(&args)?;
            println!(
                "wrote {} ({} samples): categories {:?}, confidences {:?}",
                args.output.display(),
                summary.samples,
                summary.categories,
                summary.confidences
            );
            Ok(())
        }
        Some(Command::Serve(args)) => serve_direct(*args),
        None => consume(cli.worker),
    }
}

/// The runtime of the gRPC or AMQP side: one thread, the model has its own.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// `computation-unit serve`: the gRPC edge and the engine in one process.
fn serve_direct(args: ServeArgs) -> anyhow::Result<()> {
    dnet_common::telemetry::init(args.edge.observability.log_format);
    let engine = runtime()?.block_on(async {
        let (listener, metrics_listener) = transmission_unit::server::bind(&args.edge).await?;
        let unit_name = args.edge.unit_name(listener.local_addr()?.port());
        let settings = args.unit.settings(args.edge.max_message_bytes, unit_name.clone())?;
        let mut registry = Registry::default();
        thresholds_file::start(
            args.unit.thresholds_file.clone(),
            settings.thresholds.clone(),
            settings.exit,
            &mut registry,
        );
        let engine = Arc::new(Engine::start(
            args.unit.model.source(),
            settings.clone(),
            engine_settings(&args.unit.model.compute, &args.unit.batch),
            Arc::new(EngineMetrics::register(&mut registry)),
        )?);
        let metrics = Arc::new(transmission_unit::metrics::Metrics::register(&mut registry));
        tokio::spawn(export_waiting(Arc::clone(&engine), metrics.queue_waiting.clone()));
        let edge = Edge {
            metrics,
            args: args.edge,
            unit_name,
            registry,
        };
        let backend = EngineBackend::new(Arc::clone(&engine), settings);
        transmission_unit::server::serve(
            listener,
            metrics_listener,
            edge,
            backend,
            dnet_common::shutdown::signal(),
        )
        .await?;
        anyhow::Ok(engine)
    })?;
    // The server has drained: every call it took has its answer.
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.join();
    }
    Ok(())
}

/// Keeps `dnet_queue_waiting` at the requests waiting for the model, read
/// every 250 ms as a transmission unit reads its queue.
async fn export_waiting(engine: Arc<Engine>, gauge: prometheus_client::metrics::gauge::Gauge) {
    let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        every.tick().await;
        gauge.set(i64::try_from(engine.waiting()).unwrap_or(i64::MAX));
    }
}

/// The queue worker.
fn consume(args: WorkerArgs) -> anyhow::Result<()> {
    dnet_common::telemetry::init(args.observability.log_format);
    let exit_on_start_layer = args.test_exit_on_start_layer().map_err(anyhow::Error::msg)?;
    let settings = args.unit.settings(args.max_message_bytes, args.unit_name())?;
    let mut registry = Registry::default();
    let engine_metrics = Arc::new(EngineMetrics::register(&mut registry));
    let engine = Arc::new(Engine::start(
        args.unit.model.source(),
        settings.clone(),
        engine_settings(&args.unit.model.compute, &args.unit.batch),
        engine_metrics,
    )?);
    let runtime = runtime()?;
    // Ready (/readyz) while the model is loaded and the queue is consumed.
    let ready = tokio::sync::watch::Sender::new(false);
    let metrics = runtime.block_on(async {
        let metrics = WorkerMetrics::register(&mut registry);
        thresholds_file::start(
            args.unit.thresholds_file.clone(),
            settings.thresholds.clone(),
            settings.exit,
            &mut registry,
        );
        let stop_metrics = CancellationToken::new();
        if let Some(address) = &args.observability.metrics_address {
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (--metrics-address)"))?;
            let stop = stop_metrics.clone();
            tokio::spawn(dnet_common::metrics_http::serve(
                listener,
                Arc::new(registry),
                ready.subscribe(),
                async move { stop.cancelled().await },
            ));
        }
        let worker_settings = WorkerSettings {
            amqp_uri: args.amqp_uri().map_err(anyhow::Error::msg)?,
            queue: args.queue_name.clone(),
            prefetch: args.prefetch(),
            max_attempts: args.max_attempts,
            exit_on_start_layer,
            unit: settings,
            connection_name: format!("computation-unit {}", args.unit_name()),
            tls_ca: args
                .amqp_ca
                .as_deref()
                .map(dnet_amqp::read_ca)
                .transpose()
                .map_err(anyhow::Error::msg)?,
        };
        worker::run(
            worker_settings,
            Arc::clone(&engine),
            Arc::clone(&metrics),
            &ready,
            dnet_common::shutdown::signal(),
        )
        .await;
        stop_metrics.cancel();
        anyhow::Ok(metrics)
    })?;
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.join();
    }
    let (published, requeued) = metrics.totals();
    tracing::info!(published, requeued, "computation unit stopped");
    Ok(())
}
