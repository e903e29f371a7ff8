//! `portcullis-agent apply --site S -i A -i B`: inventories are read as Ansible reads them
//! and merged in order before anything is applied (no namespace needed: these runs stop at
//! the policy, with exit 2).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-agent");

fn apply(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("apply")
        .args(args)
        .env("PORTCULLIS_STATE_DIR", dir.join("state"))
        .current_dir(dir)
        .output()
        .expect("run portcullis-agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn repeated_inventories_merge_in_order() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    std::fs::write(p.join("a.ini"), "[web]\nweb[1:2]\n").expect("write");
    std::fs::write(p.join("b.yml"), "all:\n  children:\n    web:\n      hosts:\n        web3:\n    db:\n      hosts:\n        db1:\n").expect("write");
    // `web[-1]` is the last web host over both files: web3, from the second.
    std::fs::write(
        p.join("site.yml"),
        "- name: last web\n  hosts: web[-1]:db\n  policy:\n    allow: [http/tcp]\n",
    )
    .expect("write");
    let (code, err) = apply(
        p,
        &[
            "--site", "site.yml", "-i", "a.ini", "-i", "b.yml", "--host", "web1",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("host \"web1\" is not targeted by any play (hosts in the fleet: db1, web3)"),
        "{err}"
    );
}

#[test]
fn a_bad_inventory_is_located() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path();
    std::fs::write(p.join("hosts"), "[web]\nw1 ansible_host\n").expect("write");
    std::fs::write(
        p.join("site.yml"),
        "- name: all\n  hosts: all\n  policy: {}\n",
    )
    .expect("write");
    let (code, err) = apply(p, &["--site", "site.yml", "-i", "hosts", "--host", "w1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("hosts:2:1: host `w1`: expected key=value host variable assignment, found `ansible_host`"),
        "{err}"
    );
}
