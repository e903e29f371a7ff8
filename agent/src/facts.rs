//! Local facts for `compile`: links, their addresses, the default-route interface, and the
//! hostname, read from the kernel over rtnetlink (in the caller's network namespace).
//!
//! Read-only: this module never changes links, addresses or routes. Output is sorted
//! (interfaces by name, addresses ascending) so the same host always gives the same facts.
//!
//! The agent reads facts through [`FactSource`]: [`NetlinkFacts`] (the kernel, the
//! default) or [`FixedFacts`] (given values: unit tests, the fleet simulator).

use futures::TryStreamExt;
use ipnet::IpNet;
use portcullis_policy::{Facts, InterfaceFacts};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("cannot open an rtnetlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("rtnetlink {what} dump failed: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Where the agent's facts come from (compile input, the session's `Hello`).
#[tonic::async_trait]
pub trait FactSource: Send + Sync + std::fmt::Debug {
    /// The facts now.
    async fn gather(&self) -> Result<Facts, FactsError>;
}

/// This host's facts over rtnetlink ([`gather`]): what the agent uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetlinkFacts;

#[tonic::async_trait]
impl FactSource for NetlinkFacts {
    async fn gather(&self) -> Result<Facts, FactsError> {
        gather().await
    }
}

/// The same facts every time (tests, simulated agents).
#[derive(Debug, Clone, Default)]
pub struct FixedFacts(pub Facts);

#[tonic::async_trait]
impl FactSource for FixedFacts {
    async fn gather(&self) -> Result<Facts, FactsError> {
        Ok(self.0.clone())
    }
}

/// Gathers facts about this host. Needs a tokio runtime (rtnetlink's connection task).
pub async fn gather() -> Result<Facts, FactsError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(FactsError::Connect)?;
    let task = tokio::spawn(conn);
    let result = gather_with(&handle).await;
    task.abort();
    result
}

async fn gather_with(handle: &Handle) -> Result<Facts, FactsError> {
    let dump = |what| move |source| FactsError::Dump { what, source };

    let mut by_index: BTreeMap<u32, InterfaceFacts> = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.map_err(dump("link"))? {
        let name = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let Some(name) = name else { continue };
        by_index.insert(
            msg.header.index,
            InterfaceFacts {
                name,
                index: msg.header.index,
                up: msg.header.flags.contains(LinkFlags::Up),
                addrs: Vec::new(),
            },
        );
    }

    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(dump("address"))? {
        // IFA_LOCAL is the interface's own address on point-to-point links, where
        // IFA_ADDRESS is the peer; prefer it when present.
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        let (Some(addr), Some(iface)) = (addr, by_index.get_mut(&msg.header.index)) else {
            continue;
        };
        if let Ok(net) = IpNet::new(addr, msg.header.prefix_len) {
            iface.addrs.push(net);
        }
    }

    let v4 = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut default_route_interface = default_oif(v4).await.map_err(dump("route"))?;
    if default_route_interface.is_none() {
        let v6 = handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute();
        default_route_interface = default_oif(v6).await.map_err(dump("route"))?;
    }

    let mut interfaces: Vec<InterfaceFacts> = by_index.into_values().collect();
    for iface in &mut interfaces {
        iface.addrs.sort();
        iface.addrs.dedup();
    }
    interfaces.sort();
    let default_route_interface = default_route_interface.and_then(|oif| {
        interfaces
            .iter()
            .find(|i| i.index == oif)
            .map(|i| i.name.clone())
    });
    Ok(Facts {
        hostname: hostname(),
        interfaces,
        default_route_interface,
    })
}

/// The output interface of the best default route in the main table (lowest metric).
async fn default_oif(
    routes: impl futures::Stream<Item = Result<RouteMessage, rtnetlink::Error>>,
) -> Result<Option<u32>, rtnetlink::Error> {
    futures::pin_mut!(routes);
    let mut best: Option<(u32, u32)> = None; // (priority, oif)
    while let Some(msg) = routes.try_next().await? {
        if let Some(candidate) = default_route(&msg)
            && best.is_none_or(|b| candidate.0 < b.0)
        {
            best = Some(candidate);
        }
    }
    Ok(best.map(|(_, oif)| oif))
}

/// `(priority, oif)` when `msg` is a unicast default route of the main table.
fn default_route(msg: &RouteMessage) -> Option<(u32, u32)> {
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if msg.header.destination_prefix_length != 0
        || msg.header.kind != RouteType::Unicast
        || table != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return None;
    }
    let mut oif = None;
    let mut priority = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    oif.map(|o| (priority, o))
}

/// The kernel's hostname (UTS namespace), falling back to `/etc/hostname`.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
