//! Command line of `computation-unit`; every flag also reads a `DNET_*` variable.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};
use dnet_amqp::credentials::AmqpCredentials;
use dnet_amqp::{QueueContract, QueueType};
use dnet_common::telemetry::ObservabilityArgs;
use dnet_edge::config::{EdgeArgs, DEFAULT_MAX_MESSAGE_BYTES};
use dnet_model::model::{DEFAULT_THRESHOLDS, SIDE_EXITS};
use dnet_model::request::{largest_message, UnitSettings};
use dnet_model::settings::{parse_override_bounds, parse_thresholds, ExitRule, OverrideBounds, Thresholds, WireDtype};
use dnet_model::thresholds::LiveThresholds;
use dnet_model::weights::WeightSource;
use dnet_model_flags::{BatchFlags, ModelFlags};

/// The weights are required: `--weights` or `--random-weights`.
const WEIGHTS_REQUIRED: &str = "weight_source";

/// A DNet computation unit: consumes a RabbitMQ queue and runs the
/// multi-exit Inception-v3 from each request's start layer to this unit's
/// exit layer. Answers SUCCESS when the exit is confident enough, otherwise
/// NOT_SUCCESS with the intermediate tensor for the next unit.
#[derive(Debug, Parser)]
#[command(
    name = "computation-unit",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the model offline on a safetensors file (debugging, references).
    Infer(InferArgs),
    /// A direct unit: serve unit.DNet over gRPC and compute with this
    /// process's own model, no broker (the transmission unit's gRPC flags,
    /// the worker's model flags).
    Serve(Box<ServeArgs>),
    /// Write the random weights of a seed to a .safetensors file, as
    /// --weights reads them (what --random-weights SEED computes with).
    ExportWeights(ExportArgs),
}

/// `computation-unit export-weights`.
#[derive(Clone, Debug, Args)]
pub struct ExportArgs {
    /// The seed (as --random-weights takes it).
    #[arg(long, value_name = "SEED")]
    pub random_weights: u64,

    /// The .safetensors file to write.
    #[arg(long)]
    pub output: PathBuf,
}

/// `computation-unit serve`: the gRPC side of a transmission unit and the
/// model of a worker, in one process.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub edge: EdgeArgs,

    #[command(flatten)]
    pub unit: UnitArgs,
}

/// What a unit computes and how it answers: the same for a queue worker
/// and a direct unit.
#[derive(Clone, Debug, Args)]
#[command(group(ArgGroup::new(WEIGHTS_REQUIRED).args(["weights", "random_weights"]).required(true)))]
pub struct UnitArgs {
    /// Exit layer of this unit, 1..16 (16 = the final head, always answers).
    #[arg(short = 'e', long, alias = "exitlayer", env = "DNET_EXIT_LAYER", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(1..=16))]
    pub exit_layer: u8,

    #[command(flatten)]
    pub model: ModelFlags,

    /// Confidence thresholds of exits 1..15, comma-separated
    /// [default: 0.85,0.90,0.90,0.90,0.90,0.90,0.90,0.90,0.90,0.90,0.92,0.90,0.90,0.90,0.90].
    #[arg(long, env = "DNET_THRESHOLDS", value_parser = parse_thresholds, conflicts_with = "thresholds_file")]
    pub thresholds: Option<Thresholds>,

    /// Read the thresholds from this file (as --thresholds takes them, on
    /// one or more lines, `#` comments; `test-unit calibrate
    /// --write-thresholds` writes one), and again every second while the
    /// unit runs: a change applies to the next forward and is logged; an
    /// invalid file is logged and the thresholds in use stay.
    #[arg(long, env = "DNET_THRESHOLDS_FILE")]
    pub thresholds_file: Option<PathBuf>,

    /// A request of N samples of which only some are confident: per-sample
    /// answers those here and hands only the others on (the caller gets
    /// every sample's answer and exit layer, in order); whole-request hands
    /// all of it on unless every sample is confident.
    #[arg(long, env = "DNET_EXIT_RULE", default_value = "per-sample", value_parser = dnet_model_flags::exit_rule())]
    pub exit_rule: ExitRule,

    /// Accept requests that carry their own thresholds, when the one of this
    /// unit's exit lies in LO..HI (e.g. 0.5..1); others are answered ERROR.
    /// Without this flag no request may carry thresholds.
    #[arg(long, env = "DNET_ALLOW_THRESHOLD_OVERRIDE", value_name = "LO..HI", value_parser = parse_override_bounds)]
    pub allow_threshold_override: Option<OverrideBounds>,

    #[command(flatten)]
    pub batch: BatchFlags,

    /// Most samples (N) accepted in one request; a larger one gets ERROR.
    #[arg(long, env = "DNET_MAX_REQUEST_SAMPLES", default_value_t = 64)]
    pub max_request_samples: usize,

    /// The dtype of the tensor handed on to the next unit (NOT_SUCCESS): f32
    /// is the original's precision; f16 and bf16 halve the bytes on the link
    /// (every DNet unit reads all three; the original's units read only f32).
    #[arg(long, env = "DNET_WIRE_DTYPE", default_value = "f32", value_parser = dnet_model_flags::wire_dtype())]
    pub wire_dtype: WireDtype,

    /// Also read requests whose `x` is the original DNet's `pickle.dumps` of
    /// a tensor, and answer those in its format (pickled categories, a pickled
    /// F32 `x` to hand on), so original units and clients mix with this one.
    /// The pickles are parsed, never unpickled: only a tensor's opcodes and
    /// globals are accepted. Safetensors requests keep safetensors replies.
    #[arg(long, env = "DNET_LEGACY_PICKLE")]
    pub legacy_pickle: bool,

    /// Units a request may stop (crash, kill, out of memory) before it is
    /// answered ERROR instead of being computed again (a poison request);
    /// the count travels with the request from unit to unit.
    #[arg(long, env = "DNET_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Test only: abort the process on a request of this start layer, as a
    /// unit killed by its request would. Refused by release builds unless
    /// DNET_ALLOW_TEST_TRIGGERS=1.
    #[arg(long, hide = true)]
    pub test_exit_on_start_layer: Option<u64>,
}

impl UnitArgs {
    /// Where the weights come from.
    #[must_use]
    pub fn weight_source(&self) -> WeightSource {
        // clap's required group guarantees one of the two.
        self.model.weight_source().unwrap_or(WeightSource::Random(0))
    }

    /// The thresholds to start with: the file's, --thresholds, or the defaults.
    ///
    /// # Errors
    /// The thresholds file cannot be read or is invalid.
    pub fn thresholds(&self) -> anyhow::Result<[f64; SIDE_EXITS]> {
        match (&self.thresholds_file, &self.thresholds) {
            (Some(path), _) => crate::thresholds_file::read(path),
            (None, thresholds) => Ok(thresholds.as_ref().map_or(DEFAULT_THRESHOLDS, |t| t.0)),
        }
    }

    /// The unit's settings, with the message limit and name of the program around it.
    ///
    /// # Errors
    /// See [`Self::thresholds`]; requests of `--max-request-samples` whose
    /// messages would not fit `max_message_bytes`.
    pub fn settings(&self, max_message_bytes: usize, unit_name: String) -> anyhow::Result<UnitSettings> {
        self.check_message_limit(max_message_bytes)?;
        Ok(UnitSettings {
            exit: usize::from(self.exit_layer),
            thresholds: LiveThresholds::new(self.thresholds()?),
            exit_rule: self.exit_rule,
            allow_threshold_override: self.allow_threshold_override,
            max_request_samples: self.max_request_samples,
            max_attempts: self.max_attempts,
            max_message_bytes,
            unit_name,
            device: self.model.device,
            wire_dtype: self.wire_dtype,
            legacy_pickle: self.legacy_pickle,
        })
    }

    /// Requests of `--max-request-samples` must fit `max_message_bytes` both
    /// ways (an `x` of any start layer this unit accepts, and its reply):
    /// else some requests the unit accepts would be refused for their size.
    ///
    /// # Errors
    /// Names both flags and the values that would fit.
    pub fn check_message_limit(&self, max_message_bytes: usize) -> anyhow::Result<()> {
        let exit = usize::from(self.exit_layer);
        let needed = largest_message(exit, self.max_request_samples);
        if needed <= max_message_bytes {
            return Ok(());
        }
        let fits = (1..self.max_request_samples)
            .rev()
            .find(|&n| largest_message(exit, n) <= max_message_bytes)
            .unwrap_or(0);
        anyhow::bail!(
            "--max-request-samples {} needs messages of up to {needed} bytes at exit {exit}, more than \
             --max-message-bytes {max_message_bytes}: raise --max-message-bytes to {needed} or more (and the \
             transmission units' and RabbitMQ's limits with it), or lower --max-request-samples to {fits}",
            self.max_request_samples
        )
    }

    /// The test trigger, when allowed in this build.
    ///
    /// # Errors
    /// A release build without DNET_ALLOW_TEST_TRIGGERS=1.
    pub fn test_exit_on_start_layer(&self) -> Result<Option<u64>, String> {
        let allowed = cfg!(debug_assertions) || std::env::var("DNET_ALLOW_TEST_TRIGGERS").is_ok_and(|v| v == "1");
        match self.test_exit_on_start_layer {
            Some(_) if !allowed => Err(
                "--test-exit-on-start-layer makes the unit exit on purpose: a release build takes it only \
                 with DNET_ALLOW_TEST_TRIGGERS=1"
                    .to_owned(),
            ),
            trigger => Ok(trigger),
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct WorkerArgs {
    /// RabbitMQ host or host:port (guest/guest), or a full amqp:// URI; or
    /// several, comma-separated (a cluster's nodes; a name that resolves to
    /// several addresses counts as each): the worker consumes through one
    /// that answers and moves to another when it is lost.
    #[arg(
        short = 'a',
        long,
        alias = "address",
        env = "DNET_ADDRESS",
        default_value = "localhost"
    )]
    pub amqp_address: String,

    /// CA (PEM) to trust for an amqps:// broker, besides the system's CAs.
    #[arg(long, env = "DNET_AMQP_CA")]
    pub amqp_ca: Option<PathBuf>,

    #[command(flatten)]
    pub amqp_credentials: AmqpCredentials,

    /// Queue to consume (the transmission unit's --queue-name).
    #[arg(
        short = 'q',
        long,
        alias = "queuename",
        env = "DNET_QUEUE_NAME",
        default_value = "ComputationQueue"
    )]
    pub queue_name: String,

    /// The kind of queue: classic (the original's, on one node) or quorum
    /// (replicated over a cluster; its delivery limit derives from
    /// --max-attempts). Every program on one queue gives the same.
    #[arg(long, env = "DNET_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,

    #[command(flatten)]
    pub unit: UnitArgs,

    /// Requests taken from the queue and not yet answered [default: twice
    /// --max-batch-size, so that the next batch gathers while one computes].
    #[arg(long, env = "DNET_PREFETCH", value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,

    /// Largest message this unit sends, in bytes: a request whose tensor for
    /// the next unit would not fit is refused (ERROR) before it is computed.
    /// Match the transmission units' --max-message-bytes.
    #[arg(long, env = "DNET_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    #[command(flatten)]
    pub observability: ObservabilityArgs,

    /// Name in hop records and logs [default: host name and process id].
    #[arg(long, env = "DNET_UNIT_NAME")]
    pub unit_name: Option<String>,
}

impl WorkerArgs {
    /// The broker URIs: each address of `-a` as given when it is a URI, else
    /// `amqp://guest:guest@HOST[:PORT]/%2f`; `--amqp-user` and
    /// `--amqp-password` replace their credentials.
    ///
    /// # Errors
    /// `-a` is not a host nor an amqp:// or amqps:// URI.
    pub fn amqp_uris(&self) -> Result<Vec<String>, String> {
        let bare_host = |host: &str| format!("amqp://guest:guest@{host}/%2f");
        dnet_amqp::connect::split_addresses(&self.amqp_address, Some(&bare_host))
            .map_err(|e| format!("-a/--amqp-address: {e}"))?
            .iter()
            .map(|uri| {
                self.amqp_credentials
                    .apply(uri)
                    .map_err(|e| format!("-a/--amqp-address: {e}"))
            })
            .collect()
    }

    /// What this worker declares its queue with.
    #[must_use]
    pub fn queue_contract(&self) -> QueueContract {
        QueueContract {
            queue_type: self.queue_type,
            max_attempts: self.unit.max_attempts,
        }
    }

    /// `--prefetch`, else twice the batch size (at most u16::MAX).
    #[must_use]
    pub fn prefetch(&self) -> u16 {
        self.prefetch
            .unwrap_or_else(|| u16::try_from(2 * self.unit.batch.max_batch_size).unwrap_or(u16::MAX))
    }

    #[must_use]
    pub fn unit_name(&self) -> String {
        self.unit_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}/{}", host.trim(), std::process::id())
        })
    }
}

/// `computation-unit infer`: run the model on a file, write the outputs.
#[derive(Clone, Debug, Args)]
#[command(group(ArgGroup::new(WEIGHTS_REQUIRED).args(["weights", "random_weights"]).required(true)))]
pub struct InferArgs {
    #[command(flatten)]
    pub model: ModelFlags,

    /// Input safetensors with one tensor "x" [N, C, H, W] (the shape of --start-layer).
    #[arg(long)]
    pub input: PathBuf,

    /// Trunk layers already applied to x (0 = normalised images).
    #[arg(long, default_value_t = 0)]
    pub start_layer: usize,

    /// Exit layer, 1..16.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub exit_layer: u8,

    /// Output safetensors: probs, logits (the exit's scores before softmax), category, confidence, and x (E<16).
    #[arg(long)]
    pub output: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_required_and_exclusive() {
        assert!(Cli::try_parse_from(["computation-unit"]).is_err());
        assert!(Cli::try_parse_from(["computation-unit", "--weights", "w", "--random-weights", "1"]).is_err());
        let cli = Cli::try_parse_from(["computation-unit", "-e", "8", "--random-weights", "3"]).expect("valid");
        assert_eq!(cli.worker.unit.weight_source(), WeightSource::Random(3));
        assert!(Cli::try_parse_from(["computation-unit", "-e", "17", "--random-weights", "3"]).is_err());
    }

    #[test]
    fn the_default_message_limit_holds_the_default_request_at_every_exit() {
        for exit in 1..=16 {
            let exit = exit.to_string();
            let cli = Cli::try_parse_from(["computation-unit", "-e", &exit, "--random-weights", "1"]).expect("valid");
            assert!(
                cli.worker
                    .unit
                    .check_message_limit(cli.worker.max_message_bytes)
                    .is_ok(),
                "exit {exit}"
            );
        }
        // The limit before: 32 MiB held 50 samples of layers 6-8, not 64.
        let cli = Cli::try_parse_from(["computation-unit", "-e", "8", "--random-weights", "1"]).expect("valid");
        let error = cli.worker.unit.check_message_limit(32 << 20).expect_err("too small");
        assert!(
            error.to_string().contains("lower --max-request-samples to 50"),
            "{error}"
        );
    }
}
