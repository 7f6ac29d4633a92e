//! Links the binaries against the venv's libtorch so they run without
//! LD_LIBRARY_PATH, and keeps libtorch_cuda linked so CUDA can be used.

fn main() {
    // Set by torch-sys (`links = "tch"`): the lib folder of the libtorch it built against.
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // No symbol of libtorch_cuda is referenced directly, so `--as-needed` would drop it
    // and CUDA would never be available; link it explicitly when it exists.
    if std::path::Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
