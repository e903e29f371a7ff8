//! `portcullis-agent apply`: load a policy (a site + inventory for one host, or one host's
//! policy file), compile it against this host's facts, apply it in one transaction, verify
//! it by readback, record last-known-good.
//!
//! Policy errors are printed as `file:line:col: message` and exit 2 with nothing applied.

use super::{BadInput, Exit, print_json};
use crate::Agent;
use anyhow::{Context, Result};
use clap::Args;
use portcullis_policy::{HostPolicy, Source};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// One host's policy file (the `policy:` mapping of a play).
    #[arg(long, env = "PORTCULLIS_POLICY", conflicts_with_all = ["site", "inventory", "host"],
          required_unless_present = "site")]
    pub policy: Option<PathBuf>,
    /// Site file (list of plays); needs --inventory.
    #[arg(long, env = "PORTCULLIS_SITE", requires = "inventory")]
    pub site: Option<PathBuf>,
    /// Inventory source, repeatable (merged in order, as Ansible does): INI, YAML or
    /// `--list` JSON file, executable dynamic inventory, directory, or `host1,host2,`;
    /// needs --site.
    #[arg(short = 'i', long, env = "PORTCULLIS_INVENTORY", requires = "site")]
    pub inventory: Vec<PathBuf>,
    /// This host's name in the inventory [default: the kernel's hostname].
    #[arg(long, env = "PORTCULLIS_HOST")]
    pub host: Option<String>,
    /// Revision to record (and put in the log prefix) [default: last-known-good's revision
    /// if the policy is unchanged, else the next one].
    #[arg(long, env = "PORTCULLIS_REVISION")]
    pub revision: Option<u64>,
    /// Print the result as JSON.
    #[arg(long, env = "PORTCULLIS_JSON")]
    pub json: bool,
}

pub fn run(agent: &Agent, args: ApplyArgs) -> Result<Exit> {
    let policy = load_policy(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    let facts = runtime
        .block_on(agent.facts().gather())
        .context("gather host facts")?;
    let revision = match args.revision {
        Some(r) => r,
        None => match agent.last_known_good()? {
            Some(lkg) if lkg.policy == policy => lkg.revision,
            Some(lkg) => lkg.revision.saturating_add(1),
            None => 1,
        },
    };
    let report = match agent.reconcile(&policy, &facts, revision) {
        Ok(r) => r,
        Err(crate::AgentError::Compile(e)) => {
            return Err(BadInput(format!("{}: {e}", facts.hostname)).into());
        }
        Err(e) => return Err(e).context("apply"),
    };
    if args.json {
        print_json(&report)?;
    } else {
        print!("{report}");
    }
    Ok(Exit::Ok)
}

/// Reads a policy file, refusing one larger than the YAML budget before reading it.
fn read_source(path: &Path) -> Result<Source> {
    let bad = |e: std::io::Error| BadInput(format!("{}: {e}", path.display()));
    let limit = portcullis_policy::budget::MAX_DOCUMENT_BYTES;
    let file = std::fs::File::open(path).map_err(bad)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, limit as u64 + 1), &mut text)
        .map_err(bad)?;
    if text.len() > limit {
        return Err(BadInput(format!(
            "{}:1:1: document too large: more than {limit} bytes",
            path.display()
        ))
        .into());
    }
    Ok(Source::new(path.display().to_string(), text))
}

/// The address-list files `src` names (`from: { file }`), read relative to `path`'s
/// directory and parsed; an unreadable or ill-formed one refuses the apply (fail
/// closed) with the list's file:line:column.
fn read_lists(path: &Path, src: &Source) -> Result<portcullis_policy::AddrLists> {
    use portcullis_policy::addrlist;
    let dir = path.parent().unwrap_or(Path::new("."));
    let limit = addrlist::MAX_LIST_BYTES;
    let mut sources = Vec::new();
    for name in addrlist::references_in(src) {
        addrlist::check_name(&name).map_err(|e| BadInput(format!("{}: {e}", path.display())))?;
        let file = dir.join(&name);
        let mut text = String::new();
        std::fs::File::open(&file)
            .and_then(|f| {
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(f, limit as u64 + 1),
                    &mut text,
                )
            })
            .map_err(|e| {
                BadInput(format!(
                    "{}: reading list file `{name}` ({}): {e}",
                    path.display(),
                    file.display()
                ))
            })?;
        if text.len() > limit {
            return Err(BadInput(format!(
                "{name}:1:1: list file too large: more than {limit} bytes"
            ))
            .into());
        }
        sources.push(Source::new(name, text));
    }
    addrlist::AddrLists::parse(&sources).map_err(|d| BadInput(d.to_string()).into())
}

fn load_policy(args: &ApplyArgs) -> Result<HostPolicy> {
    use portcullis_policy::site::{load_fleet_with_lists, load_host_policy_with_lists};
    if let Some(path) = &args.policy {
        let source = read_source(path)?;
        let lists = read_lists(path, &source)?;
        return load_host_policy_with_lists(&source, &lists)
            .map_err(|d| BadInput(d.to_string()).into());
    }
    let (Some(site), false) = (&args.site, args.inventory.is_empty()) else {
        return Err(BadInput("give --policy FILE, or --site FILE --inventory FILE".into()).into());
    };
    let site_src = read_source(site)?;
    let lists = read_lists(site, &site_src)?;
    let loaded = portcullis_inventory_files::load(&args.inventory, Some(site))
        .map_err(|e| BadInput(e.to_string()))?
        .map_err(|d| BadInput(d.to_string()))?;
    let inv_src = Source::new(loaded.name.clone(), loaded.list_json());
    let mut fleet =
        load_fleet_with_lists(&site_src, &inv_src, &lists).map_err(|d| BadInput(d.to_string()))?;
    let host = args.host.clone().unwrap_or_else(crate::facts::hostname);
    fleet.hosts.remove(&host).ok_or_else(|| {
        BadInput(format!(
            "{}: host {host:?} is not targeted by any play (hosts in the fleet: {})",
            site.display(),
            fleet.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
        .into()
    })
}
