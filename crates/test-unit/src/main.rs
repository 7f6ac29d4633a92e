//! `test-unit`: set up inputs, local layers and the client, run the load,
//! report; or one of the offline tools (calibrate, profile, plan).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use dnet_common::balance::{endpoints, Balanced};
use dnet_model::model::DEFAULT_THRESHOLDS;
use dnet_model_flags::engine_settings;
use dnet_proto::{DNetClient, QstatusRequest};
use prometheus_client::metrics::gauge::Gauge;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use test_unit::call::Context;
use test_unit::call::FirstUnit;
use test_unit::config::{Args, Tool};
use test_unit::inputs::Inputs;
use test_unit::load::{self, Until};
use test_unit::local::LocalLayers;
use test_unit::report::{QueueStatus, Report};
use test_unit::tools;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.tool {
        Some(Tool::Calibrate(tool)) => tools::calibrate(tool),
        Some(Tool::Profile(tool)) => tools::profile(tool),
        Some(Tool::Plan(tool)) => tools::plan(tool),
        None => tokio::runtime::Runtime::new()?.block_on(run(args)),
    }
}

/// Sends the requests and reports how they went.
async fn run(args: Args) -> anyhow::Result<()> {
    let inputs = match &args.dataset {
        Some(path) => Inputs::dataset(path)?,
        None => Inputs::Synthetic(args.seed),
    }
    .with_noise(args.noise, args.seed);
    let labelled = inputs.labelled();
    if args.legacy_pickle && !args.exit.0.is_empty() {
        anyhow::bail!("--legacy-pickle sends raw images as the original client did: it does not go with -e");
    }
    if args.samples_per_request > 1 && (args.legacy_pickle || !args.exit.0.is_empty()) {
        anyhow::bail!(
            "--samples-per-request {} goes with -e 0 and without --legacy-pickle: \
             the device's layers and the original's format take one image per request",
            args.samples_per_request
        );
    }
    let exits = args.exit.0.clone();
    let local = match (exits.is_empty(), args.model.weight_source()) {
        (true, _) => None,
        (false, None) => {
            anyhow::bail!("-e {exits:?} computes layers here: give --weights FILE or --random-weights SEED")
        }
        (false, Some(source)) => {
            let thresholds = args.thresholds.as_ref().map_or(DEFAULT_THRESHOLDS, |t| t.0);
            let (device, engine) = (args.model.device, engine_settings(&args.model, &args.batch));
            let stages = move || LocalLayers::start(&source, &exits, thresholds, device, &engine);
            Some(tokio::task::spawn_blocking(stages).await??)
        }
    };
    let balanced = Balanced::start(&args.address, endpoints(tls_config(&args)?), Gauge::default())
        .await
        .map_err(|e| anyhow::anyhow!("-a '{}': {e}", args.address))?;
    let client = DNetClient::new(balanced.channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);

    let qstatus_before = if args.qstatus { qstatus(&client).await } else { None };
    let until = args.duration.map_or(Until::Count(args.number), Until::Elapsed);
    let context = Arc::new(Context {
        inputs,
        local,
        first: FirstUnit {
            client: client.clone(),
            balanced,
        },
        timeout: args.timeout,
        legacy_pickle: args.legacy_pickle,
        request_thresholds: args
            .request_thresholds
            .as_ref()
            .map(|t| t.0.to_vec())
            .unwrap_or_default(),
        samples_per_request: args.samples_per_request,
    });
    let started = Instant::now();
    let mut records = match args.rate {
        Some(rate) if rate > 0.0 => load::open_loop(context, rate, args.seed, until).await,
        Some(rate) => anyhow::bail!("--rate must be positive, got {rate}"),
        None => load::closed_loop(context, args.concurrency, until).await,
    };
    records.sort_by_key(|record| record.index);
    let mut report = Report::new(&records, started.elapsed(), labelled);
    report.qstatus_before = qstatus_before;
    report.qstatus_after = if args.qstatus { qstatus(&client).await } else { None };

    if args.each {
        for record in &records {
            println!("#{}: {}", record.index, record.describe());
        }
    }
    print!("{}", report.text());
    if let Some(path) = &args.answers {
        let lines: String = records.iter().map(|r| r.answer_line().to_string() + "\n").collect();
        std::fs::write(path, lines).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        test_unit::plot::draw(path, &records)?;
    }
    if !report.all_answered() {
        eprintln!("{}", report.failure_line());
        std::process::exit(1);
    }
    Ok(())
}

/// TLS to the first unit, when `--tls-ca` is given.
fn tls_config(args: &Args) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &args.tls_ca else { return Ok(None) };
    let read = |path: &std::path::Path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    let host = dnet_common::balance::first_host(&args.address).unwrap_or_default();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .domain_name(args.tls_domain.clone().unwrap_or(host));
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

async fn qstatus(client: &DNetClient<Channel>) -> Option<QueueStatus> {
    match client.clone().qstatus(QstatusRequest {}).await {
        Ok(answer) => {
            let answer = answer.into_inner();
            Some(QueueStatus {
                qlength: answer.qlength,
                consumer: answer.consumer,
            })
        }
        Err(status) => {
            eprintln!("qstatus failed: {:?}: {}", status.code(), status.message());
            None
        }
    }
}
