//! `portcullis inventory` (the binary, offline) against what ansible-core 2.19 printed for
//! the same inventories (policy/tests/fixtures/ansible/expected, made by regen.sh): every
//! pattern's hosts through `--list-hosts`, `--list` and `--graph`, for INI, YAML, `--list`
//! JSON, an executable dynamic inventory and a directory with group_vars/host_vars. Also:
//! repeated `-i`, no match (exit 0 + warning), bad input (exit 2, file:line:column), a
//! failing script (its stderr shown), `--host` with a site file.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn fixtures() -> String {
    format!(
        "{}/../policy/tests/fixtures/ansible",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("inventory")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The expected file without its `#` header line.
fn expected(name: &str) -> String {
    let path = format!("{}/expected/{name}", fixtures());
    let t = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    t.split_once('\n')
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn compare(inv: &str) {
    let path = format!("{}/{inv}", fixtures());
    let mut wrong = Vec::new();
    let cases = expected(&format!("{inv}.hosts"));
    for line in cases.lines() {
        let (pattern, want) = line.split_once('\t').unwrap();
        // ansible-core prints no host where its CLI swallows an invalid regex or an
        // out-of-range subscript; we refuse those patterns (exit 2).
        let want = if ["web[9]", "~web(("].contains(&pattern) {
            assert_eq!(want, "", "ansible on `{pattern}`");
            "ERROR"
        } else {
            want
        };
        let out = run(&["-i", &path, "--list-hosts", pattern]);
        let got = if out.status.code() == Some(0) {
            text(&out.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            "ERROR".to_string()
        };
        if got != want {
            wrong.push(format!(
                "`{pattern}`: ansible `{want}`, ours `{got}` {}",
                text(&out.stderr)
            ));
        }
    }
    assert!(cases.lines().count() >= 17);
    assert!(wrong.is_empty(), "{inv}:\n{}", wrong.join("\n"));
    let list = run(&["-i", &path, "--list"]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list.stderr));
    let ours: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&expected(&format!("{inv}.list"))).unwrap();
    assert_eq!(ours, theirs, "{inv}: --list");
    let graph = run(&["-i", &path, "--graph"]);
    assert_eq!(
        text(&graph.stdout).trim_end(),
        expected(&format!("{inv}.graph")).trim_end(),
        "{inv}: --graph"
    );
}

#[test]
fn ini_yaml_and_list_json_match_ansible() {
    for inv in ["hosts.ini", "hosts.yml", "list.json"] {
        compare(inv);
    }
}

#[test]
fn dynamic_inventory_script_matches_ansible() {
    compare("script.sh");
}

#[test]
fn dynamic_inventory_without_meta_is_asked_per_host_like_ansible() {
    compare("script-host.sh");
}

#[test]
fn group_vars_beside_the_site_file_apply_like_ansibles_playbook_dir() {
    let f = fixtures();
    let out = run(&[
        "-i",
        &format!("{f}/dir"),
        &format!("{f}/site/site.yml"),
        "--list",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&expected("dir+site.list")).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn directory_with_group_vars_and_host_vars_matches_ansible() {
    // Also skips 03-old.bak and notes.txt (Ansible's ignored extensions) and group_vars/.
    compare("dir");
}

#[test]
fn repeated_inventories_merge_in_order() {
    let f = fixtures();
    let out = run(&[
        "-i",
        &format!("{f}/script.sh"),
        "-i",
        &format!("{f}/hosts.ini"),
        "--list-hosts",
        "masters:web[0]:batch[-1]",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "job20\nk1\nweb01\n");
    let out = run(&["-i", "h2,h1,", "--list-hosts", "all", "--json"]);
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<String>(),
        r#"["h1","h2"]"#
    );
}

#[test]
fn no_match_prints_nothing_and_warns() {
    let out = run(&[
        "-i",
        &format!("{}/hosts.ini", fixtures()),
        "--list-hosts",
        "nosuch",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("Could not match supplied host pattern, ignoring: nosuch"),
        "{err}"
    );
}

#[test]
fn bad_input_exits_2_with_a_location() {
    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("hosts");
    std::fs::write(&ini, "[web]\nw1\n[prod:children]\nweb\nnope\n").unwrap();
    let out = run(&["-i", ini.to_str().unwrap(), "--list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("hosts:5:1: section `[prod:children]` names group `nope`"),
        "{err}"
    );
    // An INI file named .yml loads, as in Ansible (its yaml plugin fails, ini reads it).
    let yml = dir.path().join("hosts.yml");
    std::fs::write(&yml, "[web]\nw1\n").unwrap();
    let out = run(&["-i", yml.to_str().unwrap(), "--list-hosts", "web"]);
    assert_eq!(text(&out.stdout), "w1\n");
    // YAML in a .ini file: located INI errors and a hint.
    let bad = dir.path().join("hosts.ini");
    std::fs::write(&bad, "all:\n  hosts:\n    a:\n").unwrap();
    let out = run(&["-i", bad.to_str().unwrap(), "--list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("hosts.ini:1:1: invalid host `all:`"), "{err}");
    assert!(err.contains("it looks like YAML"), "{err}");
    let good = format!("{}/hosts.ini", fixtures());
    let out = run(&["-i", &good, "--list-hosts", "~web(("]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not a valid regex"));
}

#[test]
fn a_failing_script_shows_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("inv.sh");
    portcullis_testkit::write_executable(&s, "#!/bin/sh\necho 'cloud API: 403' >&2\nexit 3\n")
        .unwrap();
    let out = run(&["-i", s.to_str().unwrap(), "--list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("dynamic inventory failed") && err.contains("cloud API: 403"),
        "{err}"
    );
}

#[test]
fn host_shows_vars_plays_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.yml");
    std::fs::write(
        &site,
        "- name: base\n  hosts: all\n  policy:\n    allow: [ssh/tcp]\n- name: web\n  hosts: web:!w2\n  policy:\n    allow: [http/tcp]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("host_vars")).unwrap();
    std::fs::write(dir.path().join("host_vars/w1.yml"), "from_site: yes\n").unwrap();
    let inv = format!("{}/dir", fixtures());
    let out = run(&["-i", &inv, site.to_str().unwrap(), "--host", "w1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vars"]["http_port"], 9090);
    assert_eq!(v["vars"]["from_site"], true);
    let plays: Vec<&str> = v["plays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(plays, ["base", "web"]);
    let policy = v["policy"].to_string();
    assert!(policy.contains("80") && policy.contains("22"), "{policy}");
    let out = run(&["-i", &inv, "--host", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
}
