//! Shared by the computation-unit tests: the torch venv's python and the
//! PyTorch reference (tests/reference/reference.py).
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;

/// Threads for libtorch in tests, the same on both sides of a comparison.
pub const THREADS: i32 = 2;

/// The venv's python (`DNET_VENV`, default ~/.cache/dnet/venv), which has torch 2.11.0.
pub fn python() -> PathBuf {
    let venv = std::env::var("DNET_VENV").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/dnet/venv")
    });
    venv.join("bin/python")
}

/// Runs the PyTorch reference into `dir`: weights.safetensors, weights.pkl, cases.safetensors.
pub fn write_reference(dir: &Path, seed: u64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/reference.py");
    let status = Command::new(python())
        .arg(&script)
        .arg(dir)
        .arg(seed.to_string())
        .arg(THREADS.to_string())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} (make setup installs the venv): {e}", python().display()));
    assert!(status.success(), "reference.py failed");
}

/// The release or debug binary of this package.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_computation-unit")
}
