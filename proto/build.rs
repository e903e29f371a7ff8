//! Generates the gRPC code from `proto/portcullis.proto` with protox (pure Rust; no system
//! `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/portcullis.proto");
    let fds = protox::compile(["proto/portcullis.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Address lists are megabytes, shared by every host of a revision: `Bytes`, so
        // each host's Desired clones a reference, not the list.
        .bytes(".portcullis.v1.AddressList")
        .bytes(".portcullis.v1.ListPart")
        .compile_fds(fds)?;
    Ok(())
}
