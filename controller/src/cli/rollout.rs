//! Rollouts in the CLI: the `apply` flags for waves and commit-confirmed
//! ([`RolloutArgs`]), following a rollout's events (one progress bar per wave, a line per
//! host, a summary table, an exit code: [`follow`]), `portcullis rollback`, and
//! `portcullis rollout list|show|abort`.

use super::connect::{ConnectArgs, status_exit};
use super::exit;
use super::output::{print_json, table};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use portcullis_policy::protocol::outcome::HostOutcome;
use portcullis_policy::rollout::RolloutStatus;
use portcullis_proto::protocol::host_outcome;
use portcullis_proto::v1;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_stream::StreamExt as _;

/// Waves, failure budget, commit-confirmed and anti-lockout options of `apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    /// Push in waves (Ansible `serial`): sizes or percentages, the last repeats, e.g.
    /// `1,10%,50%`. Each wave must fully succeed before the next starts
    #[arg(long)]
    pub serial: Option<String>,
    /// Failed hosts tolerated: `N` over the whole rollout, or `N%` of each wave; past it
    /// the rollout halts and the hosts it changed are rolled back (default 0)
    #[arg(long)]
    pub max_fail: Option<String>,
    /// Commit-confirmed: each host must come back to the controller through its new
    /// rules within this time, or it reverts by itself (e.g. `30s`)
    #[arg(long, value_parser = humantime::parse_duration)]
    pub confirm_timeout: Option<Duration>,
    /// Access that must stay open, refused otherwise: `tcp/22`, `tcp/22 from 10.0.0.0/8`
    /// (repeatable; added to the site file's `management:` entries)
    #[arg(long)]
    pub keep: Vec<String>,
    /// Send even if the anti-lockout check finds a problem (commit-confirmed still reverts
    /// hosts that cannot reach the controller)
    #[arg(long)]
    pub force_lockout_risk: bool,
    /// Health gate: after each wave, halt and roll back when a host of the wave denies
    /// more than this factor times its pre-rollout rate (e.g. `10x`; a sign the policy
    /// blocks real traffic). Rates under 1 denial/s count as 1/s
    #[arg(long, value_parser = parse_factor)]
    pub max_denial_increase: Option<f64>,
    /// How long the denial gate observes each wave after it is confirmed
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub denial_window: Duration,
    /// The pre-rollout rate is measured over this long before the rollout starts
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub denial_baseline: Duration,
}

/// `10x`, `10` or `2.5x`: a factor above 1.
fn parse_factor(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches(['x', 'X']);
    match n.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 1.0 => Ok(f),
        Ok(_) => Err(format!("{s:?}: the factor must be above 1 (e.g. `10x`)")),
        Err(_) => Err(format!("{s:?} is not a factor (e.g. `10x`)")),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RolloutArgs {
    /// Fill the rollout fields of an `ApplyRequest`.
    pub fn fill(&self, r: &mut v1::ApplyRequest) {
        r.serial = self.serial.clone().unwrap_or_default();
        r.max_fail = self.max_fail.clone().unwrap_or_default();
        r.confirm_timeout_ms = self.confirm_timeout.map_or(0, ms);
        r.keep = self.keep.clone();
        r.force_lockout_risk = self.force_lockout_risk;
        r.max_denial_increase = self.max_denial_increase.unwrap_or(0.0);
        r.denial_window_ms = ms(self.denial_window);
        r.denial_baseline_ms = ms(self.denial_baseline);
    }
}

/// A `HostResult.outcome` as printed (its one spelling; `unknown` for none).
pub fn outcome(o: i32) -> &'static str {
    host_outcome(o).map_or("unknown", HostOutcome::as_str)
}

/// Exit code of a finished rollout.
pub fn status_code(status: &str) -> i32 {
    match status.parse::<RolloutStatus>() {
        Ok(RolloutStatus::Succeeded) => exit::OK,
        Ok(RolloutStatus::RolledBack) => exit::ROLLED_BACK,
        Ok(RolloutStatus::Aborted) => exit::ABORTED,
        _ => exit::HALTED,
    }
}

/// Follow a rollout after its `Accepted` event until `Finished`.
pub async fn follow(
    accepted: v1::ApplyAccepted,
    mut stream: tonic::Streaming<v1::ApplyEvent>,
    json: bool,
) -> anyhow::Result<i32> {
    let multi = MultiProgress::new();
    if json {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: BTreeMap<u32, ProgressBar> = BTreeMap::new();
    let mut results: BTreeMap<String, v1::HostResult> = BTreeMap::new();
    let mut rolled: BTreeMap<String, v1::HostResult> = BTreeMap::new();
    let mut finished: Option<v1::RolloutFinished> = None;
    if !json {
        let _ = multi.println(&*super::output::term_lines(&format!(
            "rollout {} of r{}: {} host(s) in {} wave(s)",
            accepted.rollout_id,
            accepted.revision,
            accepted.hosts.len(),
            accepted.waves.len()
        )));
    }
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(s) => {
                let _ = multi.println(&*super::output::term_lines(&format!(
                    "stream error: {}",
                    s.message()
                )));
                break;
            }
        };
        match ev.event {
            Some(v1::apply_event::Event::WaveStarted(w)) => {
                let bar = multi.add(ProgressBar::new(w.hosts.len() as u64));
                bar.set_style(style.clone());
                bar.set_prefix(format!("wave {}/{}", w.index + 1, w.of));
                bar.enable_steady_tick(Duration::from_millis(100));
                bars.insert(w.index, bar);
            }
            Some(v1::apply_event::Event::Host(r)) => {
                let line = super::output::term_lines(&format!(
                    "  {}: {}{}",
                    r.host,
                    outcome(r.outcome),
                    if r.error.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.error)
                    }
                ))
                .into_owned();
                if host_outcome(r.outcome) == Some(HostOutcome::RolledBack) {
                    if !json {
                        let _ = multi.println(line);
                    }
                    rolled.insert(r.host.clone(), r);
                    continue;
                }
                if let Some(b) = bars.get(&r.wave) {
                    b.inc(1);
                    b.set_message(super::output::term(&r.host).into_owned());
                    if !json {
                        b.println(line);
                    }
                }
                results.insert(r.host.clone(), r);
            }
            Some(v1::apply_event::Event::WaveFinished(w)) => {
                if let Some(b) = bars.get(&w.index) {
                    b.finish_with_message(format!("{} ok, {} failed", w.ok, w.failed));
                }
            }
            Some(v1::apply_event::Event::Finished(f)) => {
                finished = Some(f);
                break;
            }
            _ => {}
        }
    }
    for b in bars.values() {
        b.finish_and_clear();
    }
    let wave_of: BTreeMap<&String, usize> = accepted
        .waves
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.hosts.iter().map(move |h| (h, i)))
        .collect();
    let status = finished
        .as_ref()
        .map_or(RolloutStatus::Interrupted.as_str(), |f| f.status.as_str());
    let row = |h: &String| -> (String, String, String) {
        let wave = wave_of.get(h).map_or("-".into(), |w| (w + 1).to_string());
        let (res, detail) = match (results.get(h), rolled.get(h)) {
            (_, Some(r)) => (HostOutcome::RolledBack.to_string(), r.error.clone()),
            (Some(r), None) => (outcome(r.outcome).to_string(), r.error.clone()),
            (None, None) => ("not started".to_string(), String::new()),
        };
        (wave, res, detail)
    };
    if json {
        let hosts: Vec<_> = accepted
            .hosts
            .iter()
            .map(|h| {
                let (wave, result, detail) = row(h);
                serde_json::json!({ "host": h, "wave": wave, "result": result, "detail": detail })
            })
            .collect();
        print_json(&serde_json::json!({
            "rollout": accepted.rollout_id,
            "revision": accepted.revision,
            "status": status,
            "reason": finished.as_ref().map(|f| f.reason.clone()).unwrap_or_default(),
            "waves": accepted.waves.iter().map(|w| w.hosts.clone()).collect::<Vec<_>>(),
            "rollback_failed": finished.as_ref().map(|f| f.rollback_failed.clone()).unwrap_or_default(),
            "hosts": hosts,
        }))?;
    } else {
        let rows: Vec<Vec<String>> = accepted
            .hosts
            .iter()
            .map(|h| {
                let (wave, result, detail) = row(h);
                vec![
                    h.clone(),
                    wave,
                    result,
                    detail.lines().next().unwrap_or("").to_string(),
                ]
            })
            .collect();
        crate::out!("{}", table(&["HOST", "WAVE", "RESULT", "DETAIL"], &rows));
        crate::outln!(
            "rollout {} of r{}: {status}",
            accepted.rollout_id,
            accepted.revision
        );
        if let Some(f) = &finished {
            if !f.reason.is_empty() {
                crate::outln!("reason: {}", f.reason);
            }
            for r in &f.rollback_failed {
                crate::outln!("NOT rolled back: {r}");
            }
        }
    }
    Ok(status_code(status))
}

/// `portcullis rollback`: without --serial, --max-fail, --confirm-timeout and
/// --max-denial-increase, the latest rollout's waves, confirmation and gates are reused.
#[derive(Debug, clap::Args)]
#[command(after_help = super::inventory::PATTERN_HELP)]
pub struct RollbackArgs {
    /// Hosts to roll back (Ansible pattern over that revision's inventory, read as
    /// ansible-core does: see `portcullis inventory --help`); default all
    pub pattern: Option<String>,
    /// Revision to go back to (default: the one before the latest)
    #[arg(long)]
    pub to: Option<u64>,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    /// Print the final result as JSON
    #[arg(long)]
    pub json: bool,
}

pub async fn rollback(args: RollbackArgs, conn: &ConnectArgs) -> anyhow::Result<i32> {
    let mut client = conn.admin().await?;
    let mut fill = v1::ApplyRequest::default();
    args.rollout.fill(&mut fill);
    let req = v1::RollbackRequest {
        to_revision: args.to.unwrap_or(0),
        pattern: args.pattern.unwrap_or_default(),
        serial: fill.serial,
        max_fail: fill.max_fail,
        confirm_timeout_ms: fill.confirm_timeout_ms,
        max_denial_increase: fill.max_denial_increase,
        denial_window_ms: fill.denial_window_ms,
        denial_baseline_ms: fill.denial_baseline_ms,
        keep: fill.keep,
        force_lockout_risk: fill.force_lockout_risk,
    };
    let mut stream = match client.rollback(req).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(status_exit(&s));
        }
    };
    match stream.next().await {
        Some(Ok(v1::ApplyEvent {
            event: Some(v1::apply_event::Event::Accepted(a)),
        })) => follow(a, stream, args.json).await,
        Some(Err(s)) => {
            crate::eoutln!("error: {}", s.message());
            Ok(status_exit(&s))
        }
        _ => anyhow::bail!("controller ended the rollback stream without accepting it"),
    }
}

/// `portcullis rollout ...`
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Rollouts, newest first: revision, who, status, waves
    List {
        /// At most this many (0 = all)
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// One rollout with its per-host results by wave
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Stop the running rollout between hosts: hosts not sent the revision yet keep
    /// theirs, hosts in flight finish (confirmed, or reverted), no further wave starts.
    /// Exit 0 if a rollout was told to stop, 2 if none is running
    Abort {
        /// Rollout id (default: whichever is running)
        id: Option<u64>,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
}

/// A rollout as `--json` shows it (`rollout list/show`, `history`); waves from 0.
pub fn rollout_json(r: &v1::RolloutInfo) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "revision": r.revision, "kind": r.kind, "author": r.author,
        "started_unix_ms": r.started_unix_ms, "finished_unix_ms": r.finished_unix_ms,
        "status": r.status, "reason": r.reason, "serial": r.serial, "max_fail": r.max_fail,
        "confirm_timeout_ms": r.confirm_timeout_ms,
        "max_denial_increase": r.max_denial_increase, "denial_window_ms": r.denial_window_ms,
        "denial_baseline_ms": r.denial_baseline_ms,
        "hosts": r.hosts.iter().map(|h| serde_json::json!({
            "host": h.host, "wave": h.wave, "previous_revision": h.previous_revision,
            "state": h.state, "detail": h.detail })).collect::<Vec<_>>(),
    })
}

fn when(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

pub async fn run(cmd: RolloutCommand, conn: &ConnectArgs) -> anyhow::Result<i32> {
    let mut client = conn.admin().await?;
    let (limit, id, json) = match cmd {
        RolloutCommand::Abort { id, json } => {
            return match client
                .rollout_abort(v1::RolloutAbortRequest {
                    rollout_id: id.unwrap_or(0),
                })
                .await
            {
                Ok(r) => {
                    let id = r.get_ref().rollout_id;
                    if json {
                        print_json(&serde_json::json!({ "rollout": id, "aborting": true }))?;
                    } else {
                        crate::outln!(
                            "rollout {id} is stopping: hosts not sent the revision keep theirs, \
                             hosts in flight finish; follow it with `portcullis rollout show {id}`"
                        );
                    }
                    Ok(exit::OK)
                }
                Err(s) => {
                    crate::eoutln!("error: {}", s.message());
                    Ok(status_exit(&s))
                }
            };
        }
        RolloutCommand::List { limit, json } => (limit, 0, json),
        RolloutCommand::Show { id, json } => (0, id, json),
    };
    let resp = match client.rollouts(v1::RolloutsRequest { limit, id }).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            crate::eoutln!("error: {}", s.message());
            return Ok(status_exit(&s));
        }
    };
    if json {
        let v: Vec<_> = resp.rollouts.iter().map(rollout_json).collect();
        print_json(&serde_json::json!({ "rollouts": v }))?;
        return Ok(exit::OK);
    }
    if id == 0 {
        let rows: Vec<Vec<String>> = resp
            .rollouts
            .iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    format!("r{}", r.revision),
                    r.kind.clone(),
                    r.author.clone(),
                    when(r.started_unix_ms),
                    r.status.clone(),
                    r.serial.clone(),
                    r.hosts.len().to_string(),
                ]
            })
            .collect();
        crate::out!(
            "{}",
            table(
                &[
                    "ID", "REVISION", "KIND", "AUTHOR", "STARTED", "STATUS", "SERIAL", "HOSTS"
                ],
                &rows
            )
        );
    } else {
        for r in &resp.rollouts {
            crate::outln!(
                "rollout {} ({}) of r{} by {}: {} {}",
                r.id,
                r.kind,
                r.revision,
                r.author,
                r.status,
                r.reason
            );
            let rows: Vec<Vec<String>> = r
                .hosts
                .iter()
                .map(|h| {
                    vec![
                        (h.wave + 1).to_string(),
                        h.host.clone(),
                        format!("r{}", h.previous_revision),
                        h.state.clone(),
                        h.detail.clone(),
                    ]
                })
                .collect();
            crate::out!(
                "{}",
                table(&["WAVE", "HOST", "PREVIOUS", "STATE", "DETAIL"], &rows)
            );
        }
    }
    Ok(exit::OK)
}
