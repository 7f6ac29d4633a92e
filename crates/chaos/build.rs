//! Links the binary and its tests to libtorch (rpath, CUDA).

fn main() {
    dnet_torch_link::link_executables();
}
