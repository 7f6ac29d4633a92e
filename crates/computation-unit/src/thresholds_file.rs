//! Changing a unit's thresholds while it runs: `--thresholds-file` is read
//! again every second (a Kubernetes ConfigMap mounted as a file changes in
//! place), and a valid change applies to the next forward; an invalid file is
//! logged and the thresholds in use stay. Each change is logged with the
//! values before and after, and `dnet_exit_threshold` shows the threshold of
//! this unit's exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dnet_model::model::SIDE_EXITS;
use dnet_model::settings::parse_thresholds_file;
use dnet_model::thresholds::LiveThresholds;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tracing::{info, warn};

/// How often the file is read again.
const POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Reads `path` as `--thresholds` takes them (see `parse_thresholds_file`).
///
/// # Errors
/// Unreadable, or not 15 thresholds in 0..1.
pub fn read(path: &Path) -> anyhow::Result<[f64; SIDE_EXITS]> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse_thresholds_file(&text)
        .map(|t| t.0)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Registers the metrics and, with a file, starts re-reading it (inside a
/// tokio runtime). Returns the `dnet_exit_threshold` gauge (a direct unit's
/// edge sets it when it moves the threshold).
pub fn start(
    path: Option<PathBuf>,
    live: LiveThresholds,
    exit: usize,
    registry: &mut Registry,
) -> Gauge<f64, AtomicU64> {
    let threshold = Gauge::<f64, AtomicU64>::default();
    let gauge = threshold.clone();
    let changes = Family::<OutcomeLabel, Counter>::default();
    registry.register(
        "dnet_exit_threshold",
        "Threshold of this unit's exit in use (1 at exit 16, which always answers)",
        threshold.clone(),
    );
    registry.register(
        "dnet_threshold_changes",
        "Changes of --thresholds-file: applied, or refused (invalid file; the thresholds in use stay)",
        changes.clone(),
    );
    let show = move |thresholds: &[f64; SIDE_EXITS]| {
        threshold.set(thresholds.get(exit.wrapping_sub(1)).copied().unwrap_or(1.0));
    };
    show(&live.get());
    if let Some(path) = path {
        tokio::spawn(watch(path, live, exit, show, changes));
    }
    gauge
}

async fn watch(
    path: PathBuf,
    live: LiveThresholds,
    exit: usize,
    show: impl Fn(&[f64; SIDE_EXITS]) + Send + 'static,
    changes: Family<OutcomeLabel, Counter>,
) {
    let mut last_error = None;
    loop {
        tokio::time::sleep(POLL).await;
        match read(&path) {
            Ok(thresholds) if thresholds == live.get() => last_error = None,
            Ok(thresholds) => {
                let before = live.set(thresholds);
                show(&thresholds);
                changes.get_or_create(&OutcomeLabel { outcome: "applied" }).inc();
                let own = |t: &[f64; SIDE_EXITS]| t.get(exit.wrapping_sub(1)).copied();
                info!(file = %path.display(), exit, before = ?own(&before), after = ?own(&thresholds),
                    all_before = ?before, all_after = ?thresholds, "thresholds changed");
                last_error = None;
            }
            Err(error) => {
                let message = error.to_string();
                // Once per distinct problem, not every second.
                if last_error.as_ref() != Some(&message) {
                    changes.get_or_create(&OutcomeLabel { outcome: "refused" }).inc();
                    warn!(error = %message, "thresholds file not applied; the thresholds in use stay");
                    last_error = Some(message);
                }
            }
        }
    }
}
