//! What the engine reports as it works, to whatever the program measures
//! with (the units export Prometheus metrics): the model library knows no
//! metrics library.

use std::time::Duration;

/// Told of every forward pass and every request's wait.
pub trait EngineObserver: Send + Sync {
    /// A forward pass over `samples` samples took `took` (its replies'
    /// decisions and encoding included).
    fn forward(&self, samples: usize, took: Duration);

    /// A request waited `waited` for its forward pass after reaching the engine.
    fn waited(&self, waited: Duration);
}

/// Reports nothing (tools, benchmarks).
#[derive(Debug, Default)]
pub struct Unobserved;

impl EngineObserver for Unobserved {
    fn forward(&self, _samples: usize, _took: Duration) {}

    fn waited(&self, _waited: Duration) {}
}
