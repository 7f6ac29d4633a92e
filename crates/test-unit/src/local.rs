//! The device's own layers: trunk layers 0..e and exit e, computed in this
//! process by the engine that computation units use (one model thread;
//! concurrent callers' images batch together as they would at a unit).

use std::sync::Arc;
use std::time::Instant;

use dnet_model::engine::{Engine, EngineSettings, Job, Outcome};
use dnet_model::metrics::EngineMetrics;
use dnet_model::request::{Prepared, UnitSettings};
use dnet_model::weights::WeightSource;
use dnet_proto::ComputationResponse;
use tch::Tensor;
use tokio::sync::oneshot;

/// Local exit `e` with its own model thread.
#[derive(Debug)]
pub struct LocalLayers {
    engine: Engine,
    /// What the local layers measured (batch sizes, compute, waits).
    pub metrics: Arc<EngineMetrics>,
}

impl LocalLayers {
    /// Loads the model (blocking) for local exit `unit.exit`.
    ///
    /// # Errors
    /// The weights cannot be loaded.
    pub fn start(source: WeightSource, unit: UnitSettings, settings: EngineSettings) -> anyhow::Result<LocalLayers> {
        let metrics = Arc::new(EngineMetrics::default());
        Ok(LocalLayers {
            engine: Engine::start(source, unit, settings, Arc::clone(&metrics))?,
            metrics,
        })
    }

    /// Runs one normalised image [1, 3, 32, 32] through the local layers:
    /// SUCCESS (answered here), NOT_SUCCESS (send `next_request` on) or ERROR.
    ///
    /// # Errors
    /// The model thread has ended.
    pub async fn compute(&self, image: Tensor) -> anyhow::Result<ComputationResponse> {
        let (done, outcome) = oneshot::channel();
        let samples = usize::try_from(image.size()[0])?;
        self.engine
            .submit(Job {
                request: Prepared {
                    start: 0,
                    x: image,
                    samples,
                },
                received: Instant::now(),
                deadline: None,
                done,
            })
            .map_err(|_| anyhow::anyhow!("the local model thread has ended"))?;
        match outcome.await {
            Ok(Outcome::Reply(response)) => Ok(response),
            _ => anyhow::bail!("the local model thread has ended"),
        }
    }
}
