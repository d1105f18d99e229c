//! Compiles the wire contract. protoc comes from the `protoc-bin-vendored` crate so that a
//! fresh machine needs nothing installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/walvault.proto");
    tonic_prost_build::configure().compile_protos(&["proto/walvault.proto"], &["proto"])?;
    Ok(())
}
