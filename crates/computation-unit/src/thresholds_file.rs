//! Changing a unit's thresholds while it runs: `--thresholds-file` is read
//! again every second (a Kubernetes ConfigMap mounted as a file changes in
//! place), and a valid change applies to the next forward; an invalid file is
//! logged and the thresholds in use stay. Each change is logged with the
//! values before and after, and `dnet_exit_threshold` shows the threshold of
//! this unit's exit.
//!
//! One source per exit: in a direct unit whose edge holds the exit's
//! threshold (`--target-agreement`), the file gives where it starts; later
//! changes of that exit's entry are logged as not applied, counted
//! (`outcome="held"`), and the gauge is the edge's alone.

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
/// edge sets it when it moves the threshold). `controlled`: the edge holds
/// this exit's threshold, and only it sets the gauge.
pub fn start(
    path: Option<PathBuf>,
    live: LiveThresholds,
    exit: usize,
    controlled: bool,
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
        "Changes of --thresholds-file: applied, refused (invalid file; the thresholds in use stay), or held (this exit's entry changed while --target-agreement holds its threshold)",
        changes.clone(),
    );
    let own = move |thresholds: &[f64; SIDE_EXITS]| thresholds.get(exit.wrapping_sub(1)).copied().unwrap_or(1.0);
    // Where the edge's control starts, too.
    threshold.set(own(&live.get()));
    let show = move |thresholds: &[f64; SIDE_EXITS]| {
        if !controlled {
            threshold.set(own(thresholds));
        }
    };
    if let Some(path) = path {
        let exit = Exit { exit, controlled };
        tokio::spawn(watch(path, live, exit, show, changes));
    }
    gauge
}

/// Applies a changed file (`file`, before it `before`): every entry, but
/// this exit's while the edge holds it (logged, counted `held`).
fn apply(
    path: &Path,
    live: &LiveThresholds,
    Exit { exit, controlled }: Exit,
    file: &[f64; SIDE_EXITS],
    before: &[f64; SIDE_EXITS],
    changes: &Family<OutcomeLabel, Counter>,
) {
    let own = exit.wrapping_sub(1);
    let mut applied = *file;
    let held = controlled && file.get(own) != before.get(own);
    if controlled {
        if let (Some(entry), Some(&in_force)) = (applied.get_mut(own), live.get().get(own)) {
            *entry = in_force;
        }
    }
    let was = live.set(applied);
    if held {
        changes.get_or_create(&OutcomeLabel { outcome: "held" }).inc();
        warn!(file = %path.display(), exit, file_value = ?file.get(own),
            "thresholds file changed for this exit, not applied to it: --target-agreement holds its threshold \
             (the other exits' entries are applied)");
    }
    if applied != was {
        changes.get_or_create(&OutcomeLabel { outcome: "applied" }).inc();
        info!(file = %path.display(), exit, before = ?was.get(own), after = ?applied.get(own),
            all_before = ?was, all_after = ?applied, "thresholds changed");
    }
}

/// This unit's exit, and whether the edge holds its threshold.
#[derive(Clone, Copy)]
struct Exit {
    exit: usize,
    controlled: bool,
}

async fn watch(
    path: PathBuf,
    live: LiveThresholds,
    exit: Exit,
    show: impl Fn(&[f64; SIDE_EXITS]) + Send + 'static,
    changes: Family<OutcomeLabel, Counter>,
) {
    let mut last_error = None;
    // The file as last read (the unit started from it).
    let mut last_read = live.get();
    loop {
        tokio::time::sleep(POLL).await;
        match read(&path) {
            Ok(file) if file == last_read => last_error = None,
            Ok(file) => {
                apply(&path, &live, exit, &file, &last_read, &changes);
                show(&live.get());
                last_read = file;
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
