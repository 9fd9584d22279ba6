//! Generates the `Inventory` gRPC service (client and server) from `proto/inventory.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The protoc that `protoc-bin-vendored` ships, so that building needs no protoc installed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script runs single-threaded; nothing else reads the environment now.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/inventory.proto");
    tonic_prost_build::configure().compile_protos(&["proto/inventory.proto"], &["proto"])?;
    Ok(())
}
