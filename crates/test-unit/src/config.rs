//! Command line of `test-unit`; every flag also reads a `DNET_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dnet_common::duration::parse_duration;
use dnet_model::options::{BatchArgs, ComputeArgs, Thresholds};
use dnet_model::weights::WeightSource;
use tch::Device;

/// Plays the end device of a DNet cascade: computes the first layers itself
/// when asked (-e), answers locally when confident, sends the rest to the
/// first unit, and reports throughput, latency, exits and accuracy.
#[derive(Clone, Debug, Parser)]
#[command(name = "test-unit", version, about)]
pub struct Args {
    /// gRPC address of the first unit: host:port, a comma list of them, or a
    /// name that resolves to several (resolved again every second); calls
    /// spread over every address that accepts connections.
    #[arg(short = 'a', long, env = "DNET_ADDRESS", default_value = "localhost:8080")]
    pub address: String,

    /// Number of requests (ignored with --duration).
    #[arg(short = 'n', long, env = "DNET_NUMBER", default_value_t = 100)]
    pub number: u64,

    /// Local exits: 0 sends the raw image; `e` (1..15) computes layers up to
    /// exit e here, answers locally when confident, and sends the rest with
    /// start_layer = e; a rising list (`8,12,16`) computes that cascade of
    /// exits here, each with its own model thread; ending in 16 computes
    /// everything here (the in-process limit: no network).
    #[arg(short = 'e', long, env = "DNET_EXIT", default_value = "0", value_parser = parse_exits)]
    pub exit: LocalExits,

    /// Weights of the local layers (needed with -e > 0): a .safetensors file.
    #[arg(long, env = "DNET_WEIGHTS", conflicts_with = "random_weights")]
    pub weights: Option<PathBuf>,

    /// Deterministic random weights of the local layers, from this seed.
    #[arg(long, env = "DNET_RANDOM_WEIGHTS", value_name = "SEED")]
    pub random_weights: Option<u64>,

    /// Thresholds of exits 1..15 for the local exit [default: docs/model-spec.md's].
    #[arg(long, env = "DNET_THRESHOLDS", value_parser = dnet_model::options::parse_thresholds)]
    pub thresholds: Option<Thresholds>,

    /// Thresholds of exits 1..15 that every request carries to the units
    /// (for units started with --allow-threshold-override; others answer ERROR).
    #[arg(long, env = "DNET_REQUEST_THRESHOLDS", value_parser = dnet_model::options::parse_thresholds)]
    pub request_thresholds: Option<Thresholds>,

    /// Device of the local layers: cpu, cuda or cuda:N.
    #[arg(long, env = "DNET_DEVICE", default_value = "cpu", value_parser = dnet_model::options::parse_device)]
    pub device: Device,

    /// Threads and precision of the local layers.
    #[command(flatten)]
    pub compute: ComputeArgs,

    /// Batching of the local layers (concurrent callers share one model).
    #[command(flatten)]
    pub batch: BatchArgs,

    /// CIFAR-10 binary file (label byte + 3072 pixel bytes per record); with
    /// labels, accuracy is reported. Without it: synthetic images (--seed).
    #[arg(long, env = "DNET_DATASET")]
    pub dataset: Option<PathBuf>,

    /// Seed of the synthetic images and of the Poisson arrivals.
    #[arg(long, env = "DNET_SEED", default_value_t = 0)]
    pub seed: u64,

    /// Closed loop: this many callers, each sending its next request when answered.
    #[arg(short = 'c', long, env = "DNET_CONCURRENCY", default_value_t = 1, conflicts_with = "rate",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,

    /// Open loop: requests per second with Poisson arrivals.
    #[arg(long, env = "DNET_RATE")]
    pub rate: Option<f64>,

    /// Run for this long instead of -n requests (e.g. 30s, 2m).
    #[arg(long, env = "DNET_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Deadline of each call.
    #[arg(long, env = "DNET_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Call the first unit over TLS, trusting this CA (PEM).
    #[arg(long, env = "DNET_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Name to verify in the first unit's certificate [default: the host of --address].
    #[arg(long, env = "DNET_TLS_DOMAIN", requires = "tls_ca")]
    pub tls_domain: Option<String>,

    /// Client certificate (PEM) for units that require one; needs --tls-key.
    #[arg(long, env = "DNET_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "DNET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Send each image as the original DNet's client did, `pickle.dumps` of
    /// the tensor (for units started with --legacy-pickle, or the original
    /// units), and read pickled results; raw images only (no -e).
    #[arg(long, env = "DNET_LEGACY_PICKLE")]
    pub legacy_pickle: bool,

    /// Print the first unit's queue length and consumers before and after.
    #[arg(long, env = "DNET_QSTATUS")]
    pub qstatus: bool,

    /// Print one line per request: its exit layer and per-hop times.
    #[arg(long, env = "DNET_EACH")]
    pub each: bool,

    /// Also write the report as JSON to this file.
    #[arg(long, env = "DNET_JSON")]
    pub json: Option<PathBuf>,

    /// Draw the latency distribution and the answers by exit layer to this PNG.
    #[arg(long, env = "DNET_PLOT")]
    pub plot: Option<PathBuf>,
}

/// The exits computed on the device, rising; empty: none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalExits(pub Vec<usize>);

/// Parses `0`, `e` or `e1,e2,...` (rising, each 1..=16).
///
/// # Errors
/// A value outside 1..=16, or a list that does not rise.
pub fn parse_exits(text: &str) -> Result<LocalExits, String> {
    if text.trim() == "0" {
        return Ok(LocalExits(Vec::new()));
    }
    let exits = text
        .split(',')
        .map(|e| match e.trim().parse::<usize>() {
            Ok(e @ 1..=16) => Ok(e),
            _ => Err(format!("'{e}' is not an exit layer (1..16)")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if exits.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(format!("local exits must rise: {text}"));
    }
    Ok(LocalExits(exits))
}

impl Args {
    /// Where the local layers' weights come from; `None` without weights.
    #[must_use]
    pub fn weight_source(&self) -> Option<WeightSource> {
        match (&self.weights, self.random_weights) {
            (Some(path), _) => Some(WeightSource::File(path.clone())),
            (None, Some(seed)) => Some(WeightSource::Random(seed)),
            (None, None) => None,
        }
    }
}
