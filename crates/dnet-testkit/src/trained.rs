//! The heads-only demo model (`scripts/trained_model.sh --heads-only`): a
//! random trunk whose exit heads are trained on scikit-learn's digits, so
//! that its categories and confidences vary with the input and carry
//! information. Random weights answer almost every input with one class at
//! a confidence near 0.1: a test whose point is that values survive a
//! transformation uses this model instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The heads-only model's weights and its test set (a CIFAR-10 binary file
/// of the digits, drawn as 32x32 colour images).
#[derive(Debug, Clone)]
pub struct HeadsOnly {
    pub weights: PathBuf,
    pub test_set: PathBuf,
}

impl HeadsOnly {
    /// The weights' path as a command-line argument.
    ///
    /// # Panics
    /// When the cache folder's path is not UTF-8.
    #[must_use]
    pub fn weights_arg(&self) -> &str {
        self.weights.to_str().expect("a UTF-8 cache path")
    }
}

/// The heads-only model, trained first if missing (`make test` trains it
/// before the suites run, so they find it there).
///
/// # Panics
/// When the script cannot run or fails.
#[must_use]
pub fn heads_only() -> HeadsOnly {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(root.join("scripts/trained_model.sh"))
        .arg("--heads-only")
        .status()
        .expect("run scripts/trained_model.sh");
    assert!(status.success(), "scripts/trained_model.sh --heads-only failed");
    let cache = std::env::var_os("DNET_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dnet"),
        PathBuf::from,
    );
    let demo = cache.join("demo");
    HeadsOnly {
        weights: demo.join("digits-heads.safetensors"),
        test_set: demo.join("digits-test.bin"),
    }
}
