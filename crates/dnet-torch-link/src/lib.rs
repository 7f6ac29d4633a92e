//! The one place where DNet's executables are linked to libtorch.
//!
//! Every package whose binaries, tests or benches run the model calls
//! [`link_executables`] from its `build.rs` (a build script's link arguments
//! apply to its own package only, so each such package needs one).
//!
//! - An rpath to libtorch's `lib` folder, so the programs run without
//!   `LD_LIBRARY_PATH`.
//! - `libtorch_cuda` linked explicitly when it exists: no symbol of it is
//!   referenced directly, so `--as-needed` would drop it and CUDA would never
//!   be available.

use std::path::Path;

/// Where the lib folder of libtorch is announced: torch-sys (`links = "tch"`)
/// to its direct dependents, and dnet-model (`links = "dnet_model"`), which
/// passes it on to its own dependents.
const LIB_DIR_VARIABLES: [&str; 2] = ["DEP_TCH_LIBTORCH_LIB", "DEP_DNET_MODEL_LIBTORCH_LIB"];

/// Prints the link arguments for this package's executables. Without a
/// known libtorch folder (e.g. `doc-only` builds) it prints nothing.
pub fn link_executables() {
    let Some(lib_dir) = libtorch_lib_dir() else {
        println!("cargo:warning=libtorch's lib folder is unknown: executables will need LD_LIBRARY_PATH");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// The lib folder of the libtorch that tch links, as announced by the build
/// scripts of torch-sys or dnet-model.
#[must_use]
pub fn libtorch_lib_dir() -> Option<String> {
    LIB_DIR_VARIABLES.iter().find_map(|name| std::env::var(name).ok())
}
