//! The offline tools' commands: `calibrate`, `profile` and `plan` read their
//! inputs, run the methods of `calibrate.rs`, `profile.rs` and `plan.rs`, and
//! print and write what they found.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use dnet_model::model::{MultiExitInception, SIDE_EXITS, TRUNK_LAYERS};
use dnet_model::weights::{load, WeightSource};

use crate::calibrate::{choose, evaluate, Cascade, Evaluation, Reference, Target};
use dnet_model_flags::ModelFlags;

use crate::config::{CalibrateArgs, PlanArgs, ProfileArgs};
use crate::exit_table::ExitTable;
use crate::inputs::Inputs;
use crate::plan::{self, Prediction, Setting};
use crate::profile::{self, LayerTimes};

/// `calibrate`'s JSON report.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CalibrationReport {
    /// Where the inputs came from.
    pub data: String,
    /// What the thresholds were chosen for; `None`: given thresholds evaluated.
    pub target: Option<Target>,
    pub thresholds: Vec<f64>,
    /// The cascade's exits, 16 last.
    pub exits: Vec<usize>,
    /// Exit layer -> share of inputs answered there.
    pub exit_share: BTreeMap<usize, f64>,
    pub agreement: f64,
    pub accuracy: Option<f64>,
    pub mean_exit: f64,
    pub per_exit: serde_json::Value,
    /// Every exit's answer and confidence per input: `plan` calibrates each
    /// layout it weighs from these.
    pub table: ExitTable,
}

/// `test-unit calibrate`.
///
/// # Errors
/// Unreadable data or weights, an unreachable target, an unwritable output.
pub fn calibrate(args: &CalibrateArgs) -> anyhow::Result<()> {
    let (inputs, data) = match (&args.dataset, args.synthetic) {
        (Some(path), _) => (
            Inputs::open(path, !args.no_labels)?,
            format!("{}{}", path.display(), if args.no_labels { " (no labels)" } else { "" }),
        ),
        (None, Some(n)) => (
            Inputs::Synthetic(args.seed),
            format!("{n} synthetic images, seed {}", args.seed),
        ),
        (None, None) => anyhow::bail!("give --dataset FILE or --synthetic N"),
    };
    let inputs = inputs.with_noise(args.noise, args.seed);
    let data = if args.noise > 0.0 {
        format!("{data}, noise {} (seed {})", args.noise, args.seed)
    } else {
        data
    };
    let count = inputs.records().or(args.synthetic).unwrap_or(0);
    let model = load_model(&args.model, None)?;
    let batch = usize::try_from(args.batch_size)?;
    let table = ExitTable::compute(&model, &inputs, count, batch, args.model.device)?;
    let exits: Vec<usize> = match &args.exits {
        Some(exits) => exits.0.iter().copied().filter(|&e| e < TRUNK_LAYERS).collect(),
        None => (1..TRUNK_LAYERS).collect(),
    };
    let target = match (args.target_agreement, args.target_accuracy) {
        (Some(share), _) => Some(Target {
            reference: Reference::FinalExit,
            share,
        }),
        (None, Some(share)) => Some(Target {
            reference: Reference::Labels,
            share,
        }),
        (None, None) => None,
    };
    let cascade = match (target, &args.thresholds) {
        (Some(target), _) => choose(&table, target, &exits).map_err(anyhow::Error::msg)?,
        (None, Some(given)) => Cascade {
            thresholds: given.0,
            exits,
        },
        (None, None) => anyhow::bail!("give --target-agreement, --target-accuracy or --thresholds"),
    };
    let goal = target.map_or("evaluate the given thresholds".to_owned(), |t| t.to_string());
    let evaluation = evaluate(&table, &cascade);
    print!("{}", calibration_text(&data, &goal, &cascade, &evaluation));
    let line = thresholds_line(&cascade.thresholds);
    if let Some(path) = &args.write_thresholds {
        let text = format!("# test-unit calibrate: {goal} on {data}\n{line}\n");
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let report = CalibrationReport {
            data,
            target,
            thresholds: cascade.thresholds.to_vec(),
            exits: evaluation.per_exit.iter().map(|row| row.exit).collect(),
            exit_share: evaluation.per_exit.iter().map(|row| (row.exit, row.share)).collect(),
            agreement: evaluation.agreement,
            accuracy: evaluation.accuracy,
            mean_exit: evaluation.mean_exit,
            per_exit: serde_json::to_value(&evaluation.per_exit)?,
            table,
        };
        write_json(path, &report)?;
    }
    Ok(())
}

/// The thresholds as `--thresholds` takes them.
fn thresholds_line(thresholds: &[f64]) -> String {
    thresholds.iter().map(f64::to_string).collect::<Vec<_>>().join(",")
}

fn calibration_text(data: &str, goal: &str, cascade: &Cascade, evaluation: &Evaluation) -> String {
    let percent = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.2} %", v * 100.0));
    let mut text = format!("{} inputs: {data}; goal: {goal}\n", evaluation.inputs);
    text.push_str("exit  threshold   answered here  agreement  accuracy\n");
    for row in &evaluation.per_exit {
        let threshold = row.threshold.map_or("-".to_owned(), |t| format!("{t:.6}"));
        let _ = writeln!(
            text,
            "{:>4}  {threshold:>9}  {:>13}  {:>9}  {:>8}",
            row.exit,
            percent(Some(row.share)),
            percent(row.agreement),
            percent(row.accuracy)
        );
    }
    let _ = writeln!(
        text,
        "cascade: agreement {}, accuracy {}, mean exit layer {:.2}",
        percent(Some(evaluation.agreement)),
        percent(evaluation.accuracy),
        evaluation.mean_exit
    );
    let _ = writeln!(text, "--thresholds {}", thresholds_line(&cascade.thresholds));
    text
}

/// `test-unit profile`.
///
/// # Errors
/// The weights cannot be loaded, or the output written.
pub fn profile(args: &ProfileArgs) -> anyhow::Result<()> {
    let times = measure(&args.model, usize::try_from(args.repeats)?)?;
    print!("{}", times_text(&times));
    if let Some(path) = &args.json {
        write_json(path, &times)?;
    }
    Ok(())
}

fn measure(model_flags: &ModelFlags, repeats: usize) -> anyhow::Result<LayerTimes> {
    let model = load_model(model_flags, Some(WeightSource::Random(0)))?;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let measured_on = format!(
        "{} {:?}, {} threads, {:?}",
        host.trim(),
        model_flags.device,
        tch::get_num_threads(),
        model_flags.precision
    );
    Ok(profile::measure(&model, model_flags.device, repeats, measured_on))
}

fn times_text(times: &LayerTimes) -> String {
    let mut text = format!(
        "per-layer times at batch 1 ({}), median ms:\nlayer  trunk  head of exit layer+1\n",
        times.measured_on
    );
    for (l, (trunk, head)) in times.trunk_ms.iter().zip(&times.head_ms).enumerate() {
        let _ = writeln!(text, "{l:>5}  {trunk:>5.2}  {head:>5.2}");
    }
    let _ = writeln!(text, "whole network 0->16: {:.2} ms", times.unit_ms(0, TRUNK_LAYERS));
    text
}

/// `test-unit plan`.
///
/// # Errors
/// Unreadable or inconsistent inputs, or an unwritable output.
pub fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.calibration)
        .with_context(|| format!("cannot read {}", args.calibration.display()))?;
    let calibration: CalibrationReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not calibrate's JSON report", args.calibration.display()))?;
    let table = &calibration.table;
    if table.is_empty()
        || table.answer.len() != table.len()
        || table.label.as_ref().is_some_and(|l| l.len() != table.len())
    {
        anyhow::bail!("{}: its table is empty or inconsistent", args.calibration.display());
    }
    let given: [f64; SIDE_EXITS] = calibration
        .thresholds
        .clone()
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: thresholds must hold 15 values", args.calibration.display()))?;
    if args.links.len() > 2 {
        anyhow::bail!(
            "--links: {} links; plan weighs 1, 2 or 3 units (0 to 2 links)",
            args.links.len()
        );
    }
    let units = args.links.len() + 1;
    let setting = Setting {
        times: unit_times(args, units)?,
        links: args.links.clone(),
        client: args.client_link,
        wire_bytes: args.wire_dtype.kind().elt_size_in_bytes(),
        hop_overhead: args.hop_overhead,
    };
    let layouts = match &args.exits {
        Some(exits) if exits.0.len() == units && exits.0.last() == Some(&TRUNK_LAYERS) => vec![exits.0.clone()],
        Some(exits) => anyhow::bail!(
            "--exits {:?}: give {units} exits ending in 16, one per unit ({} links)",
            exits.0,
            args.links.len()
        ),
        None => plan::layouts(units),
    };
    let mut predictions = Vec::new();
    for exits in layouts {
        let side = &exits[..exits.len() - 1];
        // Each layout gets the thresholds calibrate's method chooses for its
        // own exits; a report of given thresholds keeps those.
        let cascade = match calibration.target {
            Some(target) => choose(table, target, side).map_err(anyhow::Error::msg)?,
            None => Cascade {
                thresholds: given,
                exits: side.to_vec(),
            },
        };
        predictions.push(plan::predict(&setting, table, &cascade));
    }
    predictions.sort_by(|a, b| a.mean_ms.total_cmp(&b.mean_ms));
    let goal = calibration
        .target
        .map_or("the report's own thresholds".to_owned(), |t| t.to_string());
    print!("{}", plan_text(args, &setting, &goal, table.len(), &predictions));
    if let Some(path) = &args.json {
        write_json(path, &predictions)?;
    }
    Ok(())
}

/// One `LayerTimes` per unit: measured here, one file for all, or one each.
fn unit_times(args: &PlanArgs, units: usize) -> anyhow::Result<Vec<LayerTimes>> {
    let read = |path: &Path| -> anyhow::Result<LayerTimes> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let times: LayerTimes =
            serde_json::from_str(&text).with_context(|| format!("{} is not profile's JSON", path.display()))?;
        times.check().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(times)
    };
    match args.times.len() {
        0 => Ok(vec![measure(&args.model, 20)?; units]),
        1 => Ok(vec![read(&args.times[0])?; units]),
        n if n == units => args.times.iter().map(|p| read(p)).collect(),
        n => anyhow::bail!("--times: {n} files for {units} units; give one for all or one per unit"),
    }
}

fn plan_text(args: &PlanArgs, setting: &Setting, goal: &str, inputs: usize, predictions: &[Prediction]) -> String {
    let links: Vec<String> = setting.links.iter().map(ToString::to_string).collect();
    let mut text = format!(
        "{} units; client link: {}; links between units: {}; wire {:?}; {} ms per hop besides the link\n",
        setting.times.len(),
        setting
            .client
            .map_or("none (the client is on the first unit)".to_owned(), |l| l.to_string()),
        links.join(", "),
        args.wire_dtype,
        setting.hop_overhead.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        text,
        "times: {}; each layout's thresholds from {inputs} inputs, for {goal}",
        setting
            .times
            .iter()
            .map(|t| t.measured_on.clone())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    let _ = writeln!(
        text,
        "{:>4}  {:<9} {:>8} {:>8} {:>8}  {:<20}  {:<20}  agreement",
        "rank", "exits", "mean ms", "p50 ms", "p90 ms", "answered by unit", "KiB/answer per link"
    );
    for (rank, p) in predictions.iter().take(args.top.max(1)).enumerate() {
        let exits: Vec<String> = p.exits.iter().map(ToString::to_string).collect();
        let answered: Vec<String> = p.answered.iter().map(|s| format!("{:.0}%", s * 100.0)).collect();
        let bytes: Vec<String> = p.link_bytes.iter().map(|b| format!("{:.1}", b / 1024.0)).collect();
        let _ = writeln!(
            text,
            "{:>4}  {:<9} {:>8.1} {:>8.1} {:>8.1}  {:<20}  {:<20}  {:.2}%",
            rank + 1,
            exits.join(","),
            p.mean_ms,
            p.p50_ms,
            p.p90_ms,
            answered.join(" / "),
            bytes.join(" / "),
            p.agreement * 100.0
        );
    }
    if let Some(best) = predictions.first() {
        let _ = writeln!(text, "--thresholds of rank 1: {}", thresholds_line(&best.thresholds));
    }
    text
}

/// The model on its device, threads set; `fallback` when no weights are given.
fn load_model(flags: &ModelFlags, fallback: Option<WeightSource>) -> anyhow::Result<MultiExitInception> {
    let source = flags
        .weight_source()
        .or(fallback)
        .ok_or_else(|| anyhow::anyhow!("give --weights FILE or --random-weights SEED"))?;
    tch::set_num_threads(flags.threads());
    Ok(load(&source, flags.device, flags.precision)?.model)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
