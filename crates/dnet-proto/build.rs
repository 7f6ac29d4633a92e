//! Compiles `proto/*.proto` with a vendored protoc (or `$PROTOC`), so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A protoc given in PROTOC wins (e.g. Alpine's, where the vendored glibc build may not run).
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    // Read at run time, not baked in with env!(): a cached build script may be
    // reused by a clone at another path.
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The tonic client and server only with the `grpc` feature: the model
    // library reads the messages and links no gRPC stack.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        // Byte fields (tensors) as `bytes::Bytes`: decoding slices the received
        // buffer instead of copying it, and a forwarded tensor is shared, not cloned.
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("unit_descriptor.bin"))
        .compile_protos(
            &[proto_dir.join("TransmissionUnit.proto")],
            std::slice::from_ref(&proto_dir),
        )?;
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
