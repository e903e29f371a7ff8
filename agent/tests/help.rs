//! Every `portcullis-agent` command's `--help` lists only the flags it uses: the
//! controller connection (`--controller --ca --cert --key`) and `--metrics-listen` only
//! on `run`; the kernel flags (`--state-dir --nft --nft-timeout`), which every command
//! uses, everywhere. The command list is read from the top-level help, so a new
//! subcommand must be added to the table (the test fails until it is).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-agent");

const COMMANDS: &[&str] = &["apply", "show", "verify", "remove", "restore", "run"];

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--help")
        .output()
        .expect("running portcullis-agent");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn has_flag(text: &str, flag: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        l.strip_prefix(flag)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '=', '<']))
    })
}

#[test]
fn connection_and_metrics_flags_only_on_run() {
    let top = help(&[]);
    let listed: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .collect();
    assert_eq!(listed, COMMANDS, "subcommands in --help vs the table");
    for cmd in COMMANDS {
        let text = help(&[cmd]);
        let runs = *cmd == "run";
        for flag in [
            "--controller",
            "--ca",
            "--cert",
            "--key",
            "--metrics-listen",
        ] {
            assert_eq!(
                has_flag(&text, flag),
                runs,
                "{cmd} --help and {flag}:\n{text}"
            );
        }
        for flag in ["--state-dir", "--nft", "--nft-timeout", "--log"] {
            assert!(has_flag(&text, flag), "{cmd} --help lacks {flag}:\n{text}");
        }
    }
}
