//! The typed fast path of [`super::parse`]: split the listing into raw entries, and
//! deserialize a set body of one of our shapes straight into [`Element`]s, without a
//! `serde_json::Value` tree (at 10k concatenated elements the tree, built and dropped,
//! was most of the parse).
//!
//! It only ever answers for input the general path reads the same way: anything it does
//! not accept exactly (an unknown key, a duplicate key, another spelling, a number out of
//! range, an address of the wrong family) makes it return `None`, and the caller reads
//! that entry (or the whole document, for [`split`]) through `Value` as before.

use crate::model::PortRange;
use crate::ruleset::{Element, Set, SetKey};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

/// The `nftables` entries as `(kind, raw body)`; `None` unless the document is an object
/// with an `nftables` array of one-key objects.
pub(super) fn split(json: &str) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    #[derive(Deserialize)]
    struct Listing<'a> {
        #[serde(borrow)]
        nftables: Vec<Entry<'a>>,
    }
    let listing: Listing<'_> = serde_json::from_str(json).ok()?;
    Some(
        listing
            .nftables
            .into_iter()
            .map(|e| (e.kind, e.body))
            .collect(),
    )
}

/// `{ "<kind>": <body> }`, exactly one key.
struct Entry<'a> {
    kind: Cow<'a, str>,
    body: &'a RawValue,
}

impl<'de: 'a, 'a> Deserialize<'de> for Entry<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a one-key object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let CowStr(kind) = map
                    .next_key()?
                    .ok_or_else(|| de::Error::custom("empty entry"))?;
                let body: &'de RawValue = map.next_value()?;
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("more than one key"));
                }
                Ok(Entry { kind, body })
            }
        }
        d.deserialize_map(V)
    }
}

/// A string, borrowed from the input when it has no escapes (`Cow`'s own `Deserialize`
/// always copies).
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A set body of one of our shapes, parsed.
pub(super) struct TypedSet {
    pub family: String,
    pub table: String,
    pub name: String,
    pub set: Set,
}

/// `body` as one of our set shapes (exactly the keys `family`, `name`, `table`, `type`,
/// optional `handle`, `flags: ["interval"]` (absent for the address hash sets), optional
/// `elem`, and for an address hash set optional `size`), or `None`.
pub(super) fn set(body: &str) -> Option<TypedSet> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body<'a> {
        #[serde(borrow)]
        family: Cow<'a, str>,
        #[serde(borrow)]
        name: Cow<'a, str>,
        #[serde(borrow)]
        table: Cow<'a, str>,
        #[serde(rename = "type")]
        key: Key,
        #[serde(default)]
        #[allow(dead_code)]
        handle: Option<IgnoredAny>,
        #[serde(default)]
        flags: Option<[Interval; 1]>,
        #[serde(default)]
        elem: Vec<Elem>,
        /// A staged hash set's (see `parse_set`): not part of the ruleset.
        #[serde(default)]
        size: Option<std::num::NonZeroU64>,
    }
    let b: Body<'_> = serde_json::from_str(body).ok()?;
    // `Key` reads `ipv4_addr`/`ipv6_addr` as the hash sets; with `flags interval` they are
    // the prefix sets.
    let key = match (b.key.0, b.flags.is_some()) {
        (SetKey::V4Addr, true) => SetKey::V4Net,
        (SetKey::V6Addr, true) => SetKey::V6Net,
        (k, interval) if k.interval() == interval => k,
        _ => return None,
    };
    if b.size.is_some() && !matches!(key, SetKey::V4Addr | SetKey::V6Addr) {
        return None;
    }
    let mut elements = Vec::with_capacity(b.elem.len());
    for e in b.elem {
        match (key, e) {
            (SetKey::Port, Elem::Ports(p)) => elements.push(Element::Port(p)),
            (SetKey::V4Port | SetKey::V6Port, Elem::Concat(nets, p)) => {
                for net in nets {
                    elements.push(match (key, net) {
                        (SetKey::V4Port, IpNet::V4(n)) => Element::V4Port(n, p),
                        (SetKey::V6Port, IpNet::V6(n)) => Element::V6Port(n, p),
                        _ => return None,
                    });
                }
            }
            (SetKey::V4Addr | SetKey::V4Net | SetKey::V6Addr | SetKey::V6Net, Elem::Nets(nets)) => {
                for net in nets {
                    elements.push(crate::readback::address_element(key, net)?);
                }
            }
            _ => return None,
        }
    }
    Some(TypedSet {
        family: b.family.into_owned(),
        table: b.table.into_owned(),
        name: b.name.into_owned(),
        set: Set::new(key, elements),
    })
}

/// `"inet_service"`, `["ipv4_addr", "inet_service"]` or `["ipv6_addr", "inet_service"]`.
struct Key(SetKey);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of our set types")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                match s {
                    "inet_service" => Ok(Key(SetKey::Port)),
                    "ipv4_addr" => Ok(Key(SetKey::V4Addr)),
                    "ipv6_addr" => Ok(Key(SetKey::V6Addr)),
                    _ => Err(E::custom("another set type")),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                let CowStr(a) = seq.next_element()?.ok_or_else(too_short)?;
                let CowStr(b) = seq.next_element()?.ok_or_else(too_short)?;
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("longer concatenation"));
                }
                match (a.as_ref(), b.as_ref()) {
                    ("ipv4_addr", "inet_service") => Ok(Key(SetKey::V4Port)),
                    ("ipv6_addr", "inet_service") => Ok(Key(SetKey::V6Port)),
                    _ => Err(de::Error::custom("another concatenation")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The string `"interval"`.
struct Interval;

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let CowStr(s) = CowStr::deserialize(d)?;
        (s == "interval")
            .then_some(Interval)
            .ok_or_else(|| de::Error::custom("another flag"))
    }
}

fn too_short<E: de::Error>() -> E {
    E::custom("too short")
}

/// One element: a port spelling, `{"concat": [address, port]}`, or an address spelling
/// (address, prefix, address range) as networks.
enum Elem {
    Ports(PortRange),
    Concat(Vec<IpNet>, PortRange),
    Nets(Vec<IpNet>),
}

impl<'de> Deserialize<'de> for Elem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Elem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a set element")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Elem, E> {
                Ok(Elem::Ports(PortRange::single(port(v)?)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Elem, E> {
                Ok(Elem::Nets(vec![IpNet::from(ip(s)?)]))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Elem, A::Error> {
                let CowStr(key) = map.next_key()?.ok_or_else(too_short)?;
                let elem = match key.as_ref() {
                    "range" => match map.next_value::<[Bound; 2]>()? {
                        [Bound::Port(a), Bound::Port(b)] => Elem::Ports(range(a, b)?),
                        [Bound::Addr(a), Bound::Addr(b)] => Elem::Nets(addr_range(a, b)?),
                        _ => return Err(de::Error::custom("mixed range")),
                    },
                    "prefix" => {
                        let p: Prefix<'de> = map.next_value()?;
                        Elem::Nets(vec![prefix(&p)?])
                    }
                    "concat" => {
                        let Concat(nets, ports) = map.next_value()?;
                        Elem::Concat(nets, ports)
                    }
                    _ => return Err(de::Error::custom("another element spelling")),
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("more than one key"));
                }
                Ok(elem)
            }
        }
        d.deserialize_any(V)
    }
}

/// One bound of a `range`: a port or an address.
enum Bound {
    Port(u64),
    Addr(IpAddr),
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bound;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port or an address")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bound, E> {
                Ok(Bound::Port(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Bound, E> {
                Ok(Bound::Addr(ip(s)?))
            }
        }
        d.deserialize_any(V)
    }
}

/// The address range `a`-`b` as the prefixes covering exactly it.
fn addr_range<E: de::Error>(a: IpAddr, b: IpAddr) -> Result<Vec<IpNet>, E> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Ok(ipnet::Ipv4Subnets::new(a, b, 0)
            .map(|n: Ipv4Net| IpNet::V4(n))
            .collect()),
        (IpAddr::V6(a), IpAddr::V6(b)) => Ok(ipnet::Ipv6Subnets::new(a, b, 0)
            .map(|n: Ipv6Net| IpNet::V6(n))
            .collect()),
        _ => Err(de::Error::custom("mixed address range")),
    }
}

/// `{"addr": A, "len": N}` as its network.
fn prefix<E: de::Error>(p: &Prefix<'_>) -> Result<IpNet, E> {
    let len = u8::try_from(p.len).map_err(|_| E::custom("length"))?;
    let net = IpNet::new(ip(&p.addr.0)?, len).map_err(|_| E::custom("prefix length"))?;
    Ok(net.trunc())
}

fn port<E: de::Error>(v: u64) -> Result<u16, E> {
    u16::try_from(v).map_err(|_| E::custom("port out of range"))
}

fn range<E: de::Error>(a: u64, b: u64) -> Result<PortRange, E> {
    PortRange::new(port(a)?, port(b)?).ok_or_else(|| E::custom("empty port range"))
}

/// `[address, port]` of a concatenation.
struct Concat(Vec<IpNet>, PortRange);

impl<'de> Deserialize<'de> for Concat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Concat;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[address, port]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Concat, A::Error> {
                let Addr(nets) = seq.next_element()?.ok_or_else(too_short)?;
                let ports = match seq.next_element()?.ok_or_else(too_short)? {
                    Elem::Ports(p) => p,
                    Elem::Concat(..) => return Err(de::Error::custom("nested concatenation")),
                    Elem::Nets(_) => return Err(de::Error::custom("an address as the port")),
                };
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("longer concatenation"));
                }
                Ok(Concat(nets, ports))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `"10.0.0.1"`, `{"prefix": {"addr": A, "len": N}}` or `{"range": [A, B]}` as networks.
struct Addr(Vec<IpNet>);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address, prefix or address range")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Addr, E> {
                Ok(Addr(vec![IpNet::from(ip(s)?)]))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Addr, A::Error> {
                let CowStr(key) = map.next_key()?.ok_or_else(too_short)?;
                let nets = match key.as_ref() {
                    "prefix" => {
                        let p: Prefix<'de> = map.next_value()?;
                        vec![prefix(&p)?]
                    }
                    "range" => {
                        let [CowStr(a), CowStr(b)]: [CowStr<'de>; 2] = map.next_value()?;
                        addr_range(ip(&a)?, ip(&b)?)?
                    }
                    _ => return Err(de::Error::custom("another address spelling")),
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("more than one key"));
                }
                Ok(Addr(nets))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Prefix<'a> {
    #[serde(borrow)]
    addr: CowStr<'a>,
    len: u64,
}

fn ip<E: de::Error>(s: &str) -> Result<IpAddr, E> {
    s.parse().map_err(|_| E::custom("address"))
}
