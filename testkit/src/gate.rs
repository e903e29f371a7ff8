//! The gate in front of every root/netns test: run, fail loudly, or skip on request.
//!
//! Tests that need root and network namespaces must *fail* where they cannot run, so a
//! CI without privileges is noticed; `PORTCULLIS_SKIP_NETNS=1` turns that into a skip.

use crate::NetNs;
use std::sync::OnceLock;

/// Environment variable that turns "cannot run netns tests" into a skip.
pub const SKIP_ENV: &str = "PORTCULLIS_SKIP_NETNS";

/// Returns `true` when the test may proceed (root, `ip netns` works). When it cannot and
/// `PORTCULLIS_SKIP_NETNS=1` is set, prints "skipped" and returns `false` (the test returns
/// early); otherwise panics with a message saying why.
///
/// ```ignore
/// if !portcullis_testkit::require_root_netns() { return; }
/// ```
pub fn require_root_netns() -> bool {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let check = CHECK.get_or_init(check_netns);
    match check {
        Ok(()) => true,
        Err(why) => {
            if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
                eprintln!("skipped: {why} ({SKIP_ENV}=1)");
                false
            } else {
                panic!(
                    "this test needs root and network namespaces: {why}. \
                     Run as root with iproute2 installed, or set {SKIP_ENV}=1 to skip."
                );
            }
        }
    }
}

fn check_netns() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".to_owned());
    }
    let ns = NetNs::new().map_err(|e| format!("cannot create a network namespace: {e:#}"))?;
    ns.run_ok("true", &[] as &[&str])
        .map_err(|e| format!("cannot run inside a network namespace: {e:#}"))?;
    Ok(())
}
