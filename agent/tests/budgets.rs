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

/// Write `files` (path relative to `dir`, text) and run `apply --policy dir/p.yml`.
fn apply_policy_with(dir: &std::path::Path, files: &[(&str, &str)]) -> (Option<i32>, String) {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
    let out = Command::new(BIN)
        .args(["apply", "--policy"])
        .arg(dir.join("p.yml"))
        .env("PORTCULLIS_STATE_DIR", dir.join("state"))
        .output()
        .expect("run portcullis-agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const LIST_POLICY: &str =
    "allow:\n  - { port: 22, proto: tcp, from: { file: lists/admins.txt } }\n";

#[test]
fn apply_refuses_a_bad_list_line_at_the_list_file_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = apply_policy_with(
        dir.path(),
        &[
            ("p.yml", LIST_POLICY),
            ("lists/admins.txt", "# ok\n10.77.0.1\n10.77.0.999\n"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("lists/admins.txt:3:1: `10.77.0.999` is not an IP network"),
        "{stderr}"
    );
}

#[test]
fn apply_refuses_an_unreadable_list_file_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = apply_policy_with(dir.path(), &[("p.yml", LIST_POLICY)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("reading list file `lists/admins.txt`"),
        "{stderr}"
    );
    assert!(stderr.contains("p.yml"), "{stderr}");
}
