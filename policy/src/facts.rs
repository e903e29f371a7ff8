//! Local facts about a host that `compile` needs (gathered by the agent from rtnetlink).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InterfaceFacts {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub addrs: Vec<IpNet>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub hostname: String,
    /// Sorted by name.
    pub interfaces: Vec<InterfaceFacts>,
    /// Interface of the IPv4 default route (falling back to IPv6's), if any.
    pub default_route_interface: Option<String>,
}
