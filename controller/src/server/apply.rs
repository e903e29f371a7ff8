//! `Apply` (and `Rollback`, which becomes one) as its steps:
//! parse → select hosts → compile → anti-lockout → store → push → follow.
//!
//! Everything that can refuse the apply (a policy that does not parse, compile or fit in
//! a session message, an empty selection, a running rollout, a malformed rollout
//! setting, a lockout) does so before anything is stored or sent. A request that asks for
//! waves or confirmation, and every rollback, leaves the sequence after the anti-lockout
//! check for [`super::rollout::start`]; a plain apply stores the revision as every
//! targeted host's desired one, pushes it to the sessions held here (other controllers
//! push to theirs when it is published) and streams the hosts' results ([`follow`]).
//!
//! `Shared::apply_lock` is held from choosing the revision number (the hashes are
//! compiled for it) until the revision is stored and pushed (or its rollout claimed).

mod follow;
mod push;
mod size;

use super::Shared;
use super::compile::CompileCache;
use super::rollout::lockout;
use super::rollout::settings::{self, Settings};
use super::rollout::start::{self, EventStream};
use super::wire::internal;
use crate::store::{self, RevisionHost};
use portcullis_policy::lockout::Requirement;
use portcullis_policy::{Facts, HostPolicy, Ruleset, pattern, site};
use portcullis_proto::v1;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tonic::Status;

/// What the revision is, for the store and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `portcullis apply`.
    Apply,
    /// `portcullis rollback`: always a rollout.
    Rollback,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Apply => "apply",
            Kind::Rollback => "rollback",
        }
    }
}

/// Apply `req` for `author` (an authorized admin).
pub async fn apply(
    shared: &Arc<Shared>,
    author: &str,
    req: v1::ApplyRequest,
    kind: Kind,
) -> Result<EventStream, Status> {
    if req.check {
        return check(shared, &req).await;
    }
    let fleet = parse(&req).await?;
    let targets = select_hosts(fleet.hosts, &fleet.inventory, &req.limit)?;
    let _serial = shared.apply_lock.lock().await;
    let compiled = compile(shared, &targets).await?;
    refuse_during_a_rollout(shared).await?;
    let settings = Settings::from_request(&req)?;
    anti_lockout(shared, author, &req, &compiled, &fleet.management).await?;
    if kind == Kind::Rollback || settings::wanted(&req) {
        return start_rollout(shared, author, kind, &req, settings, &compiled).await;
    }
    let watch = follow::Watch::begin(shared).await?;
    let expected = compiled.expected_hashes();
    let revision = store(shared, author, &req, compiled).await?;
    let pushed = push::push(shared, revision, &targets, &expected, &watch).await;
    Ok(follow::follow(shared, revision, expected, pushed, watch).await)
}

/// `--check`: a diff per host; nothing stored, nothing sent to agents.
async fn check(shared: &Shared, req: &v1::ApplyRequest) -> Result<EventStream, Status> {
    let result = super::check::check(shared, req).await?;
    let event = v1::ApplyEvent {
        event: Some(v1::apply_event::Event::Check(result)),
    };
    Ok(Box::pin(tokio_stream::once(Ok(event))))
}

/// The request's lists, site and inventory. Parsing a large inventory takes CPU seconds:
/// off the async workers, so sessions and other admins are served meanwhile (the YAML
/// budget bounds it).
async fn parse(req: &v1::ApplyRequest) -> Result<site::Fleet, Status> {
    super::load_request_fleet(req).await
}

/// The hosts the apply targets: those of a play, within `--limit`; none is an error.
fn select_hosts(
    mut targets: BTreeMap<String, HostPolicy>,
    inventory: &portcullis_policy::Inventory,
    limit: &str,
) -> Result<BTreeMap<String, HostPolicy>, Status> {
    if !limit.is_empty() {
        let selected = pattern::select(inventory, limit)
            .map_err(|e| Status::invalid_argument(format!("--limit {limit:?}: {e}")))?;
        targets.retain(|h, _| selected.contains(h));
    }
    if targets.is_empty() {
        return Err(Status::invalid_argument(
            "no host is targeted: no play matches a host (within --limit)",
        ));
    }
    Ok(targets)
}

/// What the compile step produced for the next revision.
struct Compiled {
    /// The revision the hashes are compiled for (the next one; `apply_lock` is held).
    revision: u64,
    /// The revision's rows (host, policy, expected hash; "" for a host without facts).
    rows: Vec<RevisionHost>,
    /// Per host with known facts: its ruleset (one `Arc` per distinct compile) and facts.
    rulesets: BTreeMap<String, (Arc<Ruleset>, Facts)>,
    /// Hosts without facts yet (compiled by their agent, not checked here).
    unchecked: Vec<String>,
}

impl Compiled {
    fn expected_hashes(&self) -> BTreeMap<String, String> {
        self.rows
            .iter()
            .map(|r| (r.host.clone(), r.expected_hash.clone()))
            .collect()
    }
}

/// Compile for every targeted host whose facts are known, through the one compile cache
/// (once per distinct policy and default-route interface), before anything is stored or
/// sent; every host that does not compile, or whose policy is too big for a session
/// message, is an error.
async fn compile(
    shared: &Shared,
    targets: &BTreeMap<String, HostPolicy>,
) -> Result<Compiled, Status> {
    let revision = shared
        .store
        .call(store::latest_revision)
        .await
        .map_err(internal)?
        + 1;
    let mut cache = CompileCache::new(revision);
    let mut distinct = Distinct::default();
    let mut out = Compiled {
        revision,
        rows: Vec::with_capacity(targets.len()),
        rulesets: BTreeMap::new(),
        unchecked: Vec::new(),
    };
    let mut errors = Vec::new();
    for (host, policy) in targets {
        let (idx, policy_json, oversized) = distinct.of(policy)?;
        if let Some(bytes) = oversized {
            errors.push(size::too_big(host, policy, bytes));
            continue;
        }
        let expected_hash = match facts_of(shared, host).await? {
            Some(facts) => match cache.compile(idx, policy, &facts) {
                Ok(c) => {
                    let hash = c.hash.clone();
                    out.rulesets
                        .insert(host.clone(), (c.ruleset.clone(), facts));
                    hash
                }
                Err(e) => {
                    errors.push(format!("{host}: {e}"));
                    continue;
                }
            },
            None => {
                out.unchecked.push(host.clone());
                String::new()
            }
        };
        out.rows.push(RevisionHost {
            host: host.clone(),
            policy_json,
            expected_hash,
        });
    }
    if !errors.is_empty() {
        return Err(Status::invalid_argument(format!(
            "the policy does not compile for {} host(s); nothing was applied:\n{}",
            errors.len(),
            errors.join("\n")
        )));
    }
    Ok(out)
}

/// The distinct policies of a fleet (a handful, shared by many hosts): each hashed into
/// an index once per host, serialized and measured once.
#[derive(Default)]
struct Distinct<'p> {
    index: HashMap<&'p HostPolicy, usize>,
    /// Per distinct policy: its JSON (stored) and its wire size when too big for one
    /// session message.
    policies: Vec<(Arc<str>, Option<usize>)>,
}

impl<'p> Distinct<'p> {
    fn of(&mut self, policy: &'p HostPolicy) -> Result<(usize, Arc<str>, Option<usize>), Status> {
        let idx = match self.index.get(policy) {
            Some(i) => *i,
            None => {
                let json =
                    serde_json::to_string(policy).map_err(|e| Status::internal(e.to_string()))?;
                self.policies
                    .push((json.into(), size::too_big_for_a_session(policy)));
                self.index.insert(policy, self.policies.len() - 1);
                self.policies.len() - 1
            }
        };
        let (json, oversized) = &self.policies[idx];
        Ok((idx, json.clone(), *oversized))
    }
}

/// Facts for `host`: live from its session, else the last stored.
async fn facts_of(shared: &Shared, host: &str) -> Result<Option<Facts>, Status> {
    if let Some(h) = shared.registry.get(host) {
        return Ok(Some(h.facts));
    }
    let h = host.to_string();
    let json = shared
        .store
        .call(move |c| store::host_facts(c, &h))
        .await
        .map_err(internal)?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

/// No apply while a rollout runs, here or — a shared store — on another controller that
/// holds its lease: an apply would move the desired revision of the hosts it drives.
async fn refuse_during_a_rollout(shared: &Shared) -> Result<(), Status> {
    if let Some(id) = shared.rollouts.running() {
        return Err(Status::failed_precondition(format!(
            "rollout {id} is running; wait for it or stop it with `portcullis rollout abort`"
        )));
    }
    if shared.store.dialect() == store::Dialect::Postgres {
        let me = shared.controller_id.clone();
        if let Some((id, controller)) = shared
            .store
            .call(move |c| store::relay::running_elsewhere(c, &me, store::now_ms()))
            .await
            .map_err(internal)?
        {
            return Err(Status::failed_precondition(
                store::rollout::Busy { id, controller }.to_string(),
            ));
        }
    }
    Ok(())
}

/// The anti-lockout check on what would really be installed: refused unless
/// `--force-lockout-risk`.
async fn anti_lockout(
    shared: &Shared,
    author: &str,
    req: &v1::ApplyRequest,
    compiled: &Compiled,
    management: &BTreeMap<String, Vec<Requirement>>,
) -> Result<(), Status> {
    let keep = lockout::keep_requirements(&req.keep)?;
    let (problems, unchecked) = lockout::check(
        shared,
        &compiled.rulesets,
        compiled.unchecked.clone(),
        &keep,
        management,
    )
    .await?;
    if !unchecked.is_empty() {
        tracing::warn!(hosts = ?unchecked, "anti-lockout: no facts yet, not checked");
    }
    if !problems.is_empty() {
        if !req.force_lockout_risk {
            tracing::warn!(%author, problems = ?problems, "apply refused by the anti-lockout check");
            return Err(lockout::refusal(&problems));
        }
        tracing::warn!(%author, problems = ?problems, "anti-lockout check overridden by --force-lockout-risk");
    }
    Ok(())
}

/// Waves or confirmation asked for, or a rollback: the rollout stores the revision
/// (staged), drives the waves and streams their progress.
async fn start_rollout(
    shared: &Arc<Shared>,
    author: &str,
    kind: Kind,
    req: &v1::ApplyRequest,
    settings: Settings,
    compiled: &Compiled,
) -> Result<EventStream, Status> {
    let (rows, revision) = (&compiled.rows, compiled.revision);
    start::start(shared, author, kind.as_str(), req, settings, rows, revision).await
}

/// Store the revision as every targeted host's desired one, announce it to the other
/// controllers and audit it, in one transaction; its number.
async fn store(
    shared: &Shared,
    author: &str,
    req: &v1::ApplyRequest,
    compiled: Compiled,
) -> Result<u64, Status> {
    let (who, req, rows) = (author.to_string(), req.clone(), compiled.rows);
    let (me, next_revision) = (shared.controller_id.clone(), compiled.revision);
    let hosts = rows.len();
    let revision = shared
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let rev = store::insert_revision(&tx, &super::new_revision(&who, &req, &rows))?;
            anyhow::ensure!(
                rev == next_revision,
                "revision {rev} stored, but its hashes were compiled for {next_revision}: \
                 another controller stored a revision meanwhile; apply again"
            );
            store::publish(&tx, &me, rev)?;
            store::audit(
                &tx,
                &who,
                "apply",
                &format!(
                    "revision {rev} to {} host(s), limit {:?}",
                    rows.len(),
                    req.limit
                ),
            )?;
            tx.commit()?;
            Ok(rev)
        })
        .await
        .map_err(internal)?;
    tracing::info!(revision, %author, hosts, "revision stored");
    Ok(revision)
}

/// Hosts whose sessions another controller holds, by name.
fn remote_hosts(shared: &Shared, hosts: Vec<store::HostRecord>) -> BTreeSet<String> {
    let now = store::now_ms();
    hosts
        .into_iter()
        .filter(|h| shared.elsewhere(h, now))
        .map(|h| h.name)
        .collect()
}
