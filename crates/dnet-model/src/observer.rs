//! What the engine reports as it works, to whatever the program measures
//! with (the units export Prometheus metrics): the model library knows no
//! metrics library.

use std::time::Duration;

/// Told of every forward pass, every request's wait, and every request
/// settled because nobody waited for it any more. `shadow`: shadow work,
/// which the metrics label apart.
pub trait EngineObserver: Send + Sync {
    /// A forward pass over `samples` samples took `took` (its replies'
    /// decisions and encoding included).
    fn forward(&self, samples: usize, took: Duration, shadow: bool);

    /// A request waited `waited` for its forward pass after reaching the engine.
    fn waited(&self, waited: Duration, shadow: bool);

    /// A request was settled without being computed: its caller had gone
    /// (cancelled, or answered otherwise and dropped the call).
    fn caller_gone(&self, _shadow: bool) {}
}

/// Reports nothing (tools, benchmarks).
#[derive(Debug, Default)]
pub struct Unobserved;

impl EngineObserver for Unobserved {
    fn forward(&self, _samples: usize, _took: Duration, _shadow: bool) {}

    fn waited(&self, _waited: Duration, _shadow: bool) {}
}
