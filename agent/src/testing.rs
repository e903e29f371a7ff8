//! Fixtures shared by the crate's unit tests.

use portcullis_policy::{Facts, InterfaceFacts};

/// Host `h1` with one interface, `eth0` (index 2, up, no addresses) and no default route.
pub(crate) fn facts() -> Facts {
    Facts {
        hostname: "h1".into(),
        interfaces: vec![InterfaceFacts {
            name: "eth0".into(),
            index: 2,
            up: true,
            addrs: Vec::new(),
        }],
        default_route_interface: None,
    }
}
