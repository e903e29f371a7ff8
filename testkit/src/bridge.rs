//! [`Bridge`]: a switch namespace holding bridge `br0`, into which other namespaces are
//! plugged with a veth each (`eth0` on their side), addressed and routed through it: the
//! fleet layout of the e2e tests, the lab-like benchmarks and `deploy/lab.sh`.
//!
//! Dropping the bridge deletes its namespace and with it the bridge and the outer veth
//! ends; plugged namespaces belong to their owners.

use crate::netns::{NetNs, ip};
use anyhow::Result;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Bridge {
    sw: NetNs,
}

impl Bridge {
    /// A new switch namespace with `br0` up.
    pub fn new() -> Result<Self> {
        let sw = NetNs::new()?;
        sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        sw.ip(&["link", "set", "br0", "up"])?;
        Ok(Self { sw })
    }

    /// Plugs `ns` in: a veth from `br0` to `eth0` in `ns`, addressed `v4` (CIDR, e.g.
    /// `10.77.0.11/24`) and optionally `v6` (CIDR, without duplicate address detection),
    /// default routes over `eth0`.
    pub fn attach(&self, ns: &NetNs, v4: &str, v6: Option<&str>) -> Result<()> {
        // Interface names are global while they sit in our namespace: make them unique.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let outer = format!("pc{}n{n}", std::process::id() % 100_000);
        ip(&[
            "link",
            "add",
            &outer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        ip(&["link", "set", &outer, "netns", self.sw.name()])?;
        self.sw
            .ip(&["link", "set", &outer, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", v4, "dev", "eth0"])?;
        if let Some(v6) = v6 {
            ns.ip(&["addr", "add", v6, "dev", "eth0", "nodad"])?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "dev", "eth0"])?;
        if v6.is_some() {
            ns.ip(&["-6", "route", "add", "default", "dev", "eth0"])?;
        }
        Ok(())
    }
}

/// Stops a child process: SIGTERM, up to 3 s to exit, then SIGKILL. Always reaps it.
pub fn terminate(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
