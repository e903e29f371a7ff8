#[allow(dead_code)]
#[path = "../src/nflog/mod.rs"]
mod nflog;
fn main() {}
