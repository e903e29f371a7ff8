use super::*;

fn inv(text: &str) -> Result<Inventory, Diagnostics> {
    Inventory::parse(&Source::new("inv.yml", text))
}

fn set(xs: &[&str]) -> BTreeSet<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

const NESTED: &str = "\
all:
  hosts:
    lonely:
  children:
    mail:
      hosts:
        h1: { ansible_host: 10.77.0.11 }
        h2:
    web:
      hosts:
        h3:
      children:
        frontend:
          hosts:
            h4:
    europe:
      children:
        mail:
        frontend:
  vars:
    ansible_user: root
";

#[test]
fn nested_children_and_ancestors() {
    let i = inv(NESTED).unwrap();
    assert_eq!(i.host_names(), set(&["h1", "h2", "h3", "h4", "lonely"]));
    assert_eq!(i.groups["all"], set(&["h1", "h2", "h3", "h4", "lonely"]));
    assert_eq!(i.groups["mail"], set(&["h1", "h2"]));
    assert_eq!(i.groups["web"], set(&["h3", "h4"]));
    assert_eq!(i.groups["europe"], set(&["h1", "h2", "h4"]));
    assert_eq!(i.groups["ungrouped"], set(&["lonely"]));
    assert_eq!(
        i.hosts["h4"].groups,
        set(&["all", "europe", "frontend", "web"])
    );
    assert_eq!(i.hosts["lonely"].groups, set(&["all", "ungrouped"]));
    assert_eq!(i.hosts["h1"].ansible_host.as_deref(), Some("10.77.0.11"));
    assert_eq!((i.hosts["h1"].line, i.hosts["h1"].column), (7, 9));
}

#[test]
fn host_in_all_and_group_is_not_ungrouped() {
    let i = inv("all:\n  hosts:\n    a:\n  children:\n    g:\n      hosts:\n        a:\n").unwrap();
    assert_eq!(i.hosts["a"].groups, set(&["all", "g"]));
    assert!(i.groups["ungrouped"].is_empty());
}

#[test]
fn top_level_groups_are_children_of_all() {
    let i = inv("db:\n  hosts:\n    d1:\n").unwrap();
    assert_eq!(i.hosts["d1"].groups, set(&["all", "db"]));
}

#[test]
fn empty_inventory_and_empty_group() {
    let i = inv("").unwrap();
    assert!(i.hosts.is_empty());
    assert!(i.groups.contains_key("all") && i.groups.contains_key("ungrouped"));
    let i = inv("all:\n  children:\n    empty:\n").unwrap();
    assert!(i.groups["empty"].is_empty());
}

#[test]
fn host_ranges() {
    let i = inv("all:\n  hosts:\n    web[01:03].lab:\n").unwrap();
    assert_eq!(
        i.host_names(),
        set(&["web01.lab", "web02.lab", "web03.lab"])
    );
    let e = inv("all:\n  hosts:\n    web[3:1]:\n").unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column), (3, 5));
}

#[test]
fn multiplied_ranges_are_refused_before_expansion() {
    let e = inv("all:\n  hosts:\n    h[0:9999][0:9999]:\n  children:\n    g:\n      hosts:\n        x[0:9999][0:999]:\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert_eq!(
        e.to_string(),
        "inv.yml:3:5: host `h[0:9999][0:9999]`: expands to 100000000 host names, too many host listings (limit 1000000 per inventory)"
    );
    // The budget is per inventory: two listings that together exceed it fail at the second.
    let budget = crate::budget::Budget {
        max_range_hosts: 15,
        ..Default::default()
    };
    let src = Source::new(
        "inv.yml",
        "all:\n  hosts:\n    a[1:10]:\n    b[1:5]:\n    c[1:2]:\n    d:\n",
    );
    let e = Inventory::parse_with(&src, &budget).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert_eq!((e.0[0].line, e.0[0].column), (5, 5));
}

#[test]
fn a_100k_host_inventory_fits_the_default_budget() {
    let mut text = String::from(
        "all:\n  children:\n    web:\n      hosts:\n        web[00000:99999].example:\n    db:\n      hosts:\n",
    );
    for n in 0..100_000 {
        text.push_str(&format!(
            "        db{n}.example: {{ansible_host: 10.{}.{}.{}, rack: r{}, zone: z{}}}\n",
            n >> 16,
            (n >> 8) & 255,
            n & 255,
            n % 40,
            n % 3
        ));
    }
    assert!(text.len() < crate::budget::MAX_DOCUMENT_BYTES);
    let i = inv(&text).unwrap();
    assert_eq!(i.hosts.len(), 200_000);
}

#[test]
fn unknown_group_keys_are_errors() {
    let e = inv("all:\n  host:\n    a:\n  children:\n    g:\n      varz: {}\n      foo: 1\n")
        .unwrap_err();
    assert_eq!(e.len(), 3, "{e}");
    assert_eq!((e.0[0].line, e.0[0].column), (2, 3));
    assert!(
        e.0[0]
            .message
            .contains("unknown key `host` (did you mean `hosts`?)"),
        "{e}"
    );
    assert_eq!((e.0[1].line, e.0[1].column), (6, 7));
    assert!(e.0[1].message.contains("did you mean `vars`?"), "{e}");
    assert_eq!((e.0[2].line, e.0[2].column), (7, 7));
    assert!(!e.0[2].message.contains("did you mean"), "{e}");
}

#[test]
fn wrong_types_are_errors() {
    let e = inv("all:\n  hosts: [a, b]\n  children:\n    g: 3\n").unwrap_err();
    assert_eq!(e.len(), 2, "{e}");
    assert_eq!((e.0[0].line, e.0[0].column), (2, 10));
    assert_eq!((e.0[1].line, e.0[1].column), (4, 8));
    let e = inv("- a\n- b\n").unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column), (1, 1));
    let e = inv("all:\n  hosts:\n    a: 5\n").unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column), (3, 8));
}

#[test]
fn cycles_are_errors() {
    let e = inv("all:\n  children:\n    a:\n      children:\n        b:\n          children:\n            a:\n")
        .unwrap_err();
    assert!(e.0.iter().any(|d| d.message.contains("cycle")), "{e}");
}

#[test]
fn duplicate_host_in_one_group_is_a_yaml_error() {
    let e = inv("all:\n  hosts:\n    a:\n    a:\n").unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column), (4, 5));
}

fn budget(hosts: usize, bytes: usize) -> crate::budget::Budget {
    crate::budget::Budget {
        max_range_hosts: hosts,
        max_document_bytes: bytes,
        ..crate::budget::Budget::default()
    }
}

#[test]
fn every_format_keeps_the_budgets() {
    let b = budget(10, 200);
    let ini = Source::new("hosts.ini", "[web]\nweb[01:08]\n[db]\ndb[1:3]\n");
    let e = Inventory::parse_with(&ini, &b).unwrap_err().to_string();
    assert!(
        e.starts_with("hosts.ini:4:1: host `db[1:3]`: expands to 3 host names"),
        "{e}"
    );
    // The listing budget covers every source of one inventory (`-i a -i b`).
    let yaml = Source::new("more.yml", "all:\n  hosts:\n    x[1:3]:\n");
    let ok = Source::new("hosts.ini", "[web]\nweb[01:08]\n");
    let e = Inventory::load(&[ok, yaml], &VarsDirs::default(), &b)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("more.yml:3:5: host `x[1:3]`: expands to 3"),
        "{e}"
    );
    for name in ["big.ini", "big.json", "big"] {
        let big = Source::new(name, format!("[g]\n{}", "h\n".repeat(200)));
        let e = Inventory::parse_with(&big, &b).unwrap_err().to_string();
        assert!(
            e.contains(":1:1: document too large: 404 bytes (limit 200)"),
            "{e}"
        );
    }
    // JSON goes through the spanned YAML reader: depth and node limits hold there too.
    let deep = Source::new(
        "d.json",
        format!("{{\"_meta\": {}{}}}", "[".repeat(80), "]".repeat(80)),
    );
    assert!(
        Inventory::parse(&deep)
            .unwrap_err()
            .to_string()
            .contains("nesting too deep")
    );
}

#[test]
fn ini_inventory() {
    let text = "\
# comment
lone ansible_host=10.77.0.9
[web]
web[01:02] tier=front x=1 flag=True
web03:2222
[prod:children]
web
later
[later]
l1
[prod:vars]
env=prod
";
    let i = Inventory::parse(&Source::new("hosts", text)).unwrap();
    assert_eq!(i.host_order, ["lone", "web01", "web02", "web03", "l1"]);
    assert_eq!(i.groups["prod"], set(&["l1", "web01", "web02", "web03"]));
    assert_eq!(i.groups["ungrouped"], set(&["lone"]));
    assert_eq!(i.hosts["lone"].ansible_host.as_deref(), Some("10.77.0.9"));
    let v = &i.hosts["web01"].vars;
    assert_eq!((v["x"].clone(), v["flag"].clone()), (1.into(), true.into()));
    assert_eq!(v["env"], "prod");
    assert_eq!(i.hosts["web03"].vars["ansible_port"], 2222);
    assert_eq!((i.hosts["web01"].line, i.hosts["web01"].column), (4, 1));
    let e = Inventory::parse(&Source::new(
        "h.ini",
        "[a:children]\nb\n[a:vars]\nx\n[c:vars]\ny=1\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("h.ini:2:1: section `[a:children]` names group `b`"),
        "{e}"
    );
    assert!(
        e.contains("h.ini:4:1: section `[a:vars]`: expected key=value, found `x`"),
        "{e}"
    );
    assert!(
        e.contains("h.ini:5:1: section `[c:vars]` is for group `c`"),
        "{e}"
    );
    let e = Inventory::parse(&Source::new("h.ini", "[a:children]\nb\n[b:children]\na\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("(a cycle)"), "{e}");
}

#[test]
fn group_vars_precedence() {
    let text = "[web]\nw1 x=host\nw2\n[prod:children]\nweb\n[prod:vars]\nx=prod\ny=prod\n";
    let dir = |pairs: &[(&str, &str, &str)]| {
        let mut d = VarsDir::default();
        for (g, k, v) in pairs {
            d.groups
                .entry(g.to_string())
                .or_default()
                .insert(k.to_string(), (*v).into());
        }
        d
    };
    let mut dirs = VarsDirs {
        inventory: vec![dir(&[("all", "z", "inv-all"), ("web", "y", "inv-web")])],
        playbook: vec![dir(&[("all", "z", "play-all"), ("all", "y", "play-all")])],
    };
    dirs.inventory[0]
        .hosts
        .entry("w1".into())
        .or_default()
        .insert("x".into(), "host_vars".into());
    let i = Inventory::load(&[Source::new("h.ini", text)], &dirs, &Budget::default()).unwrap();
    let (w1, w2) = (&i.hosts["w1"].vars, &i.hosts["w2"].vars);
    // Inventory group vars < group_vars/all (inventory, playbook) < group_vars/GROUP.
    assert_eq!(
        (w2["x"].clone(), w2["y"].clone(), w2["z"].clone()),
        ("prod".into(), "inv-web".into(), "play-all".into())
    );
    // Inventory host vars beat group_vars; host_vars beat them.
    assert_eq!(w1["x"], "host_vars");
}
