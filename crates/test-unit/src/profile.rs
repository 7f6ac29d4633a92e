//! Per-layer compute times of the network on this machine (`test-unit
//! profile`, and `plan` when it is given no times): each trunk layer and each
//! exit head at batch 1, the median of repeats after a warm-up.

use std::time::Instant;

use dnet_model::model::{MultiExitInception, TRUNK_LAYERS};
use tch::{Device, Kind, Tensor};

/// What one layer or head took, in milliseconds, at batch 1.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerTimes {
    /// Where they were measured (host, device, threads, precision), for people.
    pub measured_on: String,
    /// Trunk layers 0..=15: layer `l` takes boundary `l` to boundary `l + 1`.
    pub trunk_ms: Vec<f64>,
    /// Exits 1..=16: the head on the output of trunk layer `exit - 1`.
    pub head_ms: Vec<f64>,
}

impl LayerTimes {
    /// A unit from `start` to `exit`: its trunk layers and its exit's head.
    #[must_use]
    pub fn unit_ms(&self, start: usize, exit: usize) -> f64 {
        self.trunk_ms[start..exit].iter().sum::<f64>() + self.head_ms[exit - 1]
    }

    /// Checks that there are 16 of each, finite and not negative.
    ///
    /// # Errors
    /// Names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        for (name, values) in [("trunk_ms", &self.trunk_ms), ("head_ms", &self.head_ms)] {
            if values.len() != TRUNK_LAYERS || values.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!("{name} must hold {TRUNK_LAYERS} times in ms, each >= 0"));
            }
        }
        Ok(())
    }
}

/// Measures `model` on `device` (`repeats` timed passes after 3 untimed).
#[must_use]
pub fn measure(model: &MultiExitInception, device: Device, repeats: usize, measured_on: String) -> LayerTimes {
    let _no_grad = tch::no_grad_guard();
    let image = Tensor::randn([1, 3, 32, 32], (Kind::Float, device));
    let mut trunk = vec![Vec::new(); TRUNK_LAYERS];
    let mut head = vec![Vec::new(); TRUNK_LAYERS];
    let sync = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(i64::try_from(index).unwrap_or(0));
        }
    };
    for pass in 0..repeats + 3 {
        let mut x = model.input(&image);
        for layer in 0..TRUNK_LAYERS {
            sync();
            let started = Instant::now();
            x = model.layer(layer, &x);
            sync();
            let layer_ms = started.elapsed().as_secs_f64() * 1e3;
            let started = Instant::now();
            let _ = model.head(layer + 1, &x);
            sync();
            if pass >= 3 {
                trunk[layer].push(layer_ms);
                head[layer].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    LayerTimes {
        measured_on,
        trunk_ms: trunk.iter_mut().map(|v| median(v)).collect(),
        head_ms: head.iter_mut().map(|v| median(v)).collect(),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
