use super::*;

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
