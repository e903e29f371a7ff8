use super::*;
use crate::ruleset::{Element, Set, SetKey};

#[test]
fn delete_script_is_add_then_delete() {
    assert_eq!(
        delete_script(),
        "add table inet portcullis\ndelete table inet portcullis\n"
    );
}

#[test]
fn empty_ruleset_is_an_empty_table() {
    assert_eq!(
        Ruleset::default().to_nft_script(),
        "add table inet portcullis\ndelete table inet portcullis\ntable inet portcullis {\n}\n"
    );
}

#[test]
fn swap_script_empties_and_deletes_what_is_there_and_keeps_the_staged_sets() {
    let mut rs = Ruleset::default();
    let elements: BTreeSet<Element> = [Element::V4("192.0.2.7/32".parse().unwrap())].into();
    rs.sets
        .insert("big_v4a".into(), Set::new(SetKey::V4Addr, elements.clone()));
    rs.sets
        .insert("small_v4n".into(), Set::new(SetKey::V4Net, elements));
    let staged: BTreeSet<String> = ["big_v4a".to_owned()].into();
    let script = rs.to_nft_swap_script(
        &["input".into(), "guard".into()],
        &["old_v4a".into()],
        &staged,
    );
    assert_eq!(
        script,
        "add table inet portcullis\n\
         flush chain inet portcullis input\n\
         flush chain inet portcullis guard\n\
         delete chain inet portcullis input\n\
         delete chain inet portcullis guard\n\
         delete set inet portcullis old_v4a\n\
         table inet portcullis {\n\
         \tset small_v4n {\n\
         \t\ttype ipv4_addr\n\
         \t\tflags interval\n\
         \t\telements = { 192.0.2.7 }\n\
         \t}\n\
         }\n"
    );
    assert!(!script.contains("big_v4a"));
    assert_eq!(
        rs.staging_set_command("big_v4a").unwrap(),
        "add set inet portcullis big_v4a { type ipv4_addr; size 1024; }\n"
    );
    assert_eq!(
        rs.staging_set_command("small_v4n").unwrap(),
        "add set inet portcullis small_v4n { type ipv4_addr; flags interval; }\n"
    );
    assert_eq!(rs.staging_set_command("absent"), None);
    let many: BTreeSet<Element> = (0..30_000u32)
        .map(|i| Element::V4(ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(i))))
        .collect();
    rs.sets
        .insert("big_v4a".into(), Set::new(SetKey::V4Addr, many));
    assert_eq!(
        rs.staging_set_command("big_v4a").unwrap(),
        "add set inet portcullis big_v4a { type ipv4_addr; size 65536; }\n"
    );
}
