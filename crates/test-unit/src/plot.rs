//! `--plot`: the latency distribution and the answers by exit layer, side by side.

use std::path::Path;

use plotters::prelude::*;

use crate::call::{Outcome, Record};

const BINS: usize = 30;

/// Draws the PNG.
///
/// # Errors
/// When the file cannot be written or no font is available.
pub fn draw(path: &Path, records: &[Record]) -> anyhow::Result<()> {
    let error = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let (left, right) = root.split_horizontally(600);

    let latencies: Vec<f64> = records
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Failed { .. }))
        .map(|r| r.latency.as_secs_f64() * 1e3)
        .collect();
    let max = latencies.iter().copied().fold(1.0_f64, f64::max) * 1.05;
    let width = max / BINS as f64;
    let mut counts = [0_u32; BINS];
    for l in &latencies {
        counts[((l / width) as usize).min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&left)
        .caption("Latency of answered requests", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max, 0..top + 1)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("requests")
        .draw()
        .map_err(|e| error(&e))?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &n)| {
            Rectangle::new(
                [(i as f64 * width, 0), ((i + 1) as f64 * width, n)],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(|e| error(&e))?;

    let mut by_exit = [(0_u32, 0_u32); 17]; // (units, local) samples per exit layer
    for r in records {
        match &r.outcome {
            Outcome::Answered { samples, .. } => {
                for sample in samples.iter().filter(|s| s.exit <= 16) {
                    by_exit[sample.exit as usize].0 += 1;
                }
            }
            Outcome::Local { exit, .. } if *exit <= 16 => by_exit[*exit as usize].1 += 1,
            _ => {}
        }
    }
    let top = by_exit.iter().map(|(u, l)| u + l).max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&right)
        .caption("Answers by exit layer (orange: on the device)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0u32..17u32, 0..top + 1)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("exit layer")
        .y_desc("answers")
        .x_labels(17)
        .draw()
        .map_err(|e| error(&e))?;
    chart
        .draw_series(by_exit.iter().enumerate().flat_map(|(exit, &(units, local))| {
            let x = exit as u32;
            [
                Rectangle::new([(x, 0), (x + 1, local)], RGBColor(230, 140, 40).filled()),
                Rectangle::new([(x, local), (x + 1, local + units)], GREEN.mix(0.7).filled()),
            ]
        }))
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}
