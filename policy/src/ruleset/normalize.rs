//! Canonical form of interval-set elements (see [`super::Set::normalize`]).
//!
//! Pure arithmetic on port ranges and address ranges; no knowledge of nft syntax.
//! Must stay idempotent: `normalize(normalize(x)) == normalize(x)`.

use super::Element;
use crate::model::PortRange;
use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// An (address range, port range) rectangle; addresses as `u128`, bounds inclusive.
type Rect = (u128, u128, PortRange);
/// Inclusive address ranges (as `u128`).
type AddrRanges = Vec<(u128, u128)>;

pub(super) fn normalize(elements: impl IntoIterator<Item = Element>) -> BTreeSet<Element> {
    let mut ports = Vec::new();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let (mut a4, mut a6) = (Vec::new(), Vec::new());
    for e in elements {
        match e {
            Element::Port(p) => ports.push(p),
            Element::V4Port(n, p) => v4.push((
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
                p,
            )),
            Element::V6Port(n, p) => {
                v6.push((u128::from(n.network()), u128::from(n.broadcast()), p))
            }
            Element::V4(n) => a4.push(n.trunc()),
            Element::V6(n) => a6.push(n.trunc()),
        }
    }
    // Collected, then built at once: `BTreeSet::from_iter` sorts (each part already is,
    // in variant order) and bulk-builds; inserting a million one by one was a quarter
    // of a million-element readback.
    let mut out: Vec<Element> = merge_ports(ports).into_iter().map(Element::Port).collect();
    for (addr, len, p) in rects_to_prefixes(v4, 32) {
        // `addr` came from a u32 and `len <= 32`, so both conversions hold.
        let a = Ipv4Addr::from(u32::try_from(addr).unwrap_or(u32::MAX));
        if let Ok(n) = Ipv4Net::new(a, len) {
            out.push(Element::V4Port(n, p));
        }
    }
    for (addr, len, p) in rects_to_prefixes(v6, 128) {
        if let Ok(n) = Ipv6Net::new(Ipv6Addr::from(addr), len) {
            out.push(Element::V6Port(n, p));
        }
    }
    out.extend(
        uncovered(a4, |n| {
            (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            )
        })
        .into_iter()
        .map(Element::V4),
    );
    out.extend(
        uncovered(a6, |n| (u128::from(n.network()), u128::from(n.broadcast())))
            .into_iter()
            .map(Element::V6),
    );
    out.into_iter().collect()
}

/// Prefixes sorted, without those inside another one (an interval set refuses
/// overlapping elements; touching ones stay apart, as the kernel keeps them).
pub(crate) fn uncovered<N: Ord + Copy>(
    mut nets: Vec<N>,
    range: impl Fn(&N) -> (u128, u128),
) -> Vec<N> {
    // By first address, the widest first: a prefix is covered iff it ends inside the
    // last one kept.
    nets.sort_by_key(|n| {
        let (a, b) = range(n);
        (a, std::cmp::Reverse(b))
    });
    nets.dedup();
    let mut out: Vec<N> = Vec::with_capacity(nets.len());
    let mut end: Option<u128> = None;
    for n in nets {
        let (a, b) = range(&n);
        if end.is_some_and(|e| a <= e && b <= e) {
            continue;
        }
        end = Some(b);
        out.push(n);
    }
    out
}

/// Sorted, with overlapping or touching ranges merged.
pub(crate) fn merge_ports(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.start) <= u32::from(last.end) + 1 => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Cut the union of `rects` into port-major slabs: maximal port ranges over which the
/// covered addresses are the same; each slab's addresses merged into ranges and each
/// range cut into its minimal CIDR cover; then each prefix's port pieces joined. Port-major because whitelists have few port
/// values and many sources, so the result stays close to what the operator wrote.
/// Returns `(network address, prefix length, ports)`.
fn rects_to_prefixes(mut rects: Vec<Rect>, bits: u8) -> Vec<(u128, u8, PortRange)> {
    rects.sort_by_key(|r| r.2.start);
    let mut bounds = BTreeSet::new();
    for r in &rects {
        bounds.insert(u32::from(r.2.start));
        bounds.insert(u32::from(r.2.end) + 1);
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut slabs: Vec<(u32, u32, AddrRanges)> = Vec::new();
    let mut active: Vec<Rect> = Vec::new();
    let mut next = 0;
    for pair in bounds.windows(2) {
        let (lo, hi) = (pair[0], pair[1] - 1);
        while next < rects.len() && u32::from(rects[next].2.start) == lo {
            active.push(rects[next]);
            next += 1;
        }
        active.retain(|r| u32::from(r.2.end) >= lo);
        if active.is_empty() {
            continue;
        }
        let addrs = merge_addrs(active.iter().map(|r| (r.0, r.1)).collect());
        match slabs.last_mut() {
            Some(last) if last.1 + 1 == lo && last.2 == addrs => last.1 = hi,
            _ => slabs.push((lo, hi, addrs)),
        }
    }
    // Within a slab the prefixes are disjoint, so one prefix's pieces in touching slabs
    // can be joined without creating overlaps; this keeps a host's own port range whole
    // when other entries cut the port axis.
    let mut by_prefix: BTreeMap<(u128, u8), Vec<PortRange>> = BTreeMap::new();
    for (lo, hi, addrs) in slabs {
        // Slab bounds come from u16 ports, so they fit back.
        let ports = PortRange {
            start: u16::try_from(lo).unwrap_or(u16::MAX),
            end: u16::try_from(hi).unwrap_or(u16::MAX),
        };
        for (a, b) in addrs {
            for prefix in range_to_prefixes(a, b, bits) {
                by_prefix.entry(prefix).or_default().push(ports);
            }
        }
    }
    let mut out = Vec::new();
    for ((addr, len), ports) in by_prefix {
        out.extend(merge_ports(ports).into_iter().map(|p| (addr, len, p)));
    }
    out
}

/// Sorted, with overlapping or touching address ranges merged.
fn merge_addrs(mut ranges: AddrRanges) -> AddrRanges {
    ranges.sort();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.1 == u128::MAX || r.0 <= last.1 + 1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

/// The minimal list of prefixes covering exactly `lo..=hi` in a `bits`-wide space.
fn range_to_prefixes(mut lo: u128, hi: u128, bits: u8) -> Vec<(u128, u8)> {
    let bits = u32::from(bits);
    let mut out = Vec::new();
    loop {
        // Largest block aligned at `lo` that does not pass `hi`.
        let mut k = lo.trailing_zeros().min(bits);
        let span = |k: u32| {
            if k >= 128 {
                u128::MAX
            } else {
                (1u128 << k) - 1
            }
        };
        while k > 0 && span(k) > hi - lo {
            k -= 1;
        }
        // `k <= bits <= 128`, so the prefix length fits in a u8.
        out.push((lo, u8::try_from(bits - k).unwrap_or(0)));
        let last = lo + span(k);
        if last >= hi {
            return out;
        }
        lo = last + 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v4(s: &str, a: u16, b: u16) -> Element {
        Element::V4Port(s.parse().unwrap(), PortRange::new(a, b).unwrap())
    }

    #[test]
    fn ports_merge_overlapping_and_touching() {
        let got = merge_ports(vec![
            PortRange::single(23),
            PortRange::single(22),
            PortRange::new(80, 90).unwrap(),
            PortRange::single(91),
            PortRange::new(85, 86).unwrap(),
            PortRange::single(65535),
        ]);
        assert_eq!(
            got,
            vec![
                PortRange::new(22, 23).unwrap(),
                PortRange::new(80, 91).unwrap(),
                PortRange::single(65535)
            ]
        );
    }

    #[test]
    fn prefixes_of_ranges() {
        assert_eq!(range_to_prefixes(0, u128::MAX, 128), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(0, u128::from(u32::MAX), 32), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(1, 5, 32), vec![(1, 32), (2, 31), (4, 31)]);
        assert_eq!(range_to_prefixes(7, 7, 32), vec![(7, 32)]);
    }

    #[test]
    fn overlapping_concat_elements_become_disjoint() {
        let got = normalize([v4("10.0.0.0/8", 20, 30), v4("10.1.0.0/16", 25, 40)]);
        let want: BTreeSet<Element> = [v4("10.0.0.0/8", 20, 30), v4("10.1.0.0/16", 31, 40)].into();
        assert_eq!(got, want);
        assert_eq!(normalize(got.clone()), got);
    }

    #[test]
    fn adjacent_and_contained_concat_elements_merge() {
        let got = normalize([
            v4("10.0.0.0/25", 22, 22),
            v4("10.0.0.128/25", 22, 22),
            v4("10.0.0.7/32", 22, 22),
            v4("10.0.0.0/24", 23, 23),
            v4("10.0.0.9/24", 22, 22), // host bits set: the network counts
        ]);
        assert_eq!(got, [v4("10.0.0.0/24", 22, 23)].into());
    }

    #[test]
    fn contained_wide_ports_split_by_port() {
        let got = normalize([v4("0.0.0.0/0", 161, 162), v4("198.51.100.0/24", 0, 65535)]);
        let want = [
            v4("198.51.100.0/24", 0, 160),
            v4("0.0.0.0/0", 161, 162),
            v4("198.51.100.0/24", 163, 65535),
        ];
        assert_eq!(got, want.into());
    }

    #[test]
    fn hosts_keep_their_port_ranges_when_others_cut_the_port_axis() {
        let got = normalize([v4("10.0.0.1/32", 1000, 1002), v4("10.0.0.7/32", 1001, 1001)]);
        assert_eq!(
            got,
            [v4("10.0.0.1/32", 1000, 1002), v4("10.0.0.7/32", 1001, 1001)].into()
        );
    }

    #[test]
    fn v6_whole_space() {
        let e = Element::V6Port("::/0".parse().unwrap(), PortRange::single(53));
        assert_eq!(normalize([e.clone(), e.clone()]), [e].into());
    }
}
