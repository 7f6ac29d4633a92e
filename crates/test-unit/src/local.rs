//! The device's own layers: one local exit, or a cascade of them, computed
//! in this process by the engine that computation units use (one model
//! thread per exit; concurrent callers' images batch together as they would
//! at a unit).

use std::sync::Arc;
use std::time::Instant;

use dnet_model::codec::decode_x;
use dnet_model::engine::{Engine, EngineSettings, Job, Outcome};
use dnet_model::model::SIDE_EXITS;
use dnet_model::observer::Unobserved;
use dnet_model::request::{Prepared, UnitSettings};
use dnet_model::weights::WeightSource;
use dnet_proto::{ComputationResponse, Data, StatusCode};
use tch::Tensor;
use tokio::sync::oneshot;

/// The local exits, in order, each with its model thread.
#[derive(Debug)]
pub struct LocalLayers {
    stages: Vec<Engine>,
}

impl LocalLayers {
    /// Loads one model per exit (blocking); `exits` rise, the first starts
    /// from the image and each next one from its predecessor's exit.
    ///
    /// # Errors
    /// The weights cannot be loaded.
    pub fn start(
        source: &WeightSource,
        exits: &[usize],
        thresholds: [f64; SIDE_EXITS],
        device: tch::Device,
        settings: &EngineSettings,
    ) -> anyhow::Result<LocalLayers> {
        let stages = exits
            .iter()
            .map(|&exit| {
                let unit = UnitSettings {
                    max_request_samples: 1,
                    device,
                    ..UnitSettings::new(exit, thresholds, &format!("device-{exit}"))
                };
                Engine::start(source.clone(), unit, settings.clone(), Arc::new(Unobserved))
            })
            .collect::<Result<_, _>>()?;
        Ok(LocalLayers { stages })
    }

    /// Runs one normalised image [1, 3, 32, 32] through the local exits:
    /// SUCCESS (answered here), NOT_SUCCESS from the last one (send
    /// `next_request` on) or ERROR.
    ///
    /// # Errors
    /// A model thread has ended, or a stage handed on what the next cannot read.
    pub async fn compute(&self, image: Tensor) -> anyhow::Result<ComputationResponse> {
        let mut input = (0, image);
        let mut answer = None;
        for stage in &self.stages {
            let response = run(stage, input.0, input.1).await?;
            match (StatusCode::try_from(response.status), &response.data) {
                (Ok(StatusCode::NotSuccess), Some(Data::NextRequest(next))) => {
                    let start = usize::try_from(next.start_layer)?;
                    input = (start, decode_x(&next.x, start, 1)?);
                    answer = Some(response);
                }
                _ => return Ok(response),
            }
        }
        answer.ok_or_else(|| anyhow::anyhow!("no local exit"))
    }
}

async fn run(engine: &Engine, start: usize, x: Tensor) -> anyhow::Result<ComputationResponse> {
    let (done, outcome) = oneshot::channel();
    engine
        .submit(Job {
            request: Prepared::new(start, x),
            received: Instant::now(),
            deadline: None,
            done,
        })
        .map_err(|_| anyhow::anyhow!("the local model thread has ended"))?;
    match outcome.await {
        Ok(Outcome::Reply(response)) => Ok(*response),
        _ => anyhow::bail!("the local model thread has ended"),
    }
}
