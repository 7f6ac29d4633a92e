//! `computation-unit`: the queue worker, `serve` (a direct unit, no broker),
//! or `infer` for offline runs.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use computation_unit::config::{Cli, Command, ServeArgs, WorkerArgs};
use computation_unit::direct::{EngineBackend, EngineSlot};
use computation_unit::engine_metrics::EngineMetrics;
use computation_unit::metrics::WorkerMetrics;
use computation_unit::thresholds_file;
use computation_unit::worker::{self, WorkerSettings};
use dnet_edge::server::Edge;
use dnet_model::engine::Engine;
use dnet_model_flags::engine_settings;

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
        Some(Command::ExportWeights(args)) => {
            dnet_model::weights::write_random(args.random_weights, &args.output)?;
            println!(
                "wrote the weights of --random-weights {} to {}",
                args.random_weights,
                args.output.display()
            );
            Ok(())
        }
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
/// The edge serves from the start, NOT_SERVING while the model loads.
fn serve_direct(mut args: ServeArgs) -> anyhow::Result<()> {
    let _exporting = dnet_common::telemetry::init(&args.edge.observability, "computation-unit")?;
    // The edge moves this exit's threshold through request overrides: in
    // one process, the range it moves in and the range the engine accepts
    // are one, either flag giving both.
    if args.edge.target_agreement.is_some() {
        args.edge.threshold_range = args.edge.threshold_range.or(args.unit.allow_threshold_override);
        args.unit.allow_threshold_override = args.unit.allow_threshold_override.or(args.edge.threshold_range);
    }
    let exit_on_start_layer = args.unit.test_exit_on_start_layer().map_err(anyhow::Error::msg)?;
    let slot = runtime()?.block_on(async {
        let (listener, metrics_listener) = dnet_edge::server::bind(&args.edge).await?;
        let unit_name = args.edge.unit_name(listener.local_addr()?.port());
        let settings = args.unit.settings(args.edge.max_message_bytes, unit_name.clone())?;
        let mut registry = Registry::default();
        // With --target-agreement the edge owns this exit's threshold: the
        // file (or --thresholds) gives where it starts, nothing more.
        let controlled = args.edge.target_agreement.is_some();
        let own_exit = own_exit(&args, &settings);
        let exit_threshold = thresholds_file::start(
            args.unit.thresholds_file.clone(),
            settings.thresholds.clone(),
            settings.exit,
            controlled,
            &mut registry,
        );
        let engine_metrics = Arc::new(EngineMetrics::register(&mut registry));
        let metrics = Arc::new(dnet_edge::metrics::Metrics::register(&mut registry));
        let (backend, slot) = EngineBackend::loading(exit_on_start_layer);
        tokio::spawn(export_waiting(Arc::clone(&slot), metrics.queue_waiting.clone()));
        let loading = load_engine(
            args.unit.weight_source(),
            settings,
            engine_settings(&args.unit.model, &args.unit.batch),
            engine_metrics,
            Arc::clone(&slot),
        );
        let failed = std::sync::Mutex::new(None);
        let shutdown = async {
            tokio::select! {
                () = dnet_common::shutdown::signal() => {}
                error = loading => {
                    *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
                }
            }
        };
        let edge = Edge {
            metrics,
            args: args.edge,
            unit_name,
            registry,
            exit_threshold: Some(exit_threshold),
            own_exit,
        };
        dnet_edge::server::serve(listener, metrics_listener, edge, backend, shutdown).await?;
        match failed.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Some(error) => Err(error),
            None => anyhow::Ok(slot),
        }
    })?;
    // The server has drained and the engine stopped taking new jobs: it ends
    // after the forward it is in.
    if let Some(engine) = slot.take().and_then(|engine| Arc::try_unwrap(engine).ok()) {
        let waited = std::time::Instant::now();
        tracing::info!("waiting for the model thread to end its forward");
        engine.join();
        tracing::info!(waited_ms = waited.elapsed().as_millis() as u64, "model thread ended");
    }
    Ok(())
}

/// This direct unit's exit and the threshold its flags give it: where the
/// live calibration (`--shadow-rate`) starts.
fn own_exit(args: &ServeArgs, settings: &dnet_model::request::UnitSettings) -> Option<dnet_edge::server::OwnExit> {
    let threshold = *settings.thresholds.get().get(settings.exit.checked_sub(1)?)?;
    let source = if args.unit.thresholds_file.is_some() {
        "--thresholds-file"
    } else {
        "--thresholds"
    };
    Some(dnet_edge::server::OwnExit {
        exit: settings.exit as u64,
        threshold,
        source: source.to_owned(),
    })
}

/// Loads the model on a blocking thread and puts the engine in `slot`;
/// completes only if loading fails (with why), else stays pending.
async fn load_engine(
    source: dnet_model::weights::WeightSource,
    settings: dnet_model::request::UnitSettings,
    engine_settings: dnet_model::engine::EngineSettings,
    metrics: Arc<EngineMetrics>,
    slot: Arc<EngineSlot>,
) -> anyhow::Error {
    let loaded = tokio::task::spawn_blocking(move || Engine::start(source, settings, engine_settings, metrics)).await;
    match loaded {
        Ok(Ok(engine)) => {
            slot.fill(Arc::new(engine));
            std::future::pending().await
        }
        Ok(Err(error)) => anyhow::Error::from(error).context("cannot load the model"),
        Err(panicked) => anyhow::anyhow!("the model failed to load: {panicked}"),
    }
}

/// Keeps `dnet_queue_waiting` at the requests waiting for the model, read
/// every 250 ms as a transmission unit reads its queue.
async fn export_waiting(slot: Arc<EngineSlot>, gauge: prometheus_client::metrics::gauge::Gauge) {
    let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        every.tick().await;
        gauge.set(i64::try_from(slot.waiting()).unwrap_or(i64::MAX));
    }
}

/// The queue worker.
fn consume(args: WorkerArgs) -> anyhow::Result<()> {
    let _exporting = dnet_common::telemetry::init(&args.observability, "computation-unit")?;
    args.amqp_credentials.warn_if_password_on_command_line();
    let exit_on_start_layer = args.unit.test_exit_on_start_layer().map_err(anyhow::Error::msg)?;
    let settings = args.unit.settings(args.max_message_bytes, args.unit_name())?;
    let mut registry = Registry::default();
    let engine_metrics = Arc::new(EngineMetrics::register(&mut registry));
    let engine = Arc::new(Engine::start(
        args.unit.weight_source(),
        settings.clone(),
        engine_settings(&args.unit.model, &args.unit.batch),
        engine_metrics,
    )?);
    let runtime = runtime()?;
    // Ready (/readyz) while the model is loaded and the queue is consumed.
    let ready = tokio::sync::watch::Sender::new(false);
    let metrics = runtime.block_on(async {
        let metrics = WorkerMetrics::register(&mut registry);
        let node = dnet_amqp::node::NodeMetric::register(&mut registry);
        thresholds_file::start(
            args.unit.thresholds_file.clone(),
            settings.thresholds.clone(),
            settings.exit,
            false,
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
            amqp_uris: args.amqp_uris().map_err(anyhow::Error::msg)?,
            queue: args.queue_name.clone(),
            contract: args.queue_contract(),
            max_message_bytes: args.max_message_bytes,
            prefetch: args.prefetch(),
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
        let stopped = worker::run(
            worker_settings,
            Arc::clone(&engine),
            Arc::clone(&metrics),
            node,
            &ready,
            dnet_common::shutdown::signal(),
        )
        .await;
        stop_metrics.cancel();
        stopped.map_err(anyhow::Error::msg)?;
        anyhow::Ok(metrics)
    })?;
    if let Ok(engine) = Arc::try_unwrap(engine) {
        let waited = std::time::Instant::now();
        tracing::info!("waiting for the model thread to end its forward");
        engine.join();
        tracing::info!(waited_ms = waited.elapsed().as_millis() as u64, "model thread ended");
    }
    let (published, requeued) = metrics.totals();
    tracing::info!(published, requeued, "computation unit stopped");
    Ok(())
}
