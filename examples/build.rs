//! Generates the demo's gRPC services (clients and servers): `Inventory` from
//! `proto/inventory.proto`, `Orders` from `proto/orders.proto`. Both are in package
//! `taskscope.demo.v1`, so both land in one generated file (`include_proto!("taskscope.demo.v1")`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The protoc that `protoc-bin-vendored` ships, so that building needs no protoc installed.
    // Handed to prost-build directly: the same as setting `PROTOC`, without `unsafe` `set_var`.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let protos = ["proto/inventory.proto", "proto/orders.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
