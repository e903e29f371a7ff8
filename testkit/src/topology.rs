//! [`Topology`]: namespaces joined by veth pairs, addressed from 10.77.0.0/16 and fd77::/16.
//!
//! Link `i` (0-based, in the order declared) gets 10.77.<i+1>.0/24 and fd77:0:0:<i+1>::/64;
//! its first end is `.1` / `::1`, its second `.2` / `::2`. Veth ends are created directly
//! inside their namespaces (never in the caller's), IPv6 DAD is disabled in every node and
//! addresses are added with `nodad`, so everything is usable as soon as `build` returns.
//! Dropping the topology deletes its namespaces, which deletes the veths with them.

use crate::NetNs;
use crate::netns::ip;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One end of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub node: String,
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Endpoint {
    /// The end's IPv4 or IPv6 address.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}

/// A veth pair between two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub a: Endpoint,
    pub b: Endpoint,
}

/// Declares nodes and links; [`TopologyBuilder::build`] creates them.
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    nodes: Vec<String>,
    links: Vec<((String, String), (String, String))>,
}

impl TopologyBuilder {
    /// Adds a node (a namespace) under a logical name such as `host` or `peer`.
    pub fn node(mut self, name: &str) -> Self {
        if !self.nodes.iter().any(|n| n == name) {
            self.nodes.push(name.to_owned());
        }
        self
    }

    /// Joins `a_node`'s interface `a_if` to `b_node`'s interface `b_if` (names <= 15 chars).
    /// Nodes are added if not declared yet.
    pub fn link(mut self, a_node: &str, a_if: &str, b_node: &str, b_if: &str) -> Self {
        self = self.node(a_node).node(b_node);
        self.links.push((
            (a_node.to_owned(), a_if.to_owned()),
            (b_node.to_owned(), b_if.to_owned()),
        ));
        self
    }

    /// Creates the namespaces, veths and addresses. On error, whatever was created is
    /// deleted again (the namespaces are dropped).
    pub fn build(self) -> Result<Topology> {
        if self.links.len() > 250 {
            bail!("at most 250 links");
        }
        let mut nodes = BTreeMap::new();
        for name in &self.nodes {
            let ns = NetNs::new()?;
            for sysctl in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{sysctl}/accept_dad");
                ns.enter(|| std::fs::write(&path, "0"))?
                    .with_context(|| format!("disable DAD in {name}"))?;
            }
            nodes.insert(name.clone(), ns);
        }
        let mut topo = Topology {
            nodes,
            links: Vec::new(),
        };
        for (i, ((a_node, a_if), (b_node, b_if))) in self.links.into_iter().enumerate() {
            let subnet = u8::try_from(i + 1).context("link index")?;
            let a = Endpoint {
                node: a_node,
                ifname: a_if,
                v4: Ipv4Addr::new(10, 77, subnet, 1),
                v6: Ipv6Addr::new(0xfd77, 0, 0, u16::from(subnet), 0, 0, 0, 1),
            };
            let b = Endpoint {
                node: b_node,
                ifname: b_if,
                v4: Ipv4Addr::new(10, 77, subnet, 2),
                v6: Ipv6Addr::new(0xfd77, 0, 0, u16::from(subnet), 0, 0, 0, 2),
            };
            topo.create_link(&a, &b)?;
            topo.links.push(Link { a, b });
        }
        Ok(topo)
    }
}

/// Namespaces joined by veth pairs; deleted (with the veths) on drop.
#[derive(Debug)]
pub struct Topology {
    nodes: BTreeMap<String, NetNs>,
    links: Vec<Link>,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The common case: `host` and `peer` joined by one veth pair named `eth0` on both sides.
    /// `host` has 10.77.1.1 / fd77:0:0:1::1, `peer` has 10.77.1.2 / fd77:0:0:1::2.
    pub fn pair() -> Result<Self> {
        Self::builder().link("host", "eth0", "peer", "eth0").build()
    }

    /// The namespace of a node. Panics on an unknown node name (a bug in the test).
    pub fn ns(&self, node: &str) -> &NetNs {
        match self.nodes.get(node) {
            Some(ns) => ns,
            None => panic!("no node {node:?} in this topology"),
        }
    }

    /// All links in declaration order.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The endpoint of `node` on link `index`. Panics if the node is not on that link.
    pub fn endpoint(&self, index: usize, node: &str) -> &Endpoint {
        let link = &self.links[index];
        if link.a.node == node {
            &link.a
        } else if link.b.node == node {
            &link.b
        } else {
            panic!("node {node:?} is not on link {index}")
        }
    }

    /// Adds another address (`10.77.x.y/24` or `fd77:...::z/64`) to a node's interface.
    pub fn add_addr(&self, node: &str, ifname: &str, cidr: &str) -> Result<()> {
        let ns = self.ns(node);
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ns.ip(&args).map(drop)
    }

    fn create_link(&self, a: &Endpoint, b: &Endpoint) -> Result<()> {
        let a_ns = self
            .nodes
            .get(&a.node)
            .ok_or_else(|| anyhow!("node {}", a.node))?;
        let b_ns = self
            .nodes
            .get(&b.node)
            .ok_or_else(|| anyhow!("node {}", b.node))?;
        ip(&[
            "link",
            "add",
            &a.ifname,
            "netns",
            a_ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &b.ifname,
            "netns",
            b_ns.name(),
        ])?;
        for (ns, end) in [(a_ns, a), (b_ns, b)] {
            ns.ip(&["addr", "add", &format!("{}/24", end.v4), "dev", &end.ifname])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/64", end.v6),
                "dev",
                &end.ifname,
                "nodad",
            ])?;
            ns.ip(&["link", "set", &end.ifname, "up"])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{TcpOutcome, TcpServer};
    use std::net::SocketAddr;
    use std::time::Duration;

    #[test]
    fn pair_connects_over_v4_and_v6() {
        if !crate::require_root_netns() {
            return;
        }
        let topo = Topology::pair().expect("topology");
        let host = topo.endpoint(0, "host").clone();
        for v6 in [false, true] {
            let addr = SocketAddr::new(host.addr(v6), 8080);
            let _server = TcpServer::start(topo.ns("host"), addr).expect("listen");
            let got = crate::probe::tcp_connect(topo.ns("peer"), addr, Duration::from_secs(2))
                .expect("probe");
            assert_eq!(got, TcpOutcome::Accepted, "v6={v6}");
            let closed = SocketAddr::new(host.addr(v6), 8081);
            let got = crate::probe::tcp_connect(topo.ns("peer"), closed, Duration::from_secs(2))
                .expect("probe");
            assert_eq!(got, TcpOutcome::Refused, "v6={v6}");
        }
    }
}
