//! `portcullis inventory -i FILE...`: what an inventory and a host pattern select, offline
//! (no controller, no certificates): `--list-hosts PATTERN`, `--graph [GROUP]`, `--list`
//! (the `ansible-inventory --list` JSON) and `--host NAME` (its variables and, with a site
//! file, the plays that match it and the merged policy). Exit 2 on bad input.

use super::exit;
use super::output::print_json;
use portcullis_inventory_files as inventory_files;
use portcullis_policy::{Source, inventory_json, pattern, site};
use std::path::PathBuf;

/// How host patterns are read (shown by the `--help` of commands that take patterns).
pub const PATTERN_HELP: &str = "\
Host patterns are read as ansible-core 2.19 reads them, surprises included:
  - `:` separates terms only when there is no `,`: `a,b:!c` is the two terms `a` and `b:!c`;
    `fe80::1`, `host:22` and `web[1:3]` are one term each.
  - Plain terms are applied first, then every `&` term, then every `!` term, wherever they
    are written: `!staging:web` is `web` minus `staging`; only `&`/`!` terms start from `all`.
  - `~regex` matches from the start of a name (Python's re.match), not the whole name.
  - `web[0]`, `web[-1]`, `web[1:2]`, `web[1:]` pick hosts in inventory order (a group's own
    hosts, then its children's). `web[:3]` is not a subscript but an fnmatch class (`web:` or
    `web3`), and `app[12]` is subscript 12, not the class 1-or-2 (write `app[1-2]`).
  - An empty term (`web:`) is dropped.
Where ansible-core is loose, Portcullis refuses instead: an invalid `~regex` or a subscript
past the last host (Ansible's CLI prints no host for the whole pattern), a pattern of
separators only (`,`, which Ansible reads as `all`); and `localhost` is never implied.";

#[derive(Debug, clap::Args)]
#[command(after_help = PATTERN_HELP)]
pub struct InventoryArgs {
    /// Inventory source (repeatable, merged in order): an INI, YAML or `--list` JSON file,
    /// an executable dynamic inventory, a directory of sources, or `host1,host2,`
    #[arg(short = 'i', long = "inventory", required = true)]
    pub inventory: Vec<PathBuf>,
    /// Site file: its plays for --host, and its group_vars/ host_vars/
    pub site: Option<PathBuf>,
    /// Print the hosts a pattern selects, one per line, sorted
    #[arg(long, value_name = "PATTERN", group = "action")]
    pub list_hosts: Option<String>,
    /// Draw the group tree (of GROUP, default all)
    #[arg(long, value_name = "GROUP", num_args = 0..=1, default_missing_value = "all", group = "action")]
    pub graph: Option<String>,
    /// Print the inventory as `ansible-inventory --list` JSON
    #[arg(long, group = "action")]
    pub list: bool,
    /// Print one host's variables (and, with a site file, the plays and policy it gets)
    #[arg(long, value_name = "NAME", group = "action")]
    pub host: Option<String>,
    /// JSON output for --list-hosts and --graph
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InventoryArgs) -> anyhow::Result<i32> {
    let loaded = match inventory_files::load(&args.inventory, args.site.as_deref()) {
        Ok(Ok(l)) => l,
        Err(e) => {
            crate::eoutln!("error: {e:#}");
            return Ok(exit::INVALID);
        }
        Ok(Err(d)) => {
            crate::eoutln!("{d}");
            return Ok(exit::INVALID);
        }
    };
    let inv = &loaded.inventory;
    if let Some(p) = &args.list_hosts {
        let (hosts, unknown) = match pattern::select_ordered(inv, p) {
            Ok(x) => x,
            Err(e) => {
                crate::eoutln!("error: {e}");
                return Ok(exit::INVALID);
            }
        };
        for u in unknown {
            crate::eoutln!("warning: Could not match supplied host pattern, ignoring: {u}");
        }
        let mut hosts = hosts;
        hosts.sort();
        if hosts.is_empty() {
            crate::eoutln!("warning: No hosts matched, nothing to do");
        }
        if args.json {
            print_json(&hosts)?;
        } else {
            for h in hosts {
                crate::outln!("{h}");
            }
        }
        return Ok(exit::OK);
    }
    if let Some(g) = &args.graph {
        let Some(text) = inventory_json::graph(inv, g) else {
            crate::eoutln!("error: no group named `{g}` in the inventory");
            return Ok(exit::INVALID);
        };
        if args.json {
            print_json(&text.lines().collect::<Vec<_>>())?;
        } else {
            crate::out!("{text}");
        }
        return Ok(exit::OK);
    }
    if args.list {
        print_json(&inventory_json::to_list(inv))?;
        return Ok(exit::OK);
    }
    if let Some(name) = &args.host {
        let Some(host) = inv.hosts.get(name) else {
            crate::eoutln!("error: no host named `{name}` in the inventory");
            return Ok(exit::INVALID);
        };
        let Some(site_path) = &args.site else {
            print_json(&host.vars)?;
            return Ok(exit::OK);
        };
        let site_src = inventory_files::read_bounded(site_path)?;
        let inv_src = Source::new(loaded.name.clone(), loaded.list_json());
        let list_srcs = match super::apply::read_lists(site_path, &site_src) {
            Ok(l) => l,
            Err(e) => {
                crate::eoutln!("error: {e:#}");
                return Ok(exit::INVALID);
            }
        };
        let loaded_fleet = portcullis_policy::AddrLists::parse(&list_srcs)
            .and_then(|lists| site::load_fleet_with_lists(&site_src, &inv_src, &lists));
        let fleet = match loaded_fleet {
            Ok(f) => f,
            Err(d) => {
                crate::eoutln!("{d}");
                return Ok(exit::INVALID);
            }
        };
        let plays: Vec<serde_json::Value> = fleet
            .plays
            .iter()
            .filter(|p| p.matched.contains(name))
            .map(|p| serde_json::json!({"name": p.name, "hosts": p.hosts, "line": p.line}))
            .collect();
        print_json(&serde_json::json!({
            "vars": host.vars,
            "plays": plays,
            "policy": fleet.hosts.get(name),
        }))?;
        return Ok(exit::OK);
    }
    crate::eoutln!("error: give one of --list-hosts PATTERN, --graph [GROUP], --list, --host NAME");
    Ok(exit::INVALID)
}
