//! Input budgets through the standalone agent's CLI: an alias bomb given to
//! `portcullis-agent apply --site` is refused with one located error, before any fact
//! gathering or nftables work (no namespace needed: nothing is applied).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-agent");

fn fixture(name: &str) -> String {
    format!(
        "{}/../policy/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn apply_refuses_an_alias_bomb_with_one_error() {
    let state = tempfile::tempdir().expect("tempdir");
    let site = fixture("alias-bomb.yml");
    let out = Command::new(BIN)
        .args(["apply", "--site", &site, "--inventory"])
        .arg(fixture("inventory.yml"))
        .args(["--host", "h1"])
        .env("PORTCULLIS_STATE_DIR", state.path())
        .output()
        .expect("run portcullis-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("{site}:9:12: too many alias expansions (limit 1000000)"),
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn apply_refuses_an_oversized_file_before_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.yml");
    let file = std::fs::File::create(&big).expect("create");
    file.set_len(64 << 20).expect("sparse file");
    let out = Command::new(BIN)
        .args(["apply", "--policy"])
        .arg(&big)
        .env("PORTCULLIS_STATE_DIR", dir.path().join("state"))
        .output()
        .expect("run portcullis-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:1:1: document too large", big.display())),
        "{stderr}"
    );
}
