//! `portcullis apply -i inventory.yml site.yml`: validate locally, then have the controller
//! compile for every targeted host, store a revision and push it; follow each host until
//! it reports `Applied` with the expected hash, with a progress bar and a final table.
//! Exit 0 only if every targeted host applied.

use super::connect::{ConnectArgs, status_exit};
use super::exit;
use super::output::{print_json, short_hash, table};
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use portcullis_policy::protocol::outcome::HostOutcome;
use portcullis_policy::{Source, site};
use portcullis_proto::protocol::host_outcome;
use portcullis_proto::v1;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_stream::StreamExt as _;

#[derive(Debug, clap::Args)]
#[command(after_help = super::inventory::PATTERN_HELP)]
pub struct ApplyArgs {
    /// Inventory source, repeatable (merged in order, as Ansible does): INI, YAML or
    /// `--list` JSON file, executable dynamic inventory, directory, or `host1,host2,`;
    /// group_vars/ and host_vars/ beside it or the site file apply
    #[arg(short = 'i', long, env = "PORTCULLIS_INVENTORY", required = true)]
    pub inventory: Vec<PathBuf>,
    /// Site file: a list of plays (hosts pattern + policy)
    pub site: PathBuf,
    /// Only these hosts (an Ansible pattern, read as ansible-core does: see
    /// `portcullis inventory --help`)
    #[arg(long)]
    pub limit: Option<String>,
    /// How long to wait for every host to report
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the final result as JSON
    #[arg(long)]
    pub json: bool,
    /// Change nothing: show per host what this apply would change against the revision
    /// it runs (as attested); exit 2 if anything would change (or, with --replay, seen
    /// traffic would be newly denied), 0 if nothing would
    #[arg(long)]
    pub check: bool,
    /// With --check: print each host's semantic changes, not only how many
    #[arg(long, requires = "check")]
    pub diff: bool,
    /// With --check: replay the traffic seen in this window (denial logs and the rules'
    /// accept counters, e.g. `24h`) against the new policy and list, per host and port,
    /// what it would newly deny
    #[arg(long, requires = "check", value_parser = humantime::parse_duration)]
    pub replay: Option<Duration>,
    #[command(flatten)]
    pub rollout: super::rollout::RolloutArgs,
}

/// Read a policy file, refusing one over the YAML budget without reading all of it.
fn read(path: &PathBuf) -> anyhow::Result<Source> {
    use std::io::Read as _;
    let limit = portcullis_policy::budget::MAX_DOCUMENT_BYTES;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit as u64 + 1).read_to_string(&mut text))
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        text.len() <= limit,
        "{}:1:1: document too large: more than {limit} bytes",
        path.display()
    );
    Ok(Source::new(path.display().to_string(), text))
}

/// Read the address-list files the site names (`from: { file }`), relative to the
/// site file's directory, each bounded like the controller bounds it. A file that cannot
/// be read refuses the apply (fail closed), naming the site file and the list.
pub(crate) fn read_lists(site: &Path, site_src: &Source) -> anyhow::Result<Vec<Source>> {
    use std::io::Read as _;
    let dir = site.parent().unwrap_or(Path::new("."));
    let limit = portcullis_policy::addrlist::MAX_LIST_BYTES;
    let mut out = Vec::new();
    for name in portcullis_policy::addrlist::references_in(site_src) {
        if let Err(e) = portcullis_policy::addrlist::check_name(&name) {
            anyhow::bail!("{}: {e}", site.display());
        }
        let path = dir.join(&name);
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(limit as u64 + 1).read_to_string(&mut text))
            .with_context(|| {
                format!(
                    "{}: reading list file `{name}` ({})",
                    site.display(),
                    path.display()
                )
            })?;
        anyhow::ensure!(
            text.len() <= limit,
            "{name}:1:1: list file too large: more than {limit} bytes"
        );
        out.push(Source::new(name, text));
    }
    Ok(out)
}

pub async fn run(args: ApplyArgs, conn: &ConnectArgs) -> anyhow::Result<i32> {
    let site_src = read(&args.site)?;
    let list_srcs = match read_lists(&args.site, &site_src) {
        Ok(l) => l,
        Err(e) => {
            crate::eoutln!("error: {e:#}");
            crate::eoutln!("error: a list file could not be read; nothing was applied");
            return Ok(exit::INVALID);
        }
    };
    let loaded = match portcullis_inventory_files::load(&args.inventory, Some(&args.site)) {
        Ok(Ok(l)) => l,
        Err(e) => {
            crate::eoutln!("error: {e:#}");
            crate::eoutln!("error: the inventory could not be read; nothing was applied");
            return Ok(exit::INVALID);
        }
        Ok(Err(diags)) => {
            crate::eoutln!("{diags}");
            crate::eoutln!(
                "error: {} problem(s) found; nothing was applied",
                diags.len()
            );
            return Ok(exit::INVALID);
        }
    };
    // The controller stores the inventory as read (a dynamic inventory's answer included).
    let inv_src = Source::new(loaded.name.clone(), loaded.list_json());
    // Fail fast and locally, with file:line:column, before contacting anyone.
    let checked = portcullis_policy::AddrLists::parse(&list_srcs)
        .and_then(|lists| site::load_fleet_with_lists(&site_src, &inv_src, &lists));
    if let Err(diags) = checked {
        crate::eoutln!("{diags}");
        crate::eoutln!(
            "error: {} problem(s) found; nothing was applied",
            diags.len()
        );
        return Ok(exit::INVALID);
    }
    let mut client = conn.admin().await?;
    let request = v1::ApplyRequest {
        site_name: site_src.name,
        site_yaml: site_src.text,
        inventory_name: inv_src.name,
        inventory_yaml: inv_src.text,
        lists: list_srcs
            .into_iter()
            .map(|s| v1::ListFile {
                name: s.name,
                content: s.text,
            })
            .collect(),
        limit: args.limit.clone().unwrap_or_default(),
        check: args.check,
        replay_window_ms: args.replay.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        }),
        ..Default::default()
    };
    let mut request = request;
    args.rollout.fill(&mut request);
    if args.check {
        return super::apply_check::run(&mut client, request, args.diff, args.json).await;
    }
    let mut stream = match client.apply(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(status_exit(&s));
        }
    };
    let accepted = match stream.next().await {
        Some(Ok(v1::ApplyEvent {
            event: Some(v1::apply_event::Event::Accepted(a)),
        })) => a,
        Some(Err(s)) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(status_exit(&s));
        }
        _ => anyhow::bail!("controller ended the apply stream without accepting it"),
    };
    if accepted.rollout_id != 0 {
        return super::rollout::follow(accepted, stream, args.json).await;
    }
    let revision = accepted.revision;
    let total = accepted.hosts.len();
    let bar = ProgressBar::new(total as u64);
    if args.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} r{msg} [{bar:30}] {pos}/{len} hosts {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(revision.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    if !args.json && !accepted.offline.is_empty() {
        bar.println(&*super::output::term_lines(&format!(
            "offline, will get r{revision} when they connect: {}",
            accepted.offline.join(", ")
        )));
    }
    let mut results: BTreeMap<String, v1::HostResult> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + args.timeout;
    while results.len() < total {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let ev = match next {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(s))) => {
                bar.println(&*super::output::term_lines(&format!(
                    "stream error: {}",
                    s.message()
                )));
                break;
            }
            Ok(Some(Ok(ev))) => ev,
        };
        let Some(v1::apply_event::Event::Host(r)) = ev.event else {
            continue;
        };
        if host_outcome(r.outcome) == Some(HostOutcome::Disconnected) {
            bar.println(&*super::output::term_lines(&format!(
                "{}: disconnected before answering (still pending)",
                r.host
            )));
            continue;
        }
        if !args.json {
            bar.println(&*super::output::term_lines(&format!(
                "{}: {}",
                r.host,
                describe(&r)
            )));
        }
        results.insert(r.host.clone(), r);
        bar.set_position(results.len() as u64);
    }
    bar.finish_and_clear();

    let all_ok = results.len() == total
        && results
            .values()
            .all(|r| host_outcome(r.outcome) == Some(HostOutcome::Applied));
    if args.json {
        let hosts: Vec<_> = accepted
            .hosts
            .iter()
            .map(|h| match results.get(h) {
                Some(r) => serde_json::json!({
                    "host": h, "result": super::rollout::outcome(r.outcome), "hash": r.hash,
                    "expected_hash": r.expected_hash, "error": r.error,
                    "duration_us": r.duration_us,
                }),
                None => serde_json::json!({ "host": h, "result": "pending" }),
            })
            .collect();
        print_json(&serde_json::json!({ "revision": revision, "ok": all_ok, "hosts": hosts }))?;
    } else {
        let rows: Vec<Vec<String>> = accepted
            .hosts
            .iter()
            .map(|h| match results.get(h) {
                Some(r) => vec![
                    h.clone(),
                    super::rollout::outcome(r.outcome).into(),
                    short_hash(&r.hash),
                    format!("{:.1} ms", r.duration_us as f64 / 1000.0),
                    r.error.lines().next().unwrap_or("").to_string(),
                ],
                None => vec![
                    h.clone(),
                    "pending".into(),
                    "-".into(),
                    "-".into(),
                    if accepted.offline.contains(h) {
                        "offline: gets it on connect".into()
                    } else {
                        format!(
                            "no answer within {}",
                            humantime::format_duration(args.timeout)
                        )
                    },
                ],
            })
            .collect();
        crate::outln!("revision r{revision}");
        crate::out!(
            "{}",
            table(&["HOST", "RESULT", "HASH", "APPLY+VERIFY", "DETAIL"], &rows)
        );
        let applied = results
            .values()
            .filter(|r| host_outcome(r.outcome) == Some(HostOutcome::Applied))
            .count();
        crate::outln!("{applied}/{total} hosts applied r{revision}");
    }
    Ok(if all_ok { exit::OK } else { exit::INCOMPLETE })
}

fn describe(r: &v1::HostResult) -> String {
    match host_outcome(r.outcome) {
        Some(HostOutcome::Applied) => format!(
            "applied, hash {} ({:.1} ms)",
            short_hash(&r.hash),
            r.duration_us as f64 / 1000.0
        ),
        Some(HostOutcome::HashMismatch) => format!(
            "HASH MISMATCH: kernel {} expected {}",
            short_hash(&r.hash),
            short_hash(&r.expected_hash)
        ),
        _ => format!("FAILED: {}", r.error),
    }
}
