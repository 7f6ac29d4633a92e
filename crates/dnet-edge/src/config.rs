//! `EdgeArgs`: how a unit serves gRPC (listening, forwarding to the next
//! unit, deadlines, TLS, admission, draining), the flags every unit takes,
//! transmission unit and direct unit alike. Every flag also reads a
//! `DNET_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use dnet_calibration::live::default_window;
use dnet_codec::bounds::{parse_override_bounds, OverrideBounds};
use dnet_common::duration::parse_duration;
use dnet_common::telemetry::ObservabilityArgs;

use crate::agreement::AgreementSettings;

/// How a unit serves gRPC: listening, forwarding to the next unit, deadlines,
/// TLS, admission, draining.
#[derive(Clone, Debug, Args)]
pub struct EdgeArgs {
    /// Address the gRPC server listens on.
    #[arg(short = 'l', long, env = "DNET_LISTEN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub listen_address: String,

    /// gRPC address (host:port) of the next unit; NOT_SUCCESS answers are
    /// forwarded there. A comma list, or a name that resolves to several
    /// addresses (a headless Service; resolved again every second), spreads
    /// the calls over every address that accepts connections. Without it,
    /// NOT_SUCCESS is returned to the caller.
    #[arg(short = 'n', long, env = "DNET_NEXT_ADDRESS")]
    pub next_address: Option<String>,

    /// Test only: milliseconds to wait before returning a forwarded answer,
    /// to simulate a slow link (the original's `-d`/`--delay`).
    #[arg(
        long,
        short = 'd',
        alias = "delay",
        env = "DNET_DELAY",
        default_value_t = 0,
        hide = true
    )]
    pub test_delay: u64,

    /// Deadline of a call whose caller set none (e.g. 500ms, 30s, 2m).
    #[arg(long, env = "DNET_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Longest deadline a call may have: a caller's longer `grpc-timeout` is
    /// cut to it (counted in dnet_deadline_clamped_total). Deadlines travel
    /// as AMQP expirations, which brokers bound (2^32 - 1 ms at most).
    #[arg(long, env = "DNET_MAX_DEADLINE", default_value = "5m", value_parser = parse_duration)]
    pub max_deadline: Duration,

    #[command(flatten)]
    pub observability: ObservabilityArgs,

    /// Name of this unit in hop records and logs [default: host name and port].
    #[arg(long, env = "DNET_UNIT_NAME")]
    pub unit_name: Option<String>,

    /// Largest message accepted or sent, in bytes: gRPC calls and, in a
    /// transmission unit, its queue's messages. The default holds 64 samples
    /// at the largest boundary (layers 7-8: 648 KiB per sample).
    #[arg(long, env = "DNET_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "DNET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "DNET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require callers to present a certificate signed by this CA (PEM); needs --tls-cert.
    #[arg(long, env = "DNET_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Call the next unit over TLS, trusting this CA (PEM).
    #[arg(long, env = "DNET_NEXT_TLS_CA")]
    pub next_tls_ca: Option<PathBuf>,

    /// Name to verify in the next unit's certificate [default: the host of --next-address].
    #[arg(long, env = "DNET_NEXT_TLS_DOMAIN", requires = "next_tls_ca")]
    pub next_tls_domain: Option<String>,

    /// Client certificate (PEM) presented to the next unit; needs --next-tls-key.
    #[arg(long, env = "DNET_NEXT_TLS_CERT", requires_all = ["next_tls_key", "next_tls_ca"])]
    pub next_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --next-tls-cert.
    #[arg(long, env = "DNET_NEXT_TLS_KEY", requires = "next_tls_cert")]
    pub next_tls_key: Option<PathBuf>,

    /// Calls handled at once; more get RESOURCE_EXHAUSTED at once, before
    /// their message is read [default: as many as fit three quarters of the
    /// memory budget (half of what this process may use: the cgroup limit,
    /// else the machine's) with a request and a reply of --max-message-bytes
    /// each, at most 1024].
    #[arg(long, env = "DNET_MAX_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: Option<u32>,

    /// Calls one connection may have in flight; more get RESOURCE_EXHAUSTED
    /// at once [default: --max-in-flight, so that one caller (the previous
    /// unit) can use the whole unit; lower it to share the unit fairly].
    #[arg(long, env = "DNET_MAX_CALLS_PER_CONNECTION", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_calls_per_connection: Option<u32>,

    /// Open gRPC connections; more are closed as they arrive (each may
    /// buffer up to 16 MiB of HTTP/2 flow-control window) [default: as many
    /// as fit a quarter of the memory budget, 8..1024].
    #[arg(long, env = "DNET_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Requests waiting to be computed (in the queue, read every 250 ms; in
    /// a direct unit, for its model) above which calls get RESOURCE_EXHAUSTED
    /// at once instead of joining them.
    #[arg(long, env = "DNET_MAX_QUEUE", default_value_t = 1000)]
    pub max_queue: u64,

    /// Retries of UNAVAILABLE (broker or next unit) within each call's
    /// deadline, as a percentage of calls (a retry budget, plus 10 retries
    /// per second); 0 turns retries off.
    #[arg(long, env = "DNET_RETRY_BUDGET", default_value_t = 10.0)]
    pub retry_budget: f32,

    /// Longest a client's connection is kept: past it the server asks the
    /// client to reconnect (HTTP/2 GOAWAY), so that long-lived clients spread
    /// over replicas added since (a scale-up or a rollout); 0s: never.
    #[arg(long, env = "DNET_MAX_CONNECTION_AGE", default_value = "5m", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// How long calls on a connection past its age may take to finish.
    #[arg(long, env = "DNET_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub max_connection_age_grace: Duration,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish.
    #[arg(long, env = "DNET_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Answer from this unit's exit, marked `degraded`, when the units after
    /// it cannot answer before the call's deadline: a forward that has not
    /// answered a tenth of the call's budget (at least 20 ms) before the
    /// deadline; a forward that fails because they cannot answer (none of
    /// the next unit's addresses serves, it refuses the call for load, the
    /// deadline passes on the way, the call breaks); and, without trying,
    /// while the time they have needed lately (the slowest tenth of at least
    /// 10 recent forwards, or the age of the oldest one still out) exceeds
    /// what the call has left and a forward is out to measure them. Only
    /// when every sample still waiting is at least --answer-floor confident
    /// here (counted in dnet_late_answers).
    #[arg(long, env = "DNET_ANSWER_WHEN_LATE")]
    pub answer_when_late: bool,

    /// The least confidence (0..1) --answer-when-late answers with.
    #[arg(long, env = "DNET_ANSWER_FLOOR", default_value_t = 0.0, value_parser = unit_interval)]
    pub answer_floor: f64,

    /// Share (0..1) of the samples this unit computes whose agreement with
    /// the last exit it measures, on both sides of its threshold: samples
    /// answered here are sent on to the last exit as shadow work (never on
    /// the caller's path, never retried, refused first under load), samples
    /// handed on are read in the answer that comes back (dnet_exit_agreement,
    /// dnet_live_*, dnet_shadow); 0: off. Needs a next unit.
    #[arg(long, env = "DNET_SHADOW_RATE", default_value_t = 0.0, value_parser = unit_interval)]
    pub shadow_rate: f64,

    /// Move this exit's threshold so that, of the samples this unit
    /// computes, at least this share (0..1) end with the last exit's answer
    /// (those answered here agree with it, those handed on get it): what
    /// `test-unit calibrate --exits E,16 --target-agreement` chooses for,
    /// chosen the same way over the last --agreement-window outcomes, with
    /// a margin that window proves (docs/calibrate-and-plan.md, "Thresholds
    /// that hold a target"). Needs --shadow-rate and --threshold-range.
    #[arg(long, env = "DNET_TARGET_AGREEMENT", value_parser = unit_interval)]
    pub target_agreement: Option<f64>,

    /// Where --target-agreement may move the threshold (LO..HI). It reaches
    /// the computation as a request override, which the computing side must
    /// accept (a computation unit's --allow-threshold-override; a direct
    /// unit's own --allow-threshold-override is the default).
    #[arg(long, env = "DNET_THRESHOLD_RANGE", value_parser = parse_override_bounds)]
    pub threshold_range: Option<OverrideBounds>,

    /// Outcomes the live calibration chooses from [default: sized from
    /// --target-agreement, 100 disagreements at the target: 1,000 for 0.9,
    /// 10,000 for 0.99; 2,000 without a target]. A smaller window follows
    /// changing traffic sooner and pays a larger margin; one that can never
    /// prove the target is refused at start. 20 to 100,000.
    #[arg(long, env = "DNET_AGREEMENT_WINDOW", value_parser = clap::value_parser!(u32).range(20..=100_000))]
    pub agreement_window: Option<u32>,
}

/// Parses a number in 0..=1.
fn unit_interval(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("'{text}' is not a number in 0..1")),
    }
}

/// The default `--max-message-bytes`: 64 samples at the largest boundary
/// (288 x 24 x 24 F32, 648 KiB each), their answer rows and room to spare.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 48 << 20;
/// The most calls, and the most connections, a unit takes by default.
const DEFAULT_CAP: u64 = 1024;
/// The longest AMQP per-message expiration (a 32-bit count of milliseconds),
/// which carries a call's deadline through the queue.
pub const MAX_EXPIRATION: Duration = Duration::from_millis(u32::MAX as u64);
/// The largest `--retry-budget` (tower's budget takes at most 1000 retries per call).
const MAX_RETRY_BUDGET: f32 = 100_000.0;
/// The fewest connections a unit takes by default.
const MIN_CONNECTIONS: u64 = 8;

impl EdgeArgs {
    /// Memory this unit's limits are sized to by default: half of what the
    /// process may use (cgroup limit, else the machine's; 1 GiB if unknown).
    fn memory_budget() -> u64 {
        dnet_common::resources::memory_limit_bytes().unwrap_or(1 << 30) / 2
    }

    /// `--max-in-flight`, else what fits three quarters of the memory
    /// budget with two messages of `--max-message-bytes` per call.
    #[must_use]
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.unwrap_or_else(|| {
            let per_call = 2 * self.max_message_bytes.max(1) as u64;
            let calls = (Self::memory_budget() / 4 * 3 / per_call).clamp(1, DEFAULT_CAP);
            u32::try_from(calls).unwrap_or(1)
        })
    }

    /// `--max-calls-per-connection`, else `--max-in-flight`.
    #[must_use]
    pub fn max_calls_per_connection(&self) -> u32 {
        self.max_calls_per_connection.unwrap_or_else(|| self.max_in_flight())
    }

    /// `--max-connections`, else what fits a quarter of the memory budget
    /// with a full HTTP/2 connection window each.
    #[must_use]
    pub fn max_connections(&self) -> u32 {
        self.max_connections.unwrap_or_else(|| {
            let per_connection = u64::from(dnet_common::http2::CONNECTION_WINDOW);
            let connections = (Self::memory_budget() / 4 / per_connection).clamp(MIN_CONNECTIONS, DEFAULT_CAP);
            u32::try_from(connections).unwrap_or(u32::MAX)
        })
    }

    /// The most memory the unit's calls and connections may hold: a request
    /// and a reply of `--max-message-bytes` per call in flight, and a full
    /// connection window per connection (docs/architecture.md, "Admission").
    #[must_use]
    pub fn memory_bound(&self) -> u64 {
        let calls = u64::from(self.max_in_flight()) * 2 * self.max_message_bytes as u64;
        let connections = u64::from(self.max_connections()) * u64::from(dnet_common::http2::CONNECTION_WINDOW);
        calls + connections
    }

    /// Settings that contradict each other.
    ///
    /// # Errors
    /// A message naming the flags.
    pub fn check(&self) -> Result<(), String> {
        if self.max_deadline > MAX_EXPIRATION {
            return Err(format!(
                "--max-deadline {:?} is longer than an AMQP expiration can carry ({} ms, 2^32 - 1): lower it",
                self.max_deadline,
                MAX_EXPIRATION.as_millis()
            ));
        }
        // tower's budget asserts its ratio lies in 0..=1000 (percent 0..=100000).
        if !(0.0..=MAX_RETRY_BUDGET).contains(&self.retry_budget) {
            return Err(format!(
                "--retry-budget {} is not a percentage of calls in 0..={MAX_RETRY_BUDGET}",
                self.retry_budget
            ));
        }
        if self.timeout > self.max_deadline {
            return Err(format!(
                "--timeout {:?} is longer than --max-deadline {:?}: raise --max-deadline or lower --timeout",
                self.timeout, self.max_deadline
            ));
        }
        if self.shadow_rate > 0.0 && self.next_address.is_none() {
            return Err("--shadow-rate sends samples on to the next unit: give --next-address".to_owned());
        }
        if self.target_agreement.is_some() && self.shadow_rate == 0.0 {
            return Err("--target-agreement needs shadow work to measure agreement: give --shadow-rate".to_owned());
        }
        if self.target_agreement.is_some() && self.threshold_range.is_none() {
            return Err(
                "--target-agreement needs --threshold-range LO..HI (the computing side must accept it: \
                        --allow-threshold-override)"
                    .to_owned(),
            );
        }
        if let Some(target) = self.target_agreement {
            dnet_calibration::live::check(target, self.agreement_window())?;
        }
        Ok(())
    }

    /// `--agreement-window`, else sized from the target.
    #[must_use]
    pub fn agreement_window(&self) -> usize {
        self.agreement_window
            .map_or_else(|| default_window(self.target_agreement), |w| w as usize)
    }

    /// What the live calibration aims for and how it samples, with `--shadow-rate`.
    #[must_use]
    pub fn agreement(&self) -> Option<AgreementSettings> {
        (self.shadow_rate > 0.0).then(|| AgreementSettings {
            target: self.target_agreement,
            range: self.threshold_range.unwrap_or(OverrideBounds { low: 0.0, high: 1.0 }),
            window: self.agreement_window(),
            sample_rate: self.shadow_rate,
        })
    }

    /// The unit name for hop records: `--unit-name`, else `HOSTNAME:port`.
    #[must_use]
    pub fn unit_name(&self, port: u16) -> String {
        if let Some(name) = &self.unit_name {
            return name.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "dnet-unit".to_owned());
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::EdgeArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeArgs,
    }

    fn check(args: &[&str]) -> Result<(), String> {
        Cli::try_parse_from(std::iter::once("unit").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?
            .edge
            .check()
    }

    #[test]
    fn a_retry_budget_tower_cannot_hold_is_refused_not_a_panic() {
        assert!(check(&["--retry-budget", "100000"]).is_ok());
        for refused in ["100001", "1e9", "NaN"] {
            let error = check(&["--retry-budget", refused]).expect_err(refused);
            assert!(error.contains("--retry-budget"), "{error}");
        }
        // And what is accepted builds the policy without tower's assertion.
        let _ = crate::retry::RetryPolicy::new(100_000.0);
    }

    #[test]
    fn a_max_deadline_past_the_amqp_expiration_bound_is_refused() {
        let bound_ms = u64::from(u32::MAX);
        assert!(check(&["--max-deadline", &format!("{bound_ms}ms")]).is_ok());
        let error = check(&["--max-deadline", &format!("{}ms", bound_ms + 1)]).expect_err("past the bound");
        assert!(
            error.contains("--max-deadline") && error.contains("4294967295"),
            "{error}"
        );
    }
}
