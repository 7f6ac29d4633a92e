//! The device's own layers: trunk layers 0..e and exit e, computed in this
//! process by the computation unit's engine (one model thread).

use std::time::Instant;

use dnet_model::engine::{Engine, Job, Outcome};
use dnet_model::request::UnitSettings;
use dnet_model::weights::WeightSource;
use dnet_proto::ComputationResponse;
use tokio::sync::oneshot;

/// Local exit `e` with its own model thread.
#[derive(Debug)]
pub struct LocalLayers {
    engine: Engine,
}

impl LocalLayers {
    /// Loads the model (blocking) for local exit `settings.exit`.
    ///
    /// # Errors
    /// The weights cannot be loaded.
    pub fn start(source: WeightSource, settings: UnitSettings, threads: Option<i32>) -> anyhow::Result<LocalLayers> {
        Ok(LocalLayers {
            engine: Engine::start(source, settings, threads)?,
        })
    }

    /// Runs a serialized `ComputationRequest` through the local layers:
    /// SUCCESS (answered here), NOT_SUCCESS (send `next_request` on) or ERROR.
    ///
    /// # Errors
    /// The model thread has ended.
    pub async fn compute(&self, body: Vec<u8>) -> anyhow::Result<ComputationResponse> {
        let (done, outcome) = oneshot::channel();
        self.engine
            .submit(Job {
                body,
                received: Instant::now(),
                done,
            })
            .map_err(|_| anyhow::anyhow!("the local model thread has ended"))?;
        match outcome.await {
            Ok(Outcome::Reply(response)) => Ok(response),
            _ => anyhow::bail!("the local model thread has ended"),
        }
    }
}
