//! Writes the seed corpora of the fuzz targets from real inputs: the example site and
//! inventory files, the readback fixtures, wire messages encoded from the compiled
//! examples, NFLOG datagrams as the kernel shapes them, and the kernel's own netlink
//! answers (and `nft -j` listing) for every compiled example host.
//!
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example seeds -- <out dir>` as
//! root: it unshares a network namespace of its own first, so the tables it writes never
//! touch the host's firewall. Seeds go to `<out dir>/<target>/<name>`; minimize them
//! into `fuzz/corpus/<target>` with `cargo fuzz cmin`.

use anyhow::{Context, Result, bail};
use portcullis_agent::dataplane::fuzzing::record_table_read;
use portcullis_agent::nflog::wire::{SynthPacket, encode_done, encode_packet, ip_packet};
use portcullis_agent::{Dataplane, NftDataplane};
use portcullis_fuzz::proto::index;
use portcullis_policy::{Facts, InterfaceFacts, Source, compile, load_fleet};
use portcullis_proto::v1;
use prost::Message;
use std::path::{Path, PathBuf};

struct Out(PathBuf);

impl Out {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {name}"))
    }

    fn message(&self, kind: &str, name: &str, m: &impl Message) -> Result<()> {
        let sel = index(kind).with_context(|| format!("no message {kind} in the table"))?;
        let mut bytes = vec![sel];
        bytes.extend(m.encode_to_vec());
        self.put("proto_messages", name, &bytes)
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn facts() -> Facts {
    Facts {
        hostname: "h1".into(),
        interfaces: vec![InterfaceFacts {
            name: "eth0".into(),
            index: 2,
            up: true,
            addrs: vec!["10.77.1.2/24".parse().unwrap_or_else(|_| unreachable!())],
        }],
        default_route_interface: Some("eth0".into()),
    }
}

fn main() -> Result<()> {
    let out = Out(std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: seeds <out dir>")?);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unsharing a network namespace (run as root)")?;

    // Site + inventory.
    let pairs = [
        ("deploy/examples/inventory.yml", "deploy/examples/site.yml"),
        (
            "deploy/examples/inventory.yml",
            "deploy/examples/site-next.yml",
        ),
        (
            "policy/tests/fixtures/inventory.yml",
            "policy/tests/fixtures/site.yml",
        ),
    ];
    let mut policies = Vec::new();
    for (i, (inv, site)) in pairs.iter().enumerate() {
        let (inv, site) = (read(&root.join(inv))?, read(&root.join(site))?);
        out.put(
            "site_inventory",
            &format!("pair{i}"),
            format!("{inv}\0{site}").as_bytes(),
        )?;
        let fleet = load_fleet(&Source::new("site.yml", site), &Source::new("inv.yml", inv))
            .map_err(|d| anyhow::anyhow!("{d}"))?;
        policies.extend(fleet.hosts.into_values());
    }
    policies.sort_by_key(|p| format!("{p:?}"));
    policies.dedup();

    // Wire messages: every type empty, then the real ones.
    for (i, (name, _)) in portcullis_fuzz::proto::MESSAGES.iter().enumerate() {
        out.put(
            "proto_messages",
            &format!("empty-{name}"),
            &[u8::try_from(i)?],
        )?;
    }
    let wire_facts = v1::Facts::from(&facts());
    out.message("Facts", "facts", &wire_facts)?;
    let hello = v1::Hello {
        facts: Some(wire_facts),
        ..Default::default()
    };
    out.message("Hello", "hello", &hello)?;
    out.message(
        "AgentMessage",
        "agent-hello",
        &v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Hello(hello)),
        },
    )?;
    for (i, p) in policies.iter().enumerate() {
        let wire = v1::HostPolicy::from(p);
        out.message("HostPolicy", &format!("policy{i}"), &wire)?;
        let desired = v1::Desired {
            policy: Some(wire),
            ..Default::default()
        };
        out.message("Desired", &format!("desired{i}"), &desired)?;
        out.message(
            "ControllerMessage",
            &format!("controller-desired{i}"),
            &v1::ControllerMessage {
                msg: Some(v1::controller_message::Msg::Desired(desired)),
            },
        )?;
    }

    // Denial batches and logs requests (selector, controller clock, message).
    let now_ms: i64 = 1_750_000_000_000;
    let entry = |src: &str, proto, dport| v1::DenialEntry {
        src: src.into(),
        dst: "10.77.1.2".into(),
        proto,
        dport,
        ifname: "eth0".into(),
        count: 3,
        first_unix_ms: now_ms - 1000,
        last_unix_ms: now_ms - 10,
        revision: 7,
        ..Default::default()
    };
    let batch = v1::DenialBatch {
        seq: 4,
        interval_start_unix_ms: now_ms - 1000,
        interval_end_unix_ms: now_ms,
        entries: vec![entry("10.77.0.9", 6, 23), entry("fd77::9", 17, 161)],
        seen: 6,
        sent: 6,
        has_kernel_suppressed: true,
        kernel_suppressed: 2,
        epoch: 1,
        ..Default::default()
    };
    out.message("DenialBatch", "batch", &batch)?;
    let denial = |name: &str, sel: u8, m: &dyn Fn() -> Vec<u8>| {
        let mut bytes = vec![sel];
        bytes.extend(now_ms.to_le_bytes());
        bytes.extend(m());
        out.put("denial_batch", name, &bytes)
    };
    denial("batch", 0, &|| batch.encode_to_vec())?;
    let logs = v1::LogsRequest {
        host_pattern: "web:!h3".into(),
        port: 22,
        proto: 6,
        source_cidr: "10.77.0.0/16".into(),
        since_unix_ms: now_ms - 600_000,
        ..Default::default()
    };
    denial("logs", 1, &|| logs.encode_to_vec())?;
    out.message("LogsRequest", "logs", &logs)?;

    // NFLOG datagrams.
    let (a4, b4) = ("10.77.0.9".parse()?, "10.77.1.2".parse()?);
    let (a6, b6) = ("fd77::9".parse()?, "fd77::1:2".parse()?);
    let mut buf = Vec::new();
    for (i, (src, dst, proto, prefix)) in [
        (a4, b4, 6, "pc r7 deny "),
        (a6, b6, 17, "pc r7 audit "),
        (a4, b4, 1, "other "),
    ]
    .into_iter()
    .enumerate()
    {
        let payload = ip_packet(src, dst, proto, 40000, 23);
        let p = SynthPacket {
            group: 7,
            ifindex_in: 2,
            prefix,
            seq: Some(u32::try_from(i)?),
            timestamp: Some((1_750_000_000, 5)),
            payload: &payload,
        };
        let mut one = Vec::new();
        encode_packet(&mut one, &p, false);
        out.put("nflog_parse", &format!("packet{i}"), &one)?;
        encode_packet(&mut buf, &p, true);
    }
    encode_done(&mut buf);
    out.put("nflog_parse", "batch", &buf)?;

    // Readback: the fixtures, then the kernel's answers for every compiled example.
    let fixtures = root.join("policy/tests/fixtures/readback");
    for e in std::fs::read_dir(&fixtures).context("listing readback fixtures")? {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("x");
        if name.ends_with(".json") {
            out.put("readback_json", name, read(&path)?.as_bytes())?;
        }
    }
    let nft = NftDataplane::new("nft");
    let (_, absent) = record_table_read().context("reading an absent table")?;
    out.put("readback_netlink", "absent", &absent)?;
    for (i, p) in policies.iter().enumerate() {
        let rs = compile(p, &facts(), 7).map_err(|e| anyhow::anyhow!("{e}"))?;
        nft.replace(&rs).context("nft apply")?;
        let (table, recording) = record_table_read().context("netlink readback")?;
        match table {
            Ok(Some(t)) if t.ruleset == rs => {}
            other => bail!("policy {i}: the netlink readback did not read it back: {other:?}"),
        }
        out.put("readback_netlink", &format!("policy{i}"), &recording)?;
        let json = nft
            .read_back()
            .context("nft -j list table")?
            .unwrap_or_default();
        out.put("readback_json", &format!("kernel{i}.json"), json.as_bytes())?;
    }
    // Hand edits of the first table, as drift or another tool would make them: each one
    // makes the netlink readback answer "not ours" somewhere else.
    let edits = [
        "add rule inet portcullis guard tcp dport 9 counter accept comment \"x\"",
        "add element inet portcullis allow_tcp { 7777 }",
        "add element inet portcullis allow_tcp_v4 { 192.0.2.0/24 . 1-2 }",
        "add set inet portcullis extra { type ipv4_addr; }",
        "add chain inet portcullis other { type filter hook output priority 0; policy accept; }",
        "add counter inet portcullis named",
        "add table inet portcullis { flags dormant; }",
    ];
    let first = policies.first().context("no policies")?;
    let rs = compile(first, &facts(), 7).map_err(|e| anyhow::anyhow!("{e}"))?;
    nft.replace(&rs).context("nft apply")?;
    for (i, edit) in edits.iter().enumerate() {
        nft.apply(edit).with_context(|| format!("nft {edit}"))?;
        let (_, recording) = record_table_read().context("netlink readback")?;
        out.put("readback_netlink", &format!("edit{i}"), &recording)?;
        let json = nft
            .read_back()
            .context("nft -j list table")?
            .unwrap_or_default();
        out.put("readback_json", &format!("edit{i}.json"), json.as_bytes())?;
    }
    println!("{} policies; seeds in {}", policies.len(), out.0.display());
    Ok(())
}
