//! Every `portcullis` command's `--help` lists only the flags it uses: the admin client's
//! connection flags (`--controller --cert --key --ca --config`) appear on exactly the
//! commands that talk to the controller, and `--metrics-listen` only on `serve`. The
//! command tree is read from the help output itself, so a new subcommand must be added
//! to the table below (the test fails until it is).

use std::collections::BTreeSet;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

const CLIENT_FLAGS: [&str; 5] = ["--controller", "--cert", "--key", "--ca", "--config"];

/// Commands that connect to the controller (space-separated paths; `rollout` takes them
/// for every one of its subcommands, which all connect).
const CONNECTING: &[&str] = &[
    "rollout",
    "apply",
    "status",
    "history",
    "drift",
    "logs",
    "rollback",
    "rollout list",
    "rollout show",
    "rollout abort",
];

/// Commands that do not (offline or local).
const OFFLINE: &[&str] = &[
    "",
    "ca",
    "ca init",
    "ca issue",
    "ca issue controller",
    "ca issue agent",
    "ca issue admin",
    "ca revoke",
    "ca list",
    "serve",
    "inventory",
];

fn help(path: &str) -> String {
    let mut args: Vec<&str> = path.split_whitespace().collect();
    args.push("--help");
    let out = Command::new(BIN)
        .args(&args)
        .output()
        .expect("running portcullis");
    assert!(out.status.success(), "portcullis {path} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Subcommand names listed under `Commands:` (without `help`).
fn subcommands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            // A name at two spaces; continuation lines are indented further.
            if let Some(name) = line
                .strip_prefix("  ")
                .and_then(|l| l.split_whitespace().next())
                && !line.starts_with("   ")
                && name != "help"
            {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Long flags named at the start of an option line.
fn flags(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            let l = l.split_once(", ").map_or(l, |(short, rest)| {
                if short.len() == 2 && short.starts_with('-') {
                    rest
                } else {
                    l
                }
            });
            l.strip_prefix("--")
                .map(|f| format!("--{}", f.split([' ', '=', '<']).next().unwrap_or_default()))
        })
        .collect()
}

#[test]
fn client_flags_appear_exactly_on_the_commands_that_connect() {
    let mut seen = BTreeSet::new();
    let mut todo = vec![String::new()];
    while let Some(path) = todo.pop() {
        let text = help(&path);
        for sub in subcommands(&text) {
            todo.push(format!("{path} {sub}").trim().to_string());
        }
        let f = flags(&text);
        let connects = CONNECTING.contains(&path.as_str());
        assert!(
            connects || OFFLINE.contains(&path.as_str()),
            "`portcullis {path}` is new: add it to CONNECTING or OFFLINE in this test"
        );
        for flag in CLIENT_FLAGS {
            assert_eq!(
                f.contains(flag),
                connects,
                "`portcullis {path} --help` {} {flag}:\n{text}",
                if connects { "lacks" } else { "lists" }
            );
        }
        assert_eq!(
            f.contains("--metrics-listen"),
            path == "serve",
            "--metrics-listen on `portcullis {path}`"
        );
        // Every command still has the logging flags it uses and help.
        assert!(f.contains("--log") && f.contains("--help"), "{path}: {f:?}");
        seen.insert(path);
    }
    let expected: BTreeSet<String> = CONNECTING
        .iter()
        .chain(OFFLINE)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(seen, expected, "commands found in --help vs the table");
}

#[test]
fn rollout_takes_connection_flags_before_or_after_its_subcommand() {
    for args in [
        &["rollout", "--controller", "http://x", "list"][..],
        &["rollout", "list", "--controller", "http://x"][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env("HOME", "/nonexistent")
            .output()
            .expect("running portcullis");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Parsed, then refused by the resolver (not by clap): exit 2 with our message.
        assert!(
            stderr.contains("must be an https:// URL"),
            "{args:?}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    }
}
