//! `portcullis-agent run` checks every controller URL before it does anything else: a bad
//! one is named (its position, the URL, what was expected) and the exit code is 2 (bad
//! input), from `--controller` (repeatable) and from `PORTCULLIS_CONTROLLER` (a
//! comma-separated list) alike. No root, no network: it never gets that far.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-agent");

fn run(flags: &[&str], env: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = Command::new(BIN);
    c.arg("run")
        .args(["--nft", "/bin/true", "--ca", "/nonexistent/ca.crt"])
        .args([
            "--cert",
            "/nonexistent/a.crt",
            "--key",
            "/nonexistent/a.key",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .args(flags)
        .env_remove("PORTCULLIS_CONTROLLER");
    if let Some(v) = env {
        c.env("PORTCULLIS_CONTROLLER", v);
    }
    c.output().expect("running portcullis-agent")
}

fn refused(out: &Output, wants: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for w in wants {
        assert!(stderr.contains(w), "{w:?} not in: {stderr}");
    }
}

#[test]
fn a_bad_url_among_the_flags_is_named() {
    let out = run(
        &[
            "--controller",
            "https://10.77.0.1:7443",
            "--controller",
            "http://10.77.0.2:7443",
        ],
        None,
    );
    refused(
        &out,
        &[
            "controller 2 of 2",
            "\"http://10.77.0.2:7443\"",
            "https://HOST:PORT",
        ],
    );
}

#[test]
fn the_environment_takes_a_comma_separated_list() {
    let out = run(&[], Some("https://10.77.0.1:7443,,https://10.77.0.3:7443"));
    refused(&out, &["controller 2 of 3 is empty"]);
    let out = run(&[], Some("https://10.77.0.1:7443,https://10.77.0.1:7443"));
    refused(&out, &["given twice"]);
}

#[test]
fn at_most_sixteen_controllers() {
    let list: Vec<String> = (1..=17)
        .map(|i| format!("https://10.77.0.{i}:7443"))
        .collect();
    let out = run(&[], Some(&list.join(",")));
    refused(&out, &["17 controllers given, at most 16"]);
}

#[test]
fn a_good_list_gets_past_the_check() {
    // Valid URLs: the next thing to fail is the (missing) certificate, not the list.
    let out = run(
        &[],
        Some("https://10.77.0.1:7443,https://ctl.example.invalid:7443"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("controller 1 of"), "{stderr}");
    assert!(stderr.contains("/nonexistent/a.crt"), "{stderr}");
}
