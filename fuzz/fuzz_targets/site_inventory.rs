//! Site file + inventory parsing (the YAML loader, inventory groups and host ranges, site
//! plays, host patterns, `management:`/`--keep` requirements), then compiling every
//! loaded host: nothing may panic, and every refusal carries at least one diagnostic.
//!
//! Input: `<inventory>\0<site>` as UTF-8; without a NUL the whole input is both files.
//! The site part's first line is also tried as a host pattern and as a `--keep` value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::lockout::{self, parse_keep};
use portcullis_policy::{Facts, InterfaceFacts, Inventory, Source, compile, load_fleet};
use portcullis_policy::{load_host_policy, select};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (inv_text, site_text) = text.split_once('\0').unwrap_or((text, text));
    let inv_src = Source::new("inventory.yml", inv_text);
    let site_src = Source::new("site.yml", site_text);
    let first_line = site_text.lines().next().unwrap_or("");

    match Inventory::parse(&inv_src) {
        Ok(inv) => {
            let _ = select(&inv, first_line).map_err(|e| e.to_string());
            let _ = inv.host_names();
        }
        Err(d) => assert!(!d.is_empty(), "inventory refused without a diagnostic"),
    }
    let _ = parse_keep(first_line).map_err(|e| e.to_string());
    match load_host_policy(&site_src) {
        Ok(_) => {}
        Err(d) => assert!(!d.is_empty(), "policy refused without a diagnostic"),
    }
    let fleet = match load_fleet(&site_src, &inv_src) {
        Ok(f) => f,
        Err(d) => {
            assert!(!d.is_empty(), "fleet refused without a diagnostic");
            let _ = d.to_string();
            return;
        }
    };
    let facts = Facts {
        hostname: "h1".into(),
        interfaces: vec![InterfaceFacts {
            name: "eth0".into(),
            index: 2,
            up: true,
            addrs: vec![],
        }],
        default_route_interface: Some("eth0".into()),
    };
    for (host, policy) in &fleet.hosts {
        let Ok(rs) = compile(policy, &facts, 1) else {
            continue;
        };
        let _ = rs.to_nft_script();
        let _ = rs.hash();
        if let Some(reqs) = fleet.management.get(host) {
            let _ = lockout::check(&rs, reqs, &["eth0".to_owned()]);
        }
    }
});
