//! Inventories and host patterns against ansible-core itself: `fixtures/ansible/expected/`
//! holds what ansible-core 2.19 printed for each fixture inventory (`regen.sh` makes it,
//! the command and version are in each file's first line): the hosts of every pattern,
//! `ansible-inventory --list` and `--graph`. The INI and YAML forms of one inventory must
//! select the same hosts for every pattern. (Scripts and directories need file I/O, so
//! they are compared through the `portcullis inventory` binary in controller/tests.)

#![allow(clippy::unwrap_used)]

use portcullis_policy::{Inventory, Source, inventory_json, pattern};

fn dir() -> String {
    format!("{}/tests/fixtures/ansible", env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    let path = format!("{}/{name}", dir());
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn inventory(name: &str) -> Inventory {
    Inventory::parse(&Source::new(name, read(name))).unwrap_or_else(|d| panic!("{d}"))
}

/// The expected file without its `#` header line.
fn expected(name: &str) -> String {
    let text = read(&format!("expected/{name}"));
    text.split_once('\n')
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// `pattern -> Some(sorted hosts)` or `None` where ansible-core failed.
fn expected_hosts(name: &str) -> Vec<(String, Option<Vec<String>>)> {
    expected(&format!("{name}.hosts"))
        .lines()
        .map(|l| {
            let (p, h) = l.split_once('\t').unwrap();
            let hosts = (h != "ERROR").then(|| h.split_whitespace().map(String::from).collect());
            (p.to_string(), hosts)
        })
        .collect()
}

/// Where we refuse on purpose: ansible-core 2.19's CLI swallows the error of an invalid
/// regex or an out-of-range subscript and prints no host for the whole pattern; a firewall
/// refuses the pattern instead. Ansible must still print nothing for these.
const REFUSED: &[&str] = &["web[9]", "~web(("];

fn ours(inv: &Inventory, p: &str) -> Option<Vec<String>> {
    pattern::select_ordered(inv, p).ok().map(|(mut h, _)| {
        h.sort();
        h
    })
}

fn compare(name: &str) {
    let inv = inventory(name);
    let cases = expected_hosts(name);
    assert!(cases.len() >= 17, "{name}: too few patterns");
    for p in REFUSED {
        if let Some((_, want)) = cases.iter().find(|(c, _)| c == p) {
            assert_eq!(want.as_deref(), Some(&[][..]), "{name}: ansible on `{p}`");
            assert_eq!(ours(&inv, p), None, "{name}: `{p}` must be refused");
        }
    }
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(p, _)| !REFUSED.contains(&p.as_str()))
        .filter(|(p, want)| ours(&inv, p) != *want)
        .map(|(p, want)| format!("`{p}`: ansible {want:?}, ours {:?}", ours(&inv, p)))
        .collect();
    assert!(wrong.is_empty(), "{name}:\n{}", wrong.join("\n"));
    let list: serde_json::Value = serde_json::from_str(&expected(&format!("{name}.list"))).unwrap();
    assert_eq!(inventory_json::to_list(&inv), list, "{name}: --list");
    let graph = inventory_json::graph(&inv, "all").unwrap();
    assert_eq!(
        graph.trim_end(),
        expected(&format!("{name}.graph")).trim_end(),
        "{name}: --graph"
    );
}

#[test]
fn ini_matches_ansible() {
    compare("hosts.ini");
}

#[test]
fn yaml_matches_ansible() {
    compare("hosts.yml");
}

#[test]
fn list_json_matches_ansible() {
    compare("list.json");
}

#[test]
fn ini_and_yaml_select_the_same_hosts_for_every_pattern() {
    let (ini, yaml) = (inventory("hosts.ini"), inventory("hosts.yml"));
    let patterns = read("patterns.txt");
    let mut n = 0;
    for p in patterns.lines() {
        assert_eq!(ours(&ini, p), ours(&yaml, p), "pattern `{p}`");
        n += 1;
    }
    assert!(n >= 30);
    assert_eq!(ini.host_names(), yaml.host_names());
    assert_eq!(ini.groups, yaml.groups);
}

/// `portcullis apply` sends the inventory as `--list` JSON (what the controller stores):
/// read back, it has the same hosts, groups, variables and selections.
#[test]
fn list_json_round_trip_keeps_every_selection() {
    for name in ["hosts.ini", "hosts.yml", "list.json"] {
        let inv = inventory(name);
        let text = inventory_json::to_transport(&inv);
        let back = Inventory::parse(&Source::new("sent", text)).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(back.groups, inv.groups, "{name}");
        assert_eq!(back.host_order, inv.host_order, "{name}");
        let names = |i: &Inventory| i.tree.iter().map(|g| g.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&back), names(&inv), "{name}");
        for (a, b) in back.tree.iter().zip(&inv.tree) {
            assert_eq!((&a.hosts, &a.children), (&b.hosts, &b.children), "{name}");
        }
        for (h, e) in &inv.hosts {
            assert_eq!(back.hosts[h].vars, e.vars, "{name}: {h}");
            assert_eq!(back.hosts[h].ansible_host, e.ansible_host, "{name}: {h}");
        }
        for (p, _) in expected_hosts(name) {
            assert_eq!(ours(&back, &p), ours(&inv, &p), "{name}: `{p}`");
        }
    }
}
