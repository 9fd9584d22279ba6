//! Generates the `Inventory` gRPC service (client and server) for `grpc.rs`, from the examples'
//! `proto/inventory.proto`, the contract the inventory service serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The protoc that `protoc-bin-vendored` ships, so that building needs no protoc installed.
    // Handed to prost-build directly: the same as setting `PROTOC`, without `unsafe` `set_var`.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=../examples/proto/inventory.proto");
    tonic_prost_build::configure().compile_with_config(
        config,
        &["../examples/proto/inventory.proto"],
        &["../examples/proto"],
    )?;
    Ok(())
}
