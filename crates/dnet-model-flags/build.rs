//! Links the tests to libtorch (rpath, CUDA): they parse into the model's types.

fn main() {
    dnet_torch_link::link_executables();
}
