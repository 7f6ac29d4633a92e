//! Links this package's tests to libtorch and tells dependents where it is.

fn main() {
    dnet_torch_link::link_executables();
    if let Some(lib_dir) = dnet_torch_link::libtorch_lib_dir() {
        // Seen by dependents' build scripts as DEP_DNET_MODEL_LIBTORCH_LIB.
        println!("cargo:libtorch_lib={lib_dir}");
    }
}
