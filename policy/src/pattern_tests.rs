use super::*;
use crate::diag::Source;

fn inv() -> Inventory {
    let text = "\
all:
  hosts:
    lonely:
  children:
    mail:
      hosts: { h1: , h2: }
    web:
      hosts: { h3: , web1: , web2: }
    europe:
      children: { mail: , web: }
      hosts: { h4: }
    staging:
      hosts: { h2: , web2: }
";
    Inventory::parse(&Source::new("inv.yml", text)).unwrap()
}

fn sel(p: &str) -> Vec<String> {
    select(&inv(), p).unwrap().into_iter().collect()
}

#[test]
fn names_and_all() {
    assert_eq!(sel("mail"), ["h1", "h2"]);
    assert_eq!(sel("h3"), ["h3"]);
    assert_eq!(sel("all").len(), 7);
    assert_eq!(sel("*").len(), 7);
    assert_eq!(sel("ungrouped"), ["lonely"]);
}

#[test]
fn union_intersection_exclusion() {
    assert_eq!(sel("mail:h3"), ["h1", "h2", "h3"]);
    assert_eq!(sel("mail, h3"), ["h1", "h2", "h3"]);
    assert_eq!(sel("europe:&staging"), ["h2", "web2"]);
    assert_eq!(sel("europe:!staging"), ["h1", "h3", "h4", "web1"]);
    assert_eq!(sel("europe,!staging"), ["h1", "h3", "h4", "web1"]);
    // Order of terms does not matter: unions, then intersections, then exclusions.
    assert_eq!(sel("!staging:mail:web"), ["h1", "h3", "web1"]);
    assert_eq!(sel("&staging:mail:web"), ["h2", "web2"]);
    // Only exclusions start from all.
    assert_eq!(sel("!europe"), ["lonely"]);
}

#[test]
fn globs() {
    assert_eq!(sel("web*"), ["h3", "web1", "web2"]); // group `web` and hosts web1, web2
    assert_eq!(sel("web?"), ["web1", "web2"]);
    assert_eq!(sel("h*:!h2"), ["h1", "h3", "h4"]);
    assert!(glob("*", "") && glob("a*b*c", "aXbYc") && !glob("a*b", "ac"));
}

#[test]
fn unknown_names_only_fail_when_nothing_matches() {
    assert_eq!(sel("mail:nosuch"), ["h1", "h2"]);
    let e = select(&inv(), "nosuch").unwrap_err();
    assert_eq!(
        e.to_string(),
        "pattern `nosuch` matches no host (no group or host named `nosuch`)"
    );
    let e = select(&inv(), "mail:&web").unwrap_err();
    assert_eq!(e.to_string(), "pattern `mail:&web` matches no host");
}

#[test]
fn malformed() {
    assert_eq!(select(&inv(), " "), Err(PatternError::Empty));
    assert_eq!(select(&inv(), ", ,"), Err(PatternError::Empty));
    assert!(matches!(
        select(&inv(), "mail:!"),
        Err(PatternError::EmptyTerm { .. })
    ));
    assert!(matches!(
        select(&inv(), "~web(("),
        Err(PatternError::Invalid { kind: "regex", .. })
    ));
    assert!(matches!(
        select(&inv(), "web[7]"),
        Err(PatternError::Subscript { count: 3, .. })
    ));
}

#[test]
fn ansible_constructs() {
    // An empty term is dropped, as Ansible does.
    assert_eq!(sel("mail:"), ["h1", "h2"]);
    // Regexes match from the start of the name (Python's re.match).
    assert_eq!(sel("~web\\d"), ["web1", "web2"]);
    assert_eq!(sel("~h[12]"), ["h1", "h2"]);
    // Subscripts in Ansible's host order (the group's own hosts first).
    assert_eq!(sel("web[0]"), ["h3"]);
    assert_eq!(sel("web[-1]"), ["web2"]);
    assert_eq!(sel("web[1:2]"), ["web1", "web2"]);
    assert_eq!(sel("web[1:]"), ["web1", "web2"]);
    assert_eq!(sel("europe[0]"), ["h4"]);
    // fnmatch classes; `[:3]` is a class (Ansible needs the start of a range).
    assert_eq!(sel("web[1-2]"), ["web1", "web2"]);
    assert_eq!(sel("h[!1]"), ["h2", "h3", "h4"]);
    assert!(select(&inv(), "h[:3]").is_ok_and(|s| s.into_iter().eq(["h3"])));
    let (order, unknown) = select_ordered(&inv(), "web:nosuch").unwrap();
    assert_eq!(order, ["h3", "web1", "web2"]);
    assert_eq!(unknown, ["nosuch"]);
}

#[test]
fn oversized_patterns_are_refused_before_matching() {
    let many = vec!["web"; 257].join(":");
    assert_eq!(
        select(&inv(), &many).unwrap_err().to_string(),
        "the host pattern is too long: 1027 bytes and 257 terms (limits 4096 bytes, 256 terms)"
    );
    let long = format!("{}x", "*".repeat(4096));
    assert!(matches!(
        select(&inv(), &long),
        Err(PatternError::TooLong {
            bytes: 4097,
            terms: 1
        })
    ));
    assert!(select(&inv(), &vec!["web"; 256].join(":")).is_ok());
}
