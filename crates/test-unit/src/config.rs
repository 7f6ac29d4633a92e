//! Command line of `test-unit`; every flag also reads a `DNET_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dnet_common::duration::parse_duration;
use dnet_model::settings::{Thresholds, WireDtype};
use dnet_model_flags::{BatchFlags, ModelFlags};

/// Plays the end device of a DNet cascade: computes the first layers itself
/// when asked (-e), answers locally when confident, sends the rest to the
/// first unit, and reports throughput, latency, exits and accuracy. Its
/// subcommands choose the thresholds and the split of a cascade offline.
#[derive(Clone, Debug, Parser)]
#[command(name = "test-unit", version, about, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub tool: Option<Tool>,

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

    /// The local layers' network (needed with -e > 0).
    #[command(flatten)]
    pub model: ModelFlags,

    /// Thresholds of exits 1..15 for the local exit [default: docs/model-spec.md's].
    #[arg(long, env = "DNET_THRESHOLDS", value_parser = dnet_model::settings::parse_thresholds)]
    pub thresholds: Option<Thresholds>,

    /// Thresholds of exits 1..15 that every request carries to the units
    /// (for units started with --allow-threshold-override; others answer ERROR).
    #[arg(long, env = "DNET_REQUEST_THRESHOLDS", value_parser = dnet_model::settings::parse_thresholds)]
    pub request_thresholds: Option<Thresholds>,

    /// Batching of the local layers (concurrent callers share one model).
    #[command(flatten)]
    pub batch: BatchFlags,

    /// CIFAR-10 binary file (label byte + 3072 pixel bytes per record); with
    /// labels, accuracy is reported. Without it: synthetic images (--seed).
    #[arg(long, env = "DNET_DATASET")]
    pub dataset: Option<PathBuf>,

    /// Seed of the synthetic images and of the Poisson arrivals.
    #[arg(long, env = "DNET_SEED", default_value_t = 0)]
    pub seed: u64,

    /// Gaussian noise of this standard deviation on every pixel (on the
    /// 0..1 scale, clipped to it), the same for a sample in every run
    /// (--seed): changed inputs, as live traffic drifts.
    #[arg(long, env = "DNET_NOISE", default_value_t = 0.0, value_parser = noise)]
    pub noise: f64,

    /// Samples (images) per request: request i carries the inputs i*N to
    /// i*N+N-1, the units answer each at its own exit, and the report counts
    /// exits and accuracy per sample. Needs -e 0 and no --legacy-pickle
    /// (the device's layers and the original's format take one image); a
    /// unit refuses more than its --max-request-samples.
    #[arg(long, env = "DNET_SAMPLES_PER_REQUEST", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub samples_per_request: u64,

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

    /// Print one line per request: its exit layer (each sample's) and per-hop times.
    #[arg(long, env = "DNET_EACH")]
    pub each: bool,

    /// Write one JSON line per request to this file, in request order: its
    /// number, latency, each sample's exit and category (and `degraded`), or
    /// how it failed; with the labels when the dataset has them.
    #[arg(long, env = "DNET_ANSWERS")]
    pub answers: Option<PathBuf>,

    /// Also write the report as JSON to this file.
    #[arg(long, env = "DNET_JSON")]
    pub json: Option<PathBuf>,

    /// Draw the latency distribution and the answers by exit layer to this PNG.
    #[arg(long, env = "DNET_PLOT")]
    pub plot: Option<PathBuf>,
}

/// The offline tools.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Tool {
    /// Choose the 15 exit thresholds from data.
    ///
    /// Computes every exit's answer for every input, then chooses thresholds as low as the target agreement (with exit 16)
    /// or accuracy (with the labels) allows, earliest exit first. Prints the
    /// thresholds, the share of inputs each exit answers and its agreement;
    /// writes them for --thresholds-file and a JSON report for `plan`.
    Calibrate(CalibrateArgs),
    /// Measure each layer's compute time here, for `plan`.
    ///
    /// Each trunk layer and exit head at batch 1, for `plan --times` (run it on the device, edge and cloud).
    Profile(ProfileArgs),
    /// Rank the splits of a 2- or 3-unit cascade.
    ///
    /// Expected latency, bytes on each link and agreement of every choice of exit layers, from per-layer
    /// times, link rates and round trips, and calibrate's exit confidences.
    Plan(PlanArgs),
}

#[derive(Clone, Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("goal").required(true)))]
#[command(group(clap::ArgGroup::new("data").required(true)))]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelFlags,

    /// CIFAR-10 binary file: per record a label byte and 3072 pixel bytes (R,
    /// G, B planes), or with --no-labels the pixels alone.
    #[arg(long, group = "data")]
    pub dataset: Option<PathBuf>,

    /// --dataset has no label bytes (agreement with exit 16 only).
    #[arg(long, requires = "dataset")]
    pub no_labels: bool,

    /// Instead of a file: this many of test-unit's synthetic images (--seed).
    #[arg(long, group = "data", value_name = "N")]
    pub synthetic: Option<u64>,

    /// Seed of the synthetic images and of --noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Gaussian noise of this standard deviation on every pixel, as
    /// test-unit --noise adds it (same --seed: the same noisy inputs).
    #[arg(long, default_value_t = 0.0, value_parser = noise)]
    pub noise: f64,

    /// Choose thresholds so that at least this share of inputs get the answer
    /// exit 16 gives them (no labels needed), e.g. 0.99.
    #[arg(long, group = "goal", value_parser = share)]
    pub target_agreement: Option<f64>,

    /// Choose thresholds so that at least this share of inputs get their label.
    #[arg(long, group = "goal", value_parser = share)]
    pub target_accuracy: Option<f64>,

    /// Evaluate these thresholds (t1,...,t15) instead of choosing.
    #[arg(long, group = "goal", value_parser = dnet_model::settings::parse_thresholds)]
    pub thresholds: Option<Thresholds>,

    /// The exit layers the cascade will have, e.g. 8,12,16 (16 always
    /// answers) [default: every exit 1..16, one unit per exit].
    #[arg(long, value_parser = parse_exits)]
    pub exits: Option<LocalExits>,

    /// Inputs per forward pass.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,

    /// Write the thresholds to this file, as --thresholds-file reads them.
    #[arg(long)]
    pub write_thresholds: Option<PathBuf>,

    /// Write the report as JSON (thresholds, exit_share, agreement, accuracy,
    /// per_exit, and every exit's answers per input: what `plan --calibration` reads).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ProfileArgs {
    /// The network [default: random weights: times do not depend on values].
    #[command(flatten)]
    pub model: ModelFlags,

    /// Timed passes (the median is kept), after 3 untimed.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeats: u64,

    /// Write the times as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct PlanArgs {
    /// calibrate's JSON report: its thresholds decide where each input exits.
    #[arg(long)]
    pub calibration: PathBuf,

    /// Links between consecutive units, RATE/RTT, comma-separated: one link
    /// plans 2 units, two links 3 units (e.g. 100mbit/2ms,20mbit/20ms); none:
    /// one unit computing everything (with --client-link, the image goes to it).
    #[arg(long, value_delimiter = ',', value_parser = crate::plan::parse_link)]
    pub links: Vec<crate::plan::Link>,

    /// The link from the client to the first unit [default: none, the client
    /// runs on the first unit's machine].
    #[arg(long, value_parser = crate::plan::parse_link)]
    pub client_link: Option<crate::plan::Link>,

    /// Per-layer times from `profile --json`: one file for every unit, or one
    /// per unit, comma-separated [default: measured here now].
    #[arg(long, value_delimiter = ',')]
    pub times: Vec<PathBuf>,

    /// The network to measure when no --times are given [default: random weights].
    #[command(flatten)]
    pub model: ModelFlags,

    /// The dtype of handed-on tensors (the units' --wire-dtype).
    #[arg(long, default_value = "f32", value_parser = dnet_model_flags::wire_dtype())]
    pub wire_dtype: WireDtype,

    /// Fixed cost of each call between sites besides its link: gRPC,
    /// encoding, the hand-off to the model (BENCHMARKS.md measures it).
    #[arg(long, default_value = "500us", value_parser = parse_duration)]
    pub hop_overhead: Duration,

    /// Predict this layout only (the units' exits, e.g. 4,8,16) instead of ranking all.
    #[arg(long, value_parser = parse_exits)]
    pub exits: Option<LocalExits>,

    /// Layouts to print, best first.
    #[arg(long, default_value_t = 5)]
    pub top: usize,

    /// Write every layout's prediction as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Parses a share in (0, 1].
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("'{text}' is not a share in (0, 1], e.g. 0.99")),
    }
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

/// Parses a noise level: a standard deviation in 0..=1 of the 0..1 pixel scale.
fn noise(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(sigma) if (0.0..=1.0).contains(&sigma) => Ok(sigma),
        _ => Err(format!(
            "'{text}' is not a standard deviation in 0..1 (pixels are on the 0..1 scale)"
        )),
    }
}
