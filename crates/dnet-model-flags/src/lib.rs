//! The model's command-line flags, declared once for every program that
//! runs the model (`computation-unit`, `test-unit`): weights, device,
//! threads, precision, batching, and the value parsers of the model's
//! settings. Each program flattens what it takes and states what it
//! requires (the computation unit requires weights; test-unit's local
//! layers do not). Every flag also reads a `DNET_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use dnet_common::duration::parse_duration;
use dnet_model::batch::BatchPolicy;
use dnet_model::engine::EngineSettings;
use dnet_model::settings::{default_threads, ExitRule, Precision, WireDtype};
use dnet_model::weights::WeightSource;
use tch::Device;

/// Where the weights come from, the device and how the network computes.
#[derive(Clone, Debug, Args)]
pub struct ModelFlags {
    /// Weights: a .safetensors file with the original state_dict names.
    #[arg(long, env = "DNET_WEIGHTS", conflicts_with = "random_weights")]
    pub weights: Option<PathBuf>,

    /// Deterministic random weights from this seed (tests and demos).
    #[arg(long, env = "DNET_RANDOM_WEIGHTS", value_name = "SEED")]
    pub random_weights: Option<u64>,

    /// Device: cpu, cuda or cuda:N.
    #[arg(long, env = "DNET_DEVICE", default_value = "cpu", value_parser = dnet_model::settings::parse_device)]
    pub device: Device,

    /// libtorch intra-op threads [default: the CPUs this process may use: its
    /// affinity and cgroup CPU quota, e.g. a container's CPU limit].
    #[arg(long, env = "DNET_THREADS", value_parser = clap::value_parser!(i32).range(1..))]
    pub threads: Option<i32>,

    /// The dtype the network computes in; tensors on the wire stay F32.
    #[arg(long, env = "DNET_PRECISION", default_value = "f32", value_parser = precision())]
    pub precision: Precision,
}

impl ModelFlags {
    /// Where the weights come from; `None` when neither flag was given.
    #[must_use]
    pub fn weight_source(&self) -> Option<WeightSource> {
        match (&self.weights, self.random_weights) {
            (Some(path), _) => Some(WeightSource::File(path.clone())),
            (None, Some(seed)) => Some(WeightSource::Random(seed)),
            (None, None) => None,
        }
    }

    /// `--threads`, else the CPUs this process may use.
    #[must_use]
    pub fn threads(&self) -> i32 {
        self.threads.unwrap_or_else(default_threads)
    }
}

/// The batching policy, for every program that serves requests with the engine.
#[derive(Clone, Debug, Args)]
pub struct BatchFlags {
    /// Most samples in one forward pass. When the model is free it takes the
    /// oldest waiting request and every later one with the same start layer
    /// while their samples fit, and while the forward, as long as recent ones
    /// took, would end before the earliest deadline among them; a larger
    /// request runs alone.
    #[arg(long, env = "DNET_MAX_BATCH_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_size: u32,

    /// How long a batch that is not full may wait for more requests of its
    /// start layer (e.g. 2ms; 0ms: it runs with what is waiting, adding no delay).
    #[arg(long, env = "DNET_BATCH_TIMEOUT", default_value = "0ms", value_parser = parse_duration)]
    pub batch_timeout: Duration,
}

/// The engine's settings from its flags.
#[must_use]
pub fn engine_settings(model: &ModelFlags, batch: &BatchFlags) -> EngineSettings {
    EngineSettings {
        threads: model.threads(),
        precision: model.precision,
        batching: BatchPolicy {
            max_samples: batch.max_batch_size as usize,
            timeout: batch.batch_timeout,
        },
    }
}

/// `--precision`: one of [`Precision::NAMES`], listed in `--help`.
#[must_use]
pub fn precision() -> impl TypedValueParser<Value = Precision> {
    PossibleValuesParser::new(Precision::NAMES).try_map(|name| name.parse::<Precision>())
}

/// `--wire-dtype`: one of [`WireDtype::NAMES`], listed in `--help`.
#[must_use]
pub fn wire_dtype() -> impl TypedValueParser<Value = WireDtype> {
    PossibleValuesParser::new(WireDtype::NAMES).try_map(|name| name.parse::<WireDtype>())
}

/// `--exit-rule`: one of [`ExitRule::NAMES`], listed in `--help`.
#[must_use]
pub fn exit_rule() -> impl TypedValueParser<Value = ExitRule> {
    PossibleValuesParser::new(ExitRule::NAMES).try_map(|name| name.parse::<ExitRule>())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Program {
        #[command(flatten)]
        model: ModelFlags,
        #[command(flatten)]
        batch: BatchFlags,
    }

    #[test]
    fn flags_parse_into_the_models_settings() {
        let program = Program::try_parse_from([
            "p",
            "--precision",
            "bf16",
            "--batch-timeout",
            "2ms",
            "--random-weights",
            "3",
        ])
        .expect("valid");
        assert_eq!(program.model.precision, Precision::Bf16);
        assert_eq!(program.batch.batch_timeout, Duration::from_millis(2));
        assert_eq!(program.model.weight_source(), Some(WeightSource::Random(3)));
        assert!(Program::try_parse_from(["p", "--precision", "f64"]).is_err());
        assert!(Program::try_parse_from(["p", "--weights", "w", "--random-weights", "1"]).is_err());
        assert!(
            Program::try_parse_from(["p", "--batch-timeout", "2"]).is_err(),
            "a duration needs its unit"
        );
    }
}
